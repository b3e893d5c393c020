"""Recipe steps: svd, quantize, mixed_precision (recipes themselves: test_recipe.py)."""

import numpy as np
import pytest

from edgeemb.errors import EdgeembError
from edgeemb.steps.quantize import QuantizeConfig, quantize
from edgeemb.steps.svd import SVDConfig, svd
from edgeemb.table import DenseTable, LowRankTable, QuantizedTable


@pytest.fixture
def low_rank_weight():
    """Rank 8 plus a common offset and a little noise: 1000 x 64."""
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((1000, 8)) @ rng.standard_normal((8, 64))
    return (signal + 3.0 + 1e-3 * rng.standard_normal((1000, 64))).astype(np.float32)


def test_svd_recovers_a_low_rank_table(low_rank_weight):
    table = svd(DenseTable(low_rank_weight), SVDConfig(rank=8))
    assert isinstance(table, LowRankTable) and table.rank == 8
    error = np.linalg.norm(table.to_dense() - low_rank_weight) / np.linalg.norm(low_rank_weight)
    assert error < 1e-3
    assert table.nbytes == 4 * (1000 * 8 + 8 * 64 + 64)


def test_svd_rank_by_energy_and_by_bytes(low_rank_weight):
    by_energy = svd(DenseTable(low_rank_weight), SVDConfig(energy=0.99, round_to=4))
    assert by_energy.rank == 8  # 8 components hold all but noise; rounded to a multiple of 4
    by_bytes = svd(DenseTable(low_rank_weight), SVDConfig(max_bytes=4 * (1000 * 16 + 16 * 64 + 64), round_to=8))
    assert by_bytes.rank == 16 and by_bytes.nbytes <= 4 * (1000 * 16 + 16 * 64 + 64)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rank": 64}, "must be smaller than the table width 64"),
        ({"rank": 500}, "must be smaller than the table width 64"),
        ({"max_bytes": 100}, "too small"),
        ({"energy": 1.0, "round_to": 64}, "would not compress"),
    ],
)
def test_impossible_ranks_are_clear_errors(low_rank_weight, config, message):
    with pytest.raises(EdgeembError, match=message):
        svd(DenseTable(low_rank_weight), SVDConfig(**config))


def test_quantize_after_svd_quantizes_the_tall_factor(low_rank_weight):
    table = quantize(svd(DenseTable(low_rank_weight), SVDConfig(rank=32)), QuantizeConfig(format="int4", block_size=32))
    assert isinstance(table.left, QuantizedTable) and table.right.dtype == np.float16
    assert table.nbytes == 1000 * 32 // 2 + 1000 * 2 + 32 * 64 * 2 + 64 * 2
    with pytest.raises(EdgeembError, match="already quantised"):
        quantize(table, QuantizeConfig(format="int8"))


def test_mixed_precision_keeps_frequent_rows_at_higher_precision(tmp_path):
    from edgeemb.steps import StepContext
    from edgeemb.steps.quantize import MixedPrecisionConfig, mixed_precision
    from edgeemb.table import MixedTable, load_table, save_table

    weight = np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("7 7 7 42\n42 99 7\n\n")  # token 7 three... four times, 42 twice, 99 once
    context = StepContext(tokenize=lambda text: [int(t) for t in text.split()])
    config = MixedPrecisionConfig(
        frequent={"format": "int8"}, rare={"format": "int2", "block_size": 32}, frequent_fraction=0.03, corpus=corpus
    )
    table = mixed_precision(DenseTable(weight), config, context)
    assert isinstance(table, MixedTable)
    assert sorted(np.flatnonzero(table.group == 0)) == [7, 42, 99]
    error = np.abs(table.to_dense() - weight).mean(axis=1)
    assert error[[7, 42, 99]].max() < 0.05 < error[np.flatnonzero(table.group == 1)].min()
    assert table.nbytes == sum(part.nbytes for part in table.parts) + 100 * (
        1 + 2
    )  # routing arrays (uint8, uint16) counted
    save_table(table, tmp_path / "t.safetensors")
    assert np.array_equal(load_table(tmp_path / "t.safetensors").to_dense(), table.to_dense())


def test_mixed_precision_without_corpus_uses_id_order_and_composes_with_svd():
    from edgeemb.steps.quantize import MixedPrecisionConfig, mixed_precision

    weight = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
    low_rank = svd(DenseTable(weight), SVDConfig(rank=32))
    table = mixed_precision(low_rank, MixedPrecisionConfig(frequent_fraction=0.25))
    assert isinstance(table, LowRankTable)
    assert list(np.flatnonzero(table.left.group == 0)) == list(range(50))
    assert np.allclose(table.lookup(np.arange(200)), table.to_dense())


def test_mixed_precision_needs_a_tokenizer_and_text(tmp_path):
    from edgeemb.steps import StepContext
    from edgeemb.steps.quantize import MixedPrecisionConfig, mixed_precision

    table = DenseTable(np.zeros((10, 32), np.float32))
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n")
    with pytest.raises(EdgeembError, match="needs the model's tokenizer"):
        mixed_precision(table, MixedPrecisionConfig(corpus=corpus))
    with pytest.raises(EdgeembError, match="has no text"):
        mixed_precision(table, MixedPrecisionConfig(corpus=corpus), StepContext(tokenize=lambda t: []))
