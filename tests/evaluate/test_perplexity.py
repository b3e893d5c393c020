"""Perplexity in transformers (`evaluate.perplexity.CausalLM`) windows the text as llama.cpp's
tool does: every window of a model whose tokenizer adds BOS starts with BOS."""

from __future__ import annotations

import numpy as np
import pytest

from edgeemb.evaluate.perplexity import CausalLM


def _tiny_causal_lm(folder, add_bos: bool):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(60)]
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return " ".join(words[i % 60] for i in range(0, 700, 7))


def _nll(lm: CausalLM, chunk: np.ndarray) -> float:
    import torch

    with torch.inference_mode():
        logits = lm.model(torch.from_numpy(chunk)[None]).logits[0, :-1]
        return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(chunk[1:]), reduction="sum"))


@pytest.mark.parametrize("add_bos", [True, False])
def test_every_window_starts_with_bos_when_the_model_uses_one(tmp_path, add_bos):
    text = _tiny_causal_lm(tmp_path, add_bos)
    lm = CausalLM(tmp_path)
    assert lm.bos == (1 if add_bos else None)
    ids = lm.tokens(text, 40)
    result = lm.perplexity(ids, window=16)
    windows = [ids[start : start + 16].copy() for start in range(0, len(ids) - 1, 16)]
    if add_bos:
        for window in windows:
            window[0] = 1  # the first token of each window, replaced by BOS as llama.cpp's tool does
    total = sum(_nll(lm, w) for w in windows if len(w) > 1)
    assert result.tokens_scored == sum(len(w) - 1 for w in windows) == 37
    assert result.nll_per_token == pytest.approx(total / 37, rel=1e-5)
