"""MPNet (all-mpnet-base-v2, #19) exported to ONNX with its tokenizer, run as a device runs it: the
graph fed by the tokenizer.json beside it, read by the tokenizers library alone (no transformers)."""

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from edgeemb.artifact import load_artifact
from edgeemb.evaluate.data import read_beir, read_sts
from edgeemb.evaluate.encoder import sentence_encoder
from edgeemb.evaluate.onnxruntime import onnx_session
from edgeemb.export.onnx import export_onnx, tokenizer_beside
from edgeemb.export.request import shipped_tokenizer_json
from edgeemb.pipeline import compress, export_artifact
from edgeemb.recipe import ExportConfig, load_recipe
from edgeemb.rows import unit_rows
from edgeemb.sources import open_model
from tests.conftest import WORDS, data_file

TOLERANCE = 1e-4  # fp32 graph against the same table in PyTorch


def shipped_run(onnx_file: Path, texts: list[str]) -> np.ndarray:
    """The graph's sentence embeddings for `texts`, tokenised by the file shipped beside it as it is."""
    encodings = Tokenizer.from_file(str(tokenizer_beside(onnx_file))).encode_batch(texts)
    feed = {
        "input_ids": np.array([encoding.ids for encoding in encodings], np.int64),
        "attention_mask": np.array([encoding.attention_mask for encoding in encodings], np.int64),
    }
    return onnx_session(onnx_file, 1).run(None, feed)[0]


def test_the_shipped_tokenizer_truncates_where_the_model_does(tiny_model, tmp_path):
    # all-mpnet-base-v2's tokenizer.json truncates at 128 tokens and pads to 128; the model reads
    # 384: fed by that file as written, the graph embedded 166 of Cranfield's first 200 documents
    # from their first 128 tokens (cosine to the model down to 0.81). The tiny model, likewise.
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    own = Tokenizer.from_file(str(model / "tokenizer.json"))
    own.enable_truncation(8)
    own.enable_padding(length=12, pad_id=0, pad_token="[PAD]")
    own.save(str(model / "tokenizer.json"))
    texts = [" ".join(WORDS[:50]), "the water is long", " ".join(WORDS[60:70])]

    out = compress(model, "int4", tmp_path / "out").out
    exported = export_artifact(out, ExportConfig(format="onnx"))
    assert exported.export.tokenizer == str(out / "model.tokenizer.json")
    source = open_model(model)
    compressed = sentence_encoder(source.path, source.sha256).encoder(load_artifact(out).table.to_dense())
    shipped = Tokenizer.from_file(str(tmp_path / "out" / "model.tokenizer.json"))
    assert shipped.truncation["max_length"] == 32  # the tiny model's max_seq_length
    ours = shipped_run(tmp_path / "out" / "model.onnx", texts)
    assert np.abs(ours - unit_rows(compressed(texts))).max() < TOLERANCE


@pytest.mark.real
def test_mpnet_int4_runs_in_onnxruntime_with_its_tokenizer(tmp_path):
    """The exporter's two parts on MPNet, the graph and the tokenizer beside it (the test above runs
    them through the exporter, whose own verification would add ~20 s here), checked in
    onnxruntime as a device runs the pair."""
    sts = read_sts(data_file("stsb", "stsb_en_dev.tsv"))
    corpus = read_beir(data_file("cranfield_beir")).corpus_texts
    long_doc = next(text for text in corpus if len(text.split()) > 200)  # past 128 tokens, within 384
    texts = [*sts.sentences1[:6], long_doc]
    source = open_model("mpnet")
    table = load_recipe("int4").apply(source.table)

    model = tmp_path / "model.onnx"
    export_onnx(source, table, model)
    tokenizer_beside(model).write_text(shipped_tokenizer_json(source, table), encoding="utf-8")
    ours = shipped_run(model, texts)
    reference = sentence_encoder(source.path, source.sha256)
    assert np.abs(ours - unit_rows(reference.encoder(table.to_dense())(texts))).max() < TOLERANCE
    assert (ours * unit_rows(reference.original(texts))).sum(axis=1).min() > 0.99  # int4's cost: small
    assert len(Tokenizer.from_file(str(tokenizer_beside(model))).encode(long_doc).ids) > 128
