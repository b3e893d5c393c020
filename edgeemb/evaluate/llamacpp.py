"""Run GGUF files in llama.cpp (llama-cpp-python): perplexity, greedy output, speed and memory.

Perplexity is computed from the logits here, not from llama-cpp-python's echo log-probs (those
shift by one position on models without a BOS token, such as SmolLM2): each window of `window`
tokens is decoded from an empty KV cache in batches that ask for every position's logits, and
every token but the window's first is scored. As in llama.cpp's own perplexity tool, a model that
expects a BOS token (Gemma) gets it as the first token of every window, not only of the first.
The text bytes of the scored tokens are counted too, so files whose tokenizers differ (a trimmed
vocabulary) compare by bits per byte of the same text.

Every file is measured in a fresh process, so peak RSS (VmHWM, taken after load and generation,
before the perplexity pass allocates its logits) is that model's alone and one model's pages do
not warm the next. The text is tokenised by the first file; a file with another vocabulary scores
the text those tokens cover, tokenised its own way.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.perplexity import Perplexity
from edgeemb.ggufio import TOKENS_KEY, read_gguf_header
from edgeemb.proc import memory_status
from edgeemb.progress import silenced_output, track

DEFAULT_PROMPT = "The capital of France is"
_BATCH = 256  # tokens per llama_decode in the perplexity pass: logits of 256 x vocab floats


@dataclass(frozen=True)
class LlamaRun:
    path: str
    file_bytes: int
    load_seconds: float
    greedy_ids: list[int]
    greedy_text: str
    greedy_pieces: list[str]  # the text of each greedy token: compares runs across vocabularies
    decode_tokens_per_s: float  # greedy generation, one token per llama_decode
    prefill_tokens_per_s: float | None  # the perplexity pass: batches of 256 tokens
    peak_rss_bytes: int
    perplexity: Perplexity | None
    rss_file_bytes: int = 0  # resident pages of mapped files (the mmapped model) after generation
    rss_anon_bytes: int = 0  # resident anonymous memory (weights read into buffers, KV cache, ...)
    options: dict = field(default_factory=dict)  # Llama() options of the run, e.g. use_mmap


def llama_vocabulary(path: Path):
    """llama.cpp's vocabulary of a GGUF file (a vocab-only `Llama`). Not cached here: a cached
    `Llama` would outlive llama_cpp itself at interpreter exit and fail to free."""
    import llama_cpp  # heavy (the compiled llama.cpp): loaded only when a file is run

    try:
        with silenced_output():  # the vocab-only loader logs from C even with verbose=False
            return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise EdgeembError(f"{path}: llama.cpp cannot read this file's vocabulary ({exc})") from None


def load_llama(path: Path, n_ctx: int, n_batch: int, **options):
    """A llama.cpp context on every CPU, decoding up to `n_batch` tokens per call."""
    import llama_cpp  # heavy (the compiled llama.cpp): loaded only when a file is run

    threads = len(os.sched_getaffinity(0))  # the CPUs this process may run on (a bench profile may pin it)
    try:
        with silenced_output():  # llama.cpp logs context set-up from C even with verbose=False
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
                **options,
            )
    except (ValueError, RuntimeError) as exc:
        raise EdgeembError(f"{path}: llama.cpp cannot load this model ({exc})") from None


@dataclass(frozen=True)
class Tokens:
    ids: np.ndarray  # int32, starting with BOS when the model adds one
    bos: int | None  # the BOS id if the model adds one, else None
    piece_bytes: np.ndarray  # text bytes of each token (0 for BOS)


def tokenize_text(path: Path, text: str, max_tokens: int | None = None) -> Tokens:
    """`text` as llama.cpp tokenises it for this model, with BOS if the model asks for one."""
    return _tokens(llama_vocabulary(Path(path)), text, max_tokens)


def _tokens(vocab, text: str, max_tokens: int | None = None) -> Tokens:
    with_bos = vocab.tokenize(b"a", add_bos=True, special=False)
    bos = with_bos[0] if len(with_bos) > len(vocab.tokenize(b"a", add_bos=False, special=False)) else None
    ids = np.asarray(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:max_tokens], dtype=np.int32)
    distinct, where = np.unique(ids, return_inverse=True)
    lengths = np.array([len(vocab.detokenize([int(i)])) for i in distinct], np.int64)
    return Tokens(ids, bos, lengths[where])


class Decoder:
    """One llama.cpp context driven through the C API: decode ids, read logits."""

    def __init__(self, llm, capacity: int) -> None:
        import llama_cpp  # heavy (the compiled llama.cpp): loaded only when a file is run

        self._api = llama_cpp
        self.llm = llm
        self.n_vocab = llm.n_vocab()
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)

    def close(self) -> None:
        self._api.llama_batch_free(self.batch)

    def clear(self) -> None:
        self._api.llama_memory_clear(self._api.llama_get_memory(self.llm.ctx), True)

    def decode(self, ids: np.ndarray, start: int, all_logits: bool) -> np.ndarray:
        """Decode `ids` at positions start.. and return their logits (all, or the last row)."""
        batch = self.batch
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids.tolist()):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(ids) - 1
        if self._api.llama_decode(self.llm.ctx, batch) != 0:
            raise EdgeembError(f"llama_decode failed at position {start}")
        rows = len(ids) if all_logits else 1
        return np.ctypeslib.as_array(self._api.llama_get_logits(self.llm.ctx), shape=(rows, self.n_vocab))


def _window_nll(decoder: Decoder, ids: np.ndarray) -> float:
    """Summed -log p of ids[1:] given the ids before them, from an empty cache."""
    import torch  # heavy: only the perplexity pass needs it (log-sum-exp over each row of logits)

    decoder.clear()
    total = 0.0
    for start in range(0, len(ids) - 1, decoder.capacity):
        chunk = ids[start : start + decoder.capacity]
        targets = torch.from_numpy(ids[start + 1 : start + 1 + len(chunk)].astype(np.int64))
        logits = torch.from_numpy(decoder.decode(chunk, start, all_logits=True)[: len(targets)])
        picked = logits.gather(1, targets[:, None])[:, 0]
        total += float((torch.logsumexp(logits, dim=1) - picked).double().sum())
    return total


def gguf_perplexity(decoder: Decoder, tokens: Tokens, window: int) -> Perplexity:
    ids = tokens.ids
    if len(ids) < 2:
        raise EdgeembError("perplexity needs at least 2 tokens of text")
    total, scored, scored_bytes = 0.0, 0, 0
    starts = range(0, len(ids) - 1, window)
    for start in track(starts, "perplexity (llama.cpp)", len(starts)):
        chunk = ids[start : start + window].copy()
        if len(chunk) < 2:
            continue
        if tokens.bos is not None:
            chunk[0] = tokens.bos
        total += _window_nll(decoder, chunk)
        scored += len(chunk) - 1
        scored_bytes += int(tokens.piece_bytes[start + 1 : start + len(chunk)].sum())
    return Perplexity(math.exp(total / scored), total / scored, scored, window, scored_bytes)


def _greedy(decoder: Decoder, prompt: np.ndarray, count: int) -> tuple[list[int], float]:
    """Greedy continuation: (ids, decode tokens/s). The prompt is decoded twice, so the first
    touch of the mapped weights is not counted as decode speed."""
    decoder.decode(prompt, 0, all_logits=False)
    decoder.clear()
    logits = decoder.decode(prompt, 0, all_logits=False)
    out: list[int] = []
    begin = time.perf_counter()
    for position in range(len(prompt), len(prompt) + count):
        token = int(logits[-1].argmax())
        out.append(token)
        logits = decoder.decode(np.asarray([token], np.int32), position, all_logits=False)
    return out, count / (time.perf_counter() - begin)


def greedy_agreement(a: LlamaRun, b: LlamaRun) -> int:
    """How many of `a`'s greedy tokens `b` reproduces (as text: the vocabularies may differ)
    before the two first differ."""
    text, agreed = "".join(b.greedy_pieces), 0
    for piece in a.greedy_pieces:
        if not text.startswith(piece):
            break
        text, agreed = text[len(piece) :], agreed + 1
    return agreed


def measure_gguf(
    path: Path,
    text: Tokens | None,
    prompt: Tokens,
    generate: int = 32,
    window: int = 1024,
    options: dict | None = None,
) -> LlamaRun:
    """Load `path` in llama.cpp (with `Llama` `options`, e.g. use_mmap=False), continue `prompt`
    greedily and score `text` (if given). Run it in a fresh process (`measure_ggufs`) for a peak
    RSS that is this model's alone."""
    path = Path(path)
    options = dict(options or {})
    begin = time.perf_counter()
    llm = load_llama(path, n_ctx=max(window, len(prompt.ids) + generate), n_batch=_BATCH, **options)
    load_seconds = time.perf_counter() - begin
    decoder = Decoder(llm, _BATCH)
    try:
        greedy_ids, decode_rate = _greedy(decoder, prompt.ids, generate)
        memory = memory_status()
        begin = time.perf_counter()
        ppl = gguf_perplexity(decoder, text, window) if text is not None else None
        prefill_rate = len(text.ids) / (time.perf_counter() - begin) if text is not None else None
    finally:
        decoder.close()
    greedy_text = llm.detokenize(greedy_ids).decode("utf-8", "replace")
    pieces = [llm.detokenize([i]).decode("utf-8", "replace") for i in greedy_ids]
    return LlamaRun(
        str(path),
        path.stat().st_size,
        load_seconds,
        greedy_ids,
        greedy_text,
        pieces,
        decode_rate,
        prefill_rate,
        memory.get("VmHWM", 0),
        ppl,
        memory.get("RssFile", 0),
        memory.get("RssAnon", 0),
        options,
    )


def measure_ggufs(
    paths: list[Path],
    text: str | None,
    max_tokens: int = 8192,
    prompt: str = DEFAULT_PROMPT,
    generate: int = 32,
    window: int = 1024,
    options: list[dict] | None = None,
) -> list[LlamaRun]:
    """Measure each file in its own process, one after the other, on the same token ids;
    `options[i]` are the `Llama` options of the i-th run (the same file may appear twice)."""
    if not paths:
        return []
    vocab = llama_vocabulary(Path(paths[0]))
    tokens = _tokens(vocab, text, max_tokens) if text is not None else None
    # the text the first file's tokens cover: what a file with another vocabulary scores
    covered = vocab.detokenize(tokens.ids.tolist()).decode("utf-8", "ignore") if tokens is not None else None
    first_pieces = read_gguf_header(Path(paths[0])).metadata.get(TOKENS_KEY)
    runs = []
    context = multiprocessing.get_context("spawn")
    for path, option in track(list(zip(paths, options or [{}] * len(paths))), "llama.cpp runs", len(paths)):
        same_vocabulary = read_gguf_header(Path(path)).metadata.get(TOKENS_KEY) == first_pieces
        own = vocab if same_vocabulary else llama_vocabulary(Path(path))
        text_tokens = tokens if own is vocab else (_tokens(own, covered) if covered is not None else None)
        with context.Pool(1) as pool:
            arguments = (Path(path), text_tokens, _tokens(own, prompt), generate, window, option)
            runs.append(pool.apply(measure_gguf, arguments))
    return runs


def head_input_power(path: Path, text: str, max_tokens: int = 2048, window: int = 1024) -> np.ndarray:
    """Mean square of each input of the output head over `text`: the final normalised hidden
    state, which llama.cpp returns as the per-token embedding of a causal model. For a tied
    head these are the importance weights of the table's columns (as llama.cpp's imatrix)."""
    import llama_cpp  # heavy (the compiled llama.cpp): loaded only when a file is run

    tokens = tokenize_text(path, text, max_tokens)
    llm = load_llama(path, window, _BATCH, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
    decoder = Decoder(llm, _BATCH)
    width = llm.n_embd()
    total, count = np.zeros(width), 0
    try:
        starts = range(0, len(tokens.ids), window)
        for start in track(starts, "calibrate (llama.cpp)", len(starts)):
            decoder.clear()
            chunk = tokens.ids[start : start + window]
            for offset in range(0, len(chunk), _BATCH):
                part = chunk[offset : offset + _BATCH]
                decoder.decode(part, offset, all_logits=True)
                hidden = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(llm.ctx), shape=(len(part), width))
                total += np.square(hidden, dtype=np.float64).sum(axis=0)
                count += len(part)
    finally:
        decoder.close()
    return (total / count).astype(np.float32)
