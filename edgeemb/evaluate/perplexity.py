"""Perplexity of a causal LM with its token embedding table replaced by a compressed one.

The model is loaded with transformers: a GGUF file is dequantised by `from_pretrained(...,
gguf_file=...)`, so only the embedding table differs between the original and the compressed run.
When the output head is tied to the table (SmolLM2, Gemma 3), replacing the table replaces the
head too, as it does in llama.cpp.

Perplexity is computed over the first `max_tokens` tokens of the text in non-overlapping windows
of `window` tokens (each window's first token has no context and is not scored). For models whose
tokenizer adds a BOS token, every window starts with it, as in llama.cpp's perplexity tool and
`evaluate.llamacpp`: Gemma without BOS at a window's start scores far worse.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.progress import silenced_output, track


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll_per_token: float
    tokens_scored: int
    window: int
    bytes_scored: int | None = None  # text bytes of the scored tokens: compares tokenizers fairly

    @property
    def bits_per_byte(self) -> float | None:
        return self.nll_per_token * self.tokens_scored / math.log(2) / self.bytes_scored if self.bytes_scored else None


class CausalLM:
    """A transformers causal LM whose input table can be swapped."""

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # heavy (torch, transformers: seconds to import): loaded only when a causal LM is run
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        path = Path(path)
        folder, options = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
        try:
            with silenced_output():  # the GGUF conversion draws its own progress bar
                self.tokenizer = AutoTokenizer.from_pretrained(folder, **options)
                self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **options).eval()
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise EdgeembError(f"{path}: transformers cannot load it as a causal LM ({reason})") from None
        self._embedding = self.model.get_input_embeddings()
        self._original = self._embedding.weight.data.clone()
        with_bos = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        self.bos = with_bos[0] if len(with_bos) > len(plain) and with_bos[0] == self.tokenizer.bos_token_id else None

    def tokens(self, text: str, max_tokens: int) -> np.ndarray:
        ids = self.tokenizer(text, add_special_tokens=True, return_attention_mask=False)["input_ids"]
        return np.asarray(ids[:max_tokens], dtype=np.int64)

    def perplexity(self, ids: np.ndarray, weight: np.ndarray | None = None, window: int = 1024) -> Perplexity:
        """Perplexity of `ids` with `weight` as the embedding table (None: the original)."""
        import torch  # heavy: loaded by __init__ already; only bound here

        table = self._original if weight is None else torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        if table.shape != self._original.shape:
            expected = tuple(self._original.shape)
            raise EdgeembError(f"table shape {tuple(table.shape)} does not match the model's {expected}")
        if len(ids) < 2:
            raise EdgeembError("perplexity needs at least 2 tokens of text")
        total, scored = 0.0, 0
        starts = range(0, len(ids) - 1, window)
        self._embedding.weight.data = table  # a tied head shares this parameter
        try:
            with torch.inference_mode():
                for start in track(starts, "perplexity", len(starts)):
                    chunk = torch.from_numpy(ids[start : start + window].copy())[None]
                    if chunk.shape[1] < 2:
                        continue
                    if self.bos is not None:
                        chunk[0, 0] = self.bos
                    logits = self.model(chunk).logits[0, :-1].float()
                    total += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
                    scored += chunk.shape[1] - 1
        finally:
            self._embedding.weight.data = self._original
        nll = total / scored
        return Perplexity(math.exp(nll), nll, scored, window)
