"""The rare-token audit (`edgeemb.audit`, `edgeemb inspect --corpus`): frequency bands, undertrained
rows, per-band error of compressed outputs, and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeemb.audit import BANDS, audit_corpus, frequency_bands
from edgeemb.errors import EdgeembError
from edgeemb.pipeline import compress
from edgeemb.sources import open_model
from edgeemb.table import load_table
from tests.test_cli import assert_one_line_error, run

FREQUENT, MID, RARE, UNUSED = range(4)


def tiny_variant(tiny_model: Path, folder: Path, edit: Callable[[np.ndarray, list[str]], None]) -> Path:
    """A copy of the tiny model whose word embeddings `edit(weight, tokens)` changed in place."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(tiny_model, folder)
    weights = next(folder.rglob("model.safetensors"))
    arrays = load_file(weights)
    name = next(key for key in arrays if key.endswith("word_embeddings.weight"))
    edit(arrays[name], open_model(tiny_model).tokens)
    save_file(arrays, weights)
    return folder


def corpus_file(folder: Path, counts: dict[str, int]) -> Path:
    """A corpus using each word `count` times, one word a line."""
    path = folder / "corpus.txt"
    path.write_text("".join(f"{word}\n" * count for word, count in counts.items()))
    return path


# --- bands ----------------------------------------------------------------------------------------


def test_band_boundaries_on_a_hand_made_count_vector():
    # 100 tokens: row 1 alone reaches 50%; rows 2 and 3 reach exactly 90%; rows 4-6 are the rest.
    counts = np.array([0, 50, 30, 10, 5, 3, 2, 0])
    assert frequency_bands(counts).tolist() == [UNUSED, FREQUENT, MID, MID, RARE, RARE, RARE, UNUSED]
    # 9 of 10 tokens is exactly 90%: the edge is reached there, not one row later.
    assert frequency_bands(np.array([6, 3, 1])).tolist() == [FREQUENT, MID, RARE]
    # Rows tied with the row that reaches an edge go to the more frequent band, whatever their id.
    assert frequency_bands(np.array([3, 4, 3, 3, 1, 1])).tolist() == [FREQUENT] * 4 + [MID] * 2
    assert frequency_bands(np.array([5, 0, 5])).tolist() == [FREQUENT, UNUSED, FREQUENT]


def test_bands_count_the_corpus_tokens(tiny_model, tmp_path):
    corpus = corpus_file(tmp_path, {"the": 60, "water": 25, "people": 10, "long": 3, "time": 2})
    audit = audit_corpus(open_model(tiny_model), [corpus], sample=5)
    assert (audit.tokens, audit.distinct_rows, audit.lines, audit.unknown_tokens) == (100, 5, 100, 0)
    bands = {band.name: band for band in audit.bands}
    assert [band.name for band in audit.bands] == list(BANDS)
    assert (bands["frequent"].rows, bands["frequent"].tokens, bands["frequent"].count_min) == (1, 60, 60)
    assert (bands["mid"].rows, bands["mid"].tokens) == (2, 35)  # "people" takes the corpus from 85% to 95%
    assert (bands["rare"].rows, bands["rare"].count_max) == (2, 3)
    assert bands["unused"].rows == 192 - 5
    assert sum(band.token_share for band in audit.bands) == pytest.approx(1.0)
    # Neighbours of at most `sample` rows per band, and the band says how many.
    assert bands["rare"].neighbour_rows == 2 and bands["unused"].neighbour_rows == 5


# --- undertrained rows ----------------------------------------------------------------------------


def test_a_shrunk_row_the_corpus_uses_is_listed_most_frequent_first(tiny_model, tmp_path):
    def shrink(weight: np.ndarray, tokens: list[str]) -> None:
        for word in ("water", "long", "people"):  # "people" shrunk but never used: not listed
            weight[tokens.index(word)] *= 1e-3

    model = tiny_variant(tiny_model, tmp_path / "shrunk", shrink)
    corpus = corpus_file(tmp_path, {"the": 40, "long": 3, "water": 7, "time": 5})
    audit = audit_corpus(open_model(model), [corpus])
    listed = [(row.token, row.count, row.low_norm) for row in audit.undertrained]
    assert listed == [("water", 7, True), ("long", 3, True)]
    assert audit.undertrained_count == 2
    assert all(row.norm_z < -audit.outlier_z for row in audit.undertrained)


def test_a_row_far_from_every_other_has_few_neighbours(tiny_model, tmp_path):
    def clusters(weight: np.ndarray, tokens: list[str]) -> None:
        # 16 clusters of 12 rows: every row's 10 nearest are its cluster (cosine ~0.99) but the
        # isolated row's, a random direction of the same norm.
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((16, weight.shape[1]))
        weight[:] = np.repeat(centres, 12, axis=0) + 0.05 * rng.standard_normal(weight.shape)
        isolated = tokens.index("water")
        weight[isolated] = rng.standard_normal(weight.shape[1])
        weight[isolated] *= np.linalg.norm(weight[isolated - 1]) / np.linalg.norm(weight[isolated])

    model = tiny_variant(tiny_model, tmp_path / "clustered", clusters)
    audit = audit_corpus(open_model(model), [corpus_file(tmp_path, {"the": 5, "water": 2, "time": 1})])
    assert [(row.token, row.few_neighbours, row.low_norm) for row in audit.undertrained] == [("water", True, False)]
    assert audit.undertrained[0].neighbour_cosine < audit.neighbour_cosine_low < 0.99


# --- compressed outputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heavy_and_light(tmp_path_factory) -> Path:
    """Five words used often (two frequent, three mid) and five once (rare): 505 tokens."""
    folder = tmp_path_factory.mktemp("corpus")
    heavy = dict(zip(("the", "water", "people", "long", "time"), (150, 120, 100, 80, 50)))
    return corpus_file(folder, {**heavy, **{word: 1 for word in ("made", "over", "down", "only", "way")}})


def test_mixed_precision_error_falls_on_the_bands_stored_coarsely(tiny_model, heavy_and_light, tmp_path):
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(
        "name: mixed\nsteps:\n  - mixed_precision:\n      frequent: {format: int8}\n      rare: {format: int2}\n"
        f"      frequent_fraction: {5 / 192}\n      corpus: {heavy_and_light}\n"
    )
    out = compress(tiny_model, recipe, tmp_path / "out").out
    source = open_model(tiny_model)
    audit = audit_corpus(source, [heavy_and_light], [out])
    (result,) = audit.compressed
    errors = {band.band: band for band in result.bands}
    assert result.recipe == "mixed" and result.storage.startswith("mixed: 5 rows int8")
    assert errors["frequent"].rows + errors["mid"].rows == 5  # the five int8 rows
    assert max(errors["frequent"].relative_error, errors["mid"].relative_error) < 0.02
    assert min(errors["rare"].relative_error, errors["unused"].relative_error) > 0.2
    assert errors["rare"].row_cosine_mean < errors["mid"].row_cosine_mean
    assert errors["rare"].dropped_rows is None
    # The rare band's error is that of its rows, read back from the saved table.
    rare = np.flatnonzero(frequency_bands(np.bincount(_ids(source, heavy_and_light), minlength=192)) == RARE)
    original = source.table.weight[rare]
    stored = load_table(out / "table.safetensors").lookup(rare)
    assert errors["rare"].relative_error == pytest.approx(
        np.linalg.norm(stored - original) / np.linalg.norm(original), rel=1e-5
    )
    # Most corpus tokens are on int8 rows: the corpus-weighted error is near theirs.
    assert result.corpus_relative_error < 0.05


def test_a_trimmed_vocabulary_reports_the_rows_dropped_per_band(tiny_model, heavy_and_light, tmp_path):
    recipe = tmp_path / "trim.yaml"
    recipe.write_text(f"steps:\n  - trim_vocab: {{corpus: [{heavy_and_light}], min_count: 2, holdout: 0}}\n")
    out = compress(tiny_model, recipe, tmp_path / "out").out
    (result,) = audit_corpus(open_model(tiny_model), [heavy_and_light], [out]).compressed
    errors = {band.band: band for band in result.bands}
    assert (errors["frequent"].dropped_rows, errors["mid"].dropped_rows) == (0, 0)
    assert errors["rare"].dropped_rows == 5 and errors["rare"].dropped_token_share == 1.0
    assert errors["rare"].rows == 0 and errors["rare"].relative_error is None
    assert errors["frequent"].relative_error == 0.0 and errors["frequent"].row_cosine_mean == pytest.approx(1.0)
    assert errors["unused"].dropped_rows > 0 and errors["unused"].dropped_token_share is None


def _ids(source, corpus: Path) -> list[int]:
    return [i for line in corpus.read_text().splitlines() for i in source.tokenize(line)]


# --- the command ----------------------------------------------------------------------------------


def test_inspect_corpus_json_text_and_plots(tiny_model, heavy_and_light, tmp_path):
    out = compress(tiny_model, "int4", tmp_path / "int4").out
    plot = tmp_path / "tiny.png"
    args = ("inspect", tiny_model, "--corpus", heavy_and_light, "--compressed", out)
    result = run(*args, "--json", "--plot", plot)
    assert result.exit_code == 0, result.stderr
    audit = json.loads(result.stdout)["audit"]
    assert audit["tokens"] == 505 and [band["name"] for band in audit["bands"]] == list(BANDS)
    assert audit["compressed"][0]["recipe"] == "int4" and len(audit["compressed"][0]["bands"]) == 4
    for png in (plot, tmp_path / "tiny-audit.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run(*args)
    assert text.exit_code == 0, text.stderr
    assert "relative error weighted by corpus counts" in text.stdout and "frequent" in text.stdout
    assert max(len(line) for line in text.stdout.splitlines()) <= 80
    assert "audit" not in json.loads(run("inspect", tiny_model, "--json").stdout)


def _another_models_output(tiny_model: Path, tmp_path: Path) -> Path:
    def nudge(weight: np.ndarray, tokens: list[str]) -> None:
        weight[7] += 0.01

    other = tiny_variant(tiny_model, tmp_path / "other-model", nudge)
    return compress(other, "int4", tmp_path / "other-out").out


def _corrupt_table(tiny_model: Path, tmp_path: Path) -> Path:
    out = compress(tiny_model, "int4", tmp_path / "broken").out
    table = out / "table.safetensors"
    table.write_bytes(table.read_bytes()[:100])
    return out


def _corrupt_manifest(tiny_model: Path, tmp_path: Path) -> Path:
    out = compress(tiny_model, "int4", tmp_path / "broken").out
    (out / "manifest.json").write_text('{"source": ')
    return out


@pytest.mark.parametrize(
    "make_output, fragment",
    [
        (_another_models_output, "compressed from"),
        (_corrupt_table, "table.safetensors"),
        (_corrupt_manifest, "manifest.json"),
    ],
)
def test_a_compressed_output_not_of_this_model_is_refused(make_output, fragment, tiny_model, heavy_and_light, tmp_path):
    out = make_output(tiny_model, tmp_path)
    plot = tmp_path / "p.png"
    result = run("inspect", tiny_model, "--corpus", heavy_and_light, "--compressed", out, "--plot", plot)
    assert_one_line_error(result, fragment)
    assert not plot.exists() and not (tmp_path / "p-audit.png").exists()


def test_a_corpus_without_a_token_of_the_table_is_refused(tiny_model, tmp_path):
    corpus = tmp_path / "snow.txt"
    corpus.write_text("☃ ☃☃\n☃\n")  # the tokenizer's unknown token only
    plot = tmp_path / "p.png"
    assert_one_line_error(run("inspect", tiny_model, "--corpus", corpus, "--plot", plot), "has no token the table has")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert_one_line_error(run("inspect", tiny_model, "--corpus", blank, "--plot", plot), "has no text")
    assert_one_line_error(run("inspect", tiny_model, "--compressed", tmp_path), "--compressed needs --corpus")
    assert not plot.exists() and not (tmp_path / "p-audit.png").exists()


def test_the_library_refuses_a_sample_of_no_rows(tiny_model, heavy_and_light):
    with pytest.raises(EdgeembError, match="at least 1"):
        audit_corpus(open_model(tiny_model), [heavy_and_light], sample=0)
