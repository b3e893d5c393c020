"""What a GGUF model gets by default and what its export ships (#19 problems 4, 6 and 8): the
default recipe is a GGUF type llama.cpp loads as it is; a table the export quantises again is
reported with the shipped file's own figures; a table larger than the source's is a warning; an
untied output head is left as it is unless asked; report.md carries the export's check; and
llama.cpp's peer file differs from the source in token_embd alone.

The models are tiny llamas written here (vocabulary 512, width 64, one layer) that llama.cpp
loads and runs in a second, with or without a separate output head."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import quantize

from edgeemb.artifact import load_artifact
from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.export.gguf import export_gguf, llama_quantize_token_embd
from edgeemb.ggufio import OUTPUT, TOKEN_EMBD, dequantize_tensor, read_gguf_header, tensor_bytes
from edgeemb.pipeline import EvaluationData, compress, default_recipe, export_artifact
from edgeemb.recipe import ExportConfig
from edgeemb.results import Report, from_json
from edgeemb.sources import open_model
from edgeemb.table import DenseTable
from tests.conftest import data_file

VOCAB, DIM, N_FF = 512, 64, 128
TEXT = "the quick brown fox jumps over the lazy dog and then it runs far away. " * 12

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python missing")


def write_llama(path: Path, embd_type: Q = Q.Q8_0, head: Q | None = Q.Q8_0, seed: int = 0) -> np.ndarray:
    """A 1-layer llama GGUF llama.cpp runs: SentencePiece-style vocabulary with byte pieces,
    token_embd in `embd_type`, and a separate output.weight in `head` (None: tied)."""
    rng = np.random.default_rng(seed)

    def dense(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    embd = (rng.standard_normal((VOCAB, DIM)) * 0.5).astype(np.float32)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(DIM)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_rope_dimension_count(16)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"▁w{i}" for i in range(VOCAB - len(tokens))]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(VOCAB - 259)])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor(TOKEN_EMBD, quantize(embd, embd_type), raw_dtype=embd_type)
    ones = np.ones(DIM, np.float32)
    layer = {
        "blk.0.attn_norm.weight": ones,
        "blk.0.attn_q.weight": dense(DIM, DIM),
        "blk.0.attn_k.weight": dense(DIM, DIM),
        "blk.0.attn_v.weight": dense(DIM, DIM),
        "blk.0.attn_output.weight": dense(DIM, DIM),
        "blk.0.ffn_norm.weight": ones,
        "blk.0.ffn_gate.weight": dense(N_FF, DIM),
        "blk.0.ffn_up.weight": dense(N_FF, DIM),
        "blk.0.ffn_down.weight": dense(DIM, N_FF),
        "output_norm.weight": ones,
    }
    for name, value in layer.items():
        writer.add_tensor(name, value)
    if head is not None:
        writer.add_tensor(OUTPUT, quantize(dense(VOCAB, DIM), head), raw_dtype=head)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return embd


def cli(*args: str | Path) -> str:
    """`edgeemb ARGS`'s output on a wide terminal, table borders and runs of spaces taken out."""
    result = CliRunner(env={"COLUMNS": "1000"}).invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return " ".join(re.sub("[\u2500-\u257f]", " ", result.output).split())


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# --- problem 4: the default recipe is one the model's runtime ships ---------------------------


@needs_llama
def test_compress_without_a_recipe_gives_a_gguf_model_a_table_llama_cpp_loads(tmp_path):
    """Before, the default was int4 for every model, and `export --format gguf` of it failed
    ("choose a GGUF type"). Now a GGUF model gets Q5_0, which the export copies as it is."""
    write_llama(tmp_path / "tiny.gguf", Q.Q8_0, head=None)
    result = compress(tmp_path / "tiny.gguf", out=tmp_path / "out")
    assert result.report.recipe.name == "gguf-q5_0" and result.report.table.storage.startswith("GGUF Q5_0")
    assert "causal LM" in result.report.recipe.default and "--calibration" in result.report.recipe.default
    exported = export_artifact(tmp_path / "out")
    assert exported.export.tensor_type == "Q5_0" and not exported.export.rebuilt
    shipped = dequantize_tensor(Path(exported.export.path), read_gguf_header(exported.export.path).tensor(TOKEN_EMBD))
    np.testing.assert_array_equal(shipped, load_artifact(tmp_path / "out").table.to_dense())


def test_the_default_says_which_recipe_and_why(tmp_path, tiny_model):
    write_llama(tmp_path / "tiny.gguf", Q.Q8_0, head=None)
    output = cli("compress", tmp_path / "tiny.gguf", "-o", tmp_path / "out")
    assert "recipe gguf-q5_0, picked as the default for a causal LM" in output
    assert "No recipe was named: `gguf-q5_0` is the default" in (tmp_path / "out" / "report.md").read_text()
    encoder = compress(tiny_model, out=tmp_path / "encoder").report.recipe
    assert encoder.name == "int4" and "GatherBlockQuantized" in encoder.default
    named = compress(tmp_path / "tiny.gguf", "int8", tmp_path / "named").report.recipe
    assert named.name == "int8" and named.default is None
    assert "No recipe was named" not in (tmp_path / "named" / "report.md").read_text()


def test_calibration_text_picks_the_activation_weighted_default_for_a_tied_head(tmp_path):
    write_llama(tmp_path / "tied.gguf", head=None)
    write_llama(tmp_path / "untied.gguf", head=Q.Q8_0)
    calibration = tmp_path / "calibration.txt"
    tied, untied = open_model(tmp_path / "tied.gguf"), open_model(tmp_path / "untied.gguf")
    if tied.head_input_power is None:
        pytest.skip("llama-cpp-python is not installed: no head input power to weigh by")
    assert default_recipe(tied)[0] == default_recipe(untied)[0] == "gguf-q5_0"
    assert default_recipe(tied, calibration)[0] == "gguf-q5_0-act"
    name, why = default_recipe(untied, calibration)
    assert name == "gguf-q5_0" and "--calibration is not used" in why and "separate (untied)" in why
    name, why = default_recipe(replace(tied, head_input_power=None), calibration)
    assert name == "gguf-q5_0" and "llama-cpp-python" in why


# --- problem 8: a table larger than the source's is a warning ----------------------------------


def test_a_table_larger_than_the_source_stores_it_is_a_warning(tmp_path):
    """int8 of a Q5_0 table (Qwen2.5-0.5B's case) takes more bytes: before, the report said
    "0.69x smaller" and nothing else."""
    write_llama(tmp_path / "q5.gguf", Q.Q5_0, head=None)
    output = cli("compress", tmp_path / "q5.gguf", "-r", "int8", "-o", "out5")
    assert "WARNING the compressed table is larger than the source's" in output and "x larger" in output
    assert "smaller" not in output.split("WARNING")[0].split("table bytes")[1]
    report = from_json(Report, Path("out5/report.json").read_text())
    (warning,) = report.table.warnings
    assert "Q5_0, 5.50 bits per value" in warning and "int8" in warning
    markdown = Path("out5/report.md").read_text()
    assert f"**Warning:** {warning}" in markdown and "x larger" in markdown
    # A table that shrinks is no warning.
    smaller = compress(tmp_path / "q5.gguf", "int4", tmp_path / "int4").report.table
    assert smaller.warnings is None and smaller.ratio_vs_source > 1


# --- problem 8: an untied output head is left as it is unless asked ----------------------------


def test_export_leaves_an_untied_head_as_it_is(tmp_path):
    """Before, `--type Q4_0` quantised the untied output.weight to Q4_0 too, unasked."""
    write_llama(tmp_path / "untied.gguf", Q.Q8_0, head=Q.Q8_0)
    result = compress(tmp_path / "untied.gguf", "int4", tmp_path / "out")
    export = export_gguf(tmp_path / "untied.gguf", load_artifact(result.out).table, tmp_path / "a.gguf", "Q4_0")
    assert export.replaced == [TOKEN_EMBD]
    assert any("output.weight is the source's (Q8_0), not requantised" in note for note in export.notes)
    source, out = (read_gguf_header(tmp_path / name).tensor(OUTPUT) for name in ("untied.gguf", "a.gguf"))
    assert out.type_name == "Q8_0"
    assert np.array_equal(tensor_bytes(tmp_path / "a.gguf", out), tensor_bytes(tmp_path / "untied.gguf", source))


def test_a_head_type_asked_for_is_applied_and_below_q8_0_warned(tmp_path):
    write_llama(tmp_path / "untied.gguf", Q.Q8_0, head=Q.Q8_0)
    write_llama(tmp_path / "tied.gguf", Q.Q8_0, head=None)
    table = DenseTable(open_model(tmp_path / "untied.gguf").table.weight)
    export = export_gguf(tmp_path / "untied.gguf", table, tmp_path / "q4.gguf", "Q8_0", head_type="Q4_0")
    assert export.replaced == [OUTPUT, TOKEN_EMBD]
    assert read_gguf_header(tmp_path / "q4.gguf").tensor(OUTPUT).type_name == "Q4_0"
    (note,) = [note for note in export.notes if OUTPUT in note]
    assert "from the source's Q8_0 to Q4_0, as asked; warning: 4.50 bits per value is below Q8_0" in note
    export = export_gguf(tmp_path / "untied.gguf", table, tmp_path / "f16.gguf", "Q8_0", head_type="F16")
    (note,) = [note for note in export.notes if OUTPUT in note]
    assert "to F16, as asked" in note and "warning" not in note
    with pytest.raises(EdgeembError, match="has no separate output.weight"):
        export_gguf(tmp_path / "tied.gguf", table, tmp_path / "tied-out.gguf", "Q8_0", head_type="Q4_0")
    assert not (tmp_path / "tied-out.gguf").exists()


def test_a_head_type_leaves_recipe_digests_of_earlier_recipes_as_they_were():
    from edgeemb.recipe import load_recipe, parse_recipe

    recipe = load_recipe("smollm2-135m-q5_0-act")
    assert "head_type" not in recipe.to_dict()["export"]
    asked = parse_recipe({"steps": ["quantize"], "export": {"format": "gguf", "head_type": "Q8_0"}})
    assert asked.to_dict()["export"]["head_type"] == "Q8_0"
    assert asked.digest != parse_recipe({"steps": ["quantize"], "export": {"format": "gguf"}}).digest


@needs_llama
def test_inspect_and_offload_report_an_untied_head_as_such(tmp_path):
    write_llama(tmp_path / "untied.gguf", Q.Q8_0, head=Q.Q8_0)
    inspected = CliRunner().invoke(main, ["inspect", str(tmp_path / "untied.gguf"), "--json"])
    assert json.loads(inspected.output[inspected.output.index("{") :])["model"]["tied"] is False
    assert "output head separate" in cli("inspect", tmp_path / "untied.gguf")
    (tmp_path / "text.txt").write_text(TEXT)
    offload = cli("offload", tmp_path / "untied.gguf", "--text", tmp_path / "text.txt")
    assert "the output head is a separate tensor (untied)" in offload


# --- problem 6: report.md carries the GGUF export's check --------------------------------------


@needs_llama
def test_report_md_shows_the_gguf_exports_check(tmp_path):
    """A recipe that exports GGUF: report.md now has the file, greedy tokens, decode speed and
    peak RSS (before, only report.json had them)."""
    write_llama(tmp_path / "tiny.gguf", Q.Q8_0, head=Q.Q8_0)
    recipe = tmp_path / "q5.yaml"
    recipe.write_text("steps:\n  - quantize: {format: Q5_0}\nexport: {format: gguf}\n")
    (tmp_path / "text.txt").write_text(TEXT)
    result = compress(
        tmp_path / "tiny.gguf", recipe, tmp_path / "out", data=_perplexity_data(tmp_path / "text.txt")
    ).report
    markdown = (tmp_path / "out" / "report.md").read_text()
    check = result.export.verify
    assert "## Export (GGUF, verified in llama.cpp)" in markdown
    assert f"{check.greedy_tokens_equal_to_source} tokens as the source" in markdown
    assert f"| decode tokens/s (same run) | {check.source.decode_tokens_per_s:.1f} |" in markdown
    assert "| peak RSS |" in markdown and "output.weight is the source's (Q8_0), not requantised" in markdown
    assert f"| perplexity ({check.export.perplexity.tokens_scored} tokens of " in markdown
    assert f"mean KL {check.table.mean_kl:.2e} nats per token, same top token at {check.table.top1_agreement:.1%}" in (
        markdown
    )


def _perplexity_data(text: Path) -> EvaluationData:
    return EvaluationData(perplexity=text, max_tokens=128)


# --- problem 4: a table quantised again for llama.cpp is reported as shipped -------------------


@needs_llama
def test_a_requantised_export_reports_the_shipped_tables_own_figures(tmp_path):
    """int8 then `export --type Q4_0`: the table is quantised a second time. Before, the report
    kept showing int8's figures; now the export and OUT/report.{json,md} carry the Q4_0 table read
    back from the file (its bytes and its error against the original) beside the recipe's."""
    write_llama(tmp_path / "tiny.gguf", Q.Q8_0, head=None)
    compress(tmp_path / "tiny.gguf", "int8", tmp_path / "out")
    (tmp_path / "text.txt").write_text(TEXT)
    output = cli("export", tmp_path / "out", "--format", "gguf", "--type", "Q4_0", "--text", tmp_path / "text.txt")
    assert "re-quantised the file ships token_embd as Q4_0, not the recipe's table" in output

    report = from_json(Report, (tmp_path / "out" / "report.json").read_text())
    requantised = report.export.requantised
    file = Path(report.export.export.path)
    info = read_gguf_header(file).tensor(TOKEN_EMBD)
    original = open_model(tmp_path / "tiny.gguf").table.weight
    shipped = dequantize_tensor(file, info)
    error = float(np.linalg.norm(shipped - original) / np.linalg.norm(original))
    assert requantised.shipped.storage == info.type_name == "Q4_0" and requantised.shipped.bytes == info.nbytes
    assert requantised.shipped.quality.relative_error == pytest.approx(error, rel=1e-5)
    assert requantised.recipe.storage == report.table.storage and requantised.recipe.bytes == report.table.bytes
    assert requantised.recipe.quality == report.quality.table
    # The file ships a smaller, coarser table than the recipe's: the report now says so.
    assert requantised.shipped.bytes < requantised.recipe.bytes
    assert requantised.shipped.quality.relative_error > 2 * requantised.recipe.quality.relative_error
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "shipped token_embd: Q4_0" in markdown and "recipe's table: int8" in markdown
    assert report.export.verify.export.perplexity is not None and "perplexity (" in markdown


@needs_llama
def test_a_table_the_file_stores_as_it_is_is_not_reported_as_requantised(tmp_path):
    write_llama(tmp_path / "tiny.gguf", Q.Q8_0, head=None)
    compress(tmp_path / "tiny.gguf", "gguf-q5_0", tmp_path / "out")
    exported = export_artifact(tmp_path / "out", ExportConfig(format="gguf", type="Q5_0"))
    assert not exported.export.rebuilt and exported.requantised is None
    again = export_artifact(tmp_path / "out", ExportConfig(format="gguf", type="Q4_0"), tmp_path / "q4.gguf")
    assert again.requantised.shipped.storage == "Q4_0" and again.requantised.recipe.storage.startswith("GGUF Q5_0")
    assert any("quantised again to Q4_0, as asked" in note for note in again.export.notes)


# --- llama.cpp's peer: its token_embd choice alone ---------------------------------------------


@needs_llama
def test_llama_cpps_peer_changes_token_embd_alone(tmp_path):
    """llama.cpp's quantiser re-decides every tensor's type by the file type's rules (on Qwen2.5's
    Q4_K_M file it swapped 32 of them); the peer file keeps only its token_embd, so a comparison of
    token_embd choices compares nothing else. Here the F32 layer weights would have become Q8_0."""
    write_llama(tmp_path / "tiny.gguf", Q.Q8_0, head=Q.Q8_0)
    llama_quantize_token_embd(tmp_path / "tiny.gguf", tmp_path / "peer.gguf", "Q4_0")
    source, peer = tmp_path / "tiny.gguf", tmp_path / "peer.gguf"
    assert read_gguf_header(peer).tensor(TOKEN_EMBD).type_name == "Q4_0"
    for ours in read_gguf_header(source).tensors:
        if ours.name != TOKEN_EMBD:
            theirs = read_gguf_header(peer).tensor(ours.name)
            assert theirs.type_name == ours.type_name, ours.name
            assert np.array_equal(tensor_bytes(peer, theirs), tensor_bytes(source, ours))


# --- real: Qwen2.5-0.5B, the untied GGUF --------------------------------------------------------


@pytest.mark.real
def test_qwen_int8_is_larger_than_its_q5_0_table_and_says_so(tmp_path):
    """int8 of Qwen2.5-0.5B's Q5_0 table: 93.59 -> 136.44 MB, a warning and "1.46x larger"."""
    data_file("wikitext2")  # the real tests run beside the shared data
    try:
        open_model("qwen2.5-0.5b")
    except EdgeembError as exc:
        pytest.skip(str(exc))
    output = cli("compress", "qwen2.5-0.5b", "-r", "int8", "-o", tmp_path / "o")
    assert "93.59 MB -> 136.44 MB (1.46x larger)" in output and "WARNING the compressed table is larger" in output
    assert "output head separate" in cli("inspect", "qwen2.5-0.5b")
