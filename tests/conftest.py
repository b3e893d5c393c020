"""Shared fixtures: a tiny random sentence-transformers model built on the fly (fast unit tests),
the real models from their PyPI packages, and the real evaluation data beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WORDS = (
    "the a of and to in is it that was for on are with as his they at be this from have or by one had not but what "
    "all were when we there can an your which their said if do will each about how up out them then she many some "
    "so these would other into has more her two like him see time could no make than first been its who now people "
    "my made over did down only way find use may water long little very after words called just where most know"
).split()


def data_file(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"evaluation data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random 1-layer BERT sentence-transformers model (vocab 192, dim 64) with a WordPiece vocab."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny")
    base = root / "base"
    base.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + WORDS
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [f"[unused{i}]" for i in range(192 - len(vocab))]
    (base / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(base)
    _wordpiece_tokenizer(vocab).save_pretrained(base)
    transformer = models.Transformer(str(base), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, models.Pooling(64, "mean")], device="cpu")
    path = root / "tiny-st"
    model.save(str(path))
    return path


def _wordpiece_tokenizer(vocab: list[str]):
    """A BERT-style WordPiece tokenizer over `vocab` (built directly: transformers 5 ignores vocab_file)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory):
    """The real MiniLM exported once in fp32, and its int4 table (the default recipe)."""
    from edgeemb.export.onnx import export_onnx
    from edgeemb.recipe import load_recipe
    from edgeemb.sources import open_model

    source = open_model("minilm")
    fp32 = tmp_path_factory.mktemp("minilm") / "fp32.onnx"
    export_onnx(source, None, fp32)
    return source, load_recipe("int4").apply(source.table), fp32


@pytest.fixture(scope="session")
def tiny_sts(tmp_path_factory) -> Path:
    """A small STS TSV over the tiny model's words, with scores from word overlap."""
    rng = np.random.default_rng(0)
    lines = ["sentence1\tsentence2\tscore"]
    for _ in range(60):
        a = rng.choice(WORDS, 6)
        b = np.where(rng.random(6) < rng.random(), a, rng.choice(WORDS, 6))
        lines.append(f"{' '.join(a)}\t{' '.join(b)}\t{5 * np.mean(a == b):.2f}")
    path = tmp_path_factory.mktemp("sts") / "sts.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path
