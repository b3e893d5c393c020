"""Sentence encoders for model-level evaluation: the source sentence-transformers model, with its
input embedding table optionally replaced by a compressed table's decoded rows. That decoded table
is exactly what a runtime's lookup of the compressed storage produces."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgeemb.errors import EdgeembError
from edgeemb.progress import track

Encode = Callable[[list[str]], np.ndarray]
SpanEncode = Callable[[list[str], list[tuple[int, int]]], np.ndarray]  # texts, character spans -> span vectors
_BATCH = 64


class SentenceEncoder:
    """One loaded sentence-transformers model; `encoder(weight)` encodes with that table swapped in,
    `original` with the model's own table (memoized: evaluating several tables encodes it once;
    `original_with(prompt)` likewise with one of the model's prompts)."""

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub
        # heavy (torch, transformers: seconds to import): loaded only when a sentence model is run
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # edgeemb's own progress reporting covers loading
        torch.manual_seed(0)
        try:
            self._model = SentenceTransformer(os.fspath(path), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EdgeembError(f"{path}: cannot load as a sentence-transformers model ({exc})") from None
        self._embedding = self._model[0].auto_model.get_input_embeddings()
        self._original = self._embedding.weight.data.clone()
        self._tokenizer = self._model[0].tokenizer
        self._original_backend = self._tokenizer._tokenizer
        # name -> text the model prepends; sentence-transformers lists empty query/document prompts for every model
        self.prompts: dict[str, str] = {name: text for name, text in (self._model.prompts or {}).items() if text}
        self._originals: dict[str | None, Encode] = {}
        self.original_spans = self.span_encoder(None, "encode spans (original)")

    @property
    def original(self) -> Encode:
        return self.original_with(None)

    def original_with(self, prompt: str | None) -> Encode:
        """The original model's encoder with the prompt called `prompt` (memoized per prompt)."""
        if prompt not in self._originals:
            label = f"encode (original, {prompt} prompt)" if prompt else "encode (original)"
            self._originals[prompt] = memoize(self.encoder(None, label, prompt=prompt))
        return self._originals[prompt]

    def encoder(
        self,
        weight: np.ndarray | None = None,
        label: str = "encode",
        tokenizer_json: str | None = None,
        prompt: str | None = None,
    ) -> Encode:
        """An encode function using `weight` as the input table (None: the original table) and,
        for a trimmed vocabulary, the tokenizer.json rewritten for it; `prompt` names one of the
        model's prompts (`prompts`), prepended to every text; None: no prompt, not even a default one."""
        use = self._user(weight, tokenizer_json)
        prompt_text = "" if prompt is None else self.prompts[prompt]

        def encode(texts: list[str]) -> np.ndarray:
            use()
            starts = range(0, len(texts), _BATCH)
            batches = [
                self._model.encode(
                    texts[s : s + _BATCH],
                    batch_size=_BATCH,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                    prompt=prompt_text,
                )
                for s in track(starts, label, len(starts))
            ]
            return np.concatenate(batches).astype(np.float32, copy=False)

        return encode

    def span_encoder(
        self,
        weight: np.ndarray | None = None,
        label: str = "encode spans",
        tokenizer_json: str | None = None,
    ) -> SpanEncode:
        """Like `encoder`, for spans in context: each (text, character span) gives the mean of the
        transformer's last hidden states over the tokens overlapping the span."""
        import torch  # heavy: loaded by __init__ already; only bound here

        use = self._user(weight, tokenizer_json)
        transformer = self._model[0]

        def encode(texts: list[str], spans: list[tuple[int, int]]) -> np.ndarray:
            use()
            out = np.zeros((len(texts), self._original.shape[1]), np.float32)
            starts = range(0, len(texts), _BATCH)
            for s in track(starts, label, len(starts)):
                features = self._tokenizer(
                    texts[s : s + _BATCH],
                    padding=True,
                    truncation=True,
                    max_length=transformer.max_seq_length,
                    return_offsets_mapping=True,
                    return_tensors="pt",
                )
                offsets = features.pop("offset_mapping").numpy()
                with torch.inference_mode():
                    states = transformer.auto_model(**features).last_hidden_state.float().numpy()
                bounds = np.asarray(spans[s : s + _BATCH])[:, None, :]
                # special and padding tokens have empty offsets, so they never overlap a span
                overlap = (offsets[..., 1] > bounds[..., 0]) & (offsets[..., 0] < bounds[..., 1])
                overlap &= offsets[..., 1] > offsets[..., 0]
                for row in np.flatnonzero(~overlap.any(axis=1)):
                    start, end = spans[s + row]
                    raise EdgeembError(
                        f"span {texts[s + row][start:end]!r} of {texts[s + row]!r} has no token within the "
                        f"model's {transformer.max_seq_length}-token context"
                    )
                out[s : s + len(offsets)] = (states * overlap[..., None]).sum(axis=1) / overlap.sum(axis=1)[:, None]
            return out

        return encode

    def _user(self, weight: np.ndarray | None, tokenizer_json: str | None) -> Callable[[], None]:
        """A function that puts `weight` and the tokenizer for it into the model before it runs."""
        import torch  # heavy: loaded by __init__ already; only bound here

        table = self._original if weight is None else torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        backend = self._original_backend if tokenizer_json is None else Tokenizer.from_str(tokenizer_json)
        rows = self._original.shape[0] if tokenizer_json is None else backend.get_vocab_size(with_added_tokens=True)
        if table.shape != (rows, self._original.shape[1]):
            expected = (rows, self._original.shape[1])
            raise EdgeembError(f"table shape {tuple(table.shape)} does not match the model's {expected}")

        def use() -> None:
            self._embedding.weight.data = table
            self._tokenizer._tokenizer = backend  # transformers' tokenizer reads its ids from this backend

        return use


@functools.lru_cache(maxsize=1)
def sentence_encoder(path: Path, sha256: str) -> SentenceEncoder:
    """The loaded model for `path`, kept while consecutive evaluations use the same model file."""
    return SentenceEncoder(path)


def memoize(encode: Encode) -> Encode:
    """Encode each distinct text once, however many metrics ask for it."""
    cache: dict[str, np.ndarray] = {}

    def cached(texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            cache.update(zip(missing, encode(missing)))
        return np.stack([cache[t] for t in texts])

    return cached


def static_encoder(
    table,
    tokenize: Callable[[str], list[int]],
    unk_id: int | None = None,
    max_tokens: int = 512,
) -> Encode:
    """A static model's encoder (model2vec's): the normalised mean of the rows of a text's tokens,
    special tokens and `unk_id` left out, at most `max_tokens` of them."""

    def encode(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), table.shape[1]), np.float32)
        for i, text in enumerate(texts):
            ids = [t for t in tokenize(text) if t != unk_id][:max_tokens]
            if ids:
                out[i] = table.lookup(np.asarray(ids)).mean(axis=0)
        return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-32)

    return encode


def unk_id(tokens: list[str] | None) -> int | None:
    """The id of the unknown-token piece ([UNK] in WordPiece vocabularies), which static models skip."""
    return tokens.index("[UNK]") if tokens and "[UNK]" in tokens else None
