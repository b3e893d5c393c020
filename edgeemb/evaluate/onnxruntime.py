"""onnxruntime as a runtime for ONNX sentence-embedding models: sessions, inputs, an encoder, and
latency and memory probes measured in a fresh process (the ONNX exporter verifies its files with
these; `edgeemb bench` feeds its worker with them).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.export.st import trimmed_tokenizer
from edgeemb.proc import memory_status
from edgeemb.rows import unit_rows
from edgeemb.sources import SourceModel, open_model

Encode = Callable[[list[str]], np.ndarray]

_BATCH = 64
_WARMUP = 3


def sentence_model(model: str | Path | SourceModel) -> SourceModel:
    source = model if isinstance(model, SourceModel) else open_model(model)
    if source.format != "sentence-transformers":
        raise EdgeembError(
            f"{source.name} is a {source.format} model: the ONNX export takes a sentence-transformers model"
        )
    return source


@functools.lru_cache(maxsize=1)
def sentence_transformer(path: Path):
    """The loaded sentence-transformers model: its transformer to export, its tokenizer to feed the ONNX."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub
    # sentence_transformers and transformers: seconds to import, only where a model is loaded
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        return SentenceTransformer(os.fspath(path), device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EdgeembError(f"{path}: cannot load as a sentence-transformers model ({exc})") from None


def onnx_encoder(
    path: str | Path, model: str | Path | SourceModel = "minilm", *, threads: int = 1, tokenizer_json: str | None = None
) -> Encode:
    """Encode texts with an ONNX sentence model in onnxruntime, tokenised as the sentence-transformers
    model `model` tokenises them (or by `tokenizer_json`, a trimmed vocabulary's). A graph that
    outputs token states (an optimum export, say) is mean-pooled here; every output row is
    L2-normalised."""
    source = sentence_model(model)
    session = onnx_session(Path(path), threads)
    tokenize = sentence_tokenizer(source.path, tokenizer_json)

    def encode(texts: list[str]) -> np.ndarray:
        ids = tokenize(texts)
        order = np.argsort([len(row) for row in ids], kind="stable")  # similar lengths share a batch: little padding
        batches = [
            _run(session, [ids[i] for i in order[start : start + _BATCH]]) for start in range(0, len(ids), _BATCH)
        ]
        rows = np.concatenate(batches)
        out = np.empty_like(rows)
        out[order] = rows
        return out

    return encode


def compare_latency(
    paths: list[str | Path], model: str | Path | SourceModel, texts: list[str], *, threads: int = 1, rounds: int = 3
) -> list[float]:
    """p50 milliseconds per sentence of each ONNX file, measured side by side in one fresh process:
    every sentence runs on every session in turn (rotating who goes first), so load from other
    work on the machine falls on all of them alike."""
    source = sentence_model(model)
    return probe_in_child([Path(p) for p in paths], sentence_tokenizer(source.path)(texts), threads, rounds)["p50_ms"]


def sentence_tokenizer(path: Path, tokenizer_json: str | None = None) -> Callable[[list[str]], list[list[int]]]:
    """texts -> token ids with special tokens, truncated as the sentence-transformers model does
    (with `tokenizer_json`: that tokenizer's ids, a trimmed vocabulary's)."""
    st = sentence_transformer(path)
    tokenizer, longest = st[0].tokenizer, st.max_seq_length
    if tokenizer_json is not None:
        tokenizer = trimmed_tokenizer(tokenizer, tokenizer_json)
    return lambda texts: tokenizer(list(texts), truncation="longest_first", max_length=longest)["input_ids"]


def onnx_session(path: Path, threads: int):
    import onnxruntime as ort  # onnxruntime: only in processes that run a session

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, not exported as a base
        raise EdgeembError(f"{path}: onnxruntime cannot load it ({' '.join(str(exc).split())})") from None


def onnx_feed(session, ids: list[list[int]]) -> tuple[dict, np.ndarray]:
    """Padded inputs for every input the graph declares (token types are zeros), and the mask."""
    width = max(len(row) for row in ids)
    mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in ids], np.int64)
    values = {
        "input_ids": np.array([row + [0] * (width - len(row)) for row in ids], np.int64),
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(mask),
    }
    feed = {}
    for entry in session.get_inputs():
        if entry.name not in values:
            raise EdgeembError(f"the ONNX input {entry.name!r} is not one of input_ids, attention_mask, token_type_ids")
        feed[entry.name] = values[entry.name].astype(np.int32 if entry.type == "tensor(int32)" else np.int64)
    return feed, mask


def _run(session, ids: list[list[int]]) -> np.ndarray:
    feed, mask = onnx_feed(session, ids)
    out = session.run(None, feed)[0].astype(np.float32)
    if out.ndim == 3:  # token states: mean over the real tokens, as sentence-transformers pools them
        weights = mask[..., None].astype(np.float32)
        out = (out * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return unit_rows(out)


def probe_in_child(paths: list[Path], ids: list[list[int]], threads: int, rounds: int) -> dict:
    """Run `_probe` in a fresh interpreter, so that its RSS holds onnxruntime and the sessions only."""
    request = json.dumps({"paths": [os.fspath(p) for p in paths], "ids": ids, "threads": threads, "rounds": rounds})
    done = subprocess.run(
        [sys.executable, "-c", "from edgeemb.evaluate.onnxruntime import _probe; _probe()"],
        input=request,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EdgeembError(f"onnxruntime probe failed: {last}")
    return json.loads(done.stdout)


def _probe() -> None:
    """Child side of `probe_in_child`: a JSON request on stdin, the measurements on stdout."""
    import onnxruntime  # noqa: F401  (loaded before the baseline: the session is what is measured)

    request = json.load(sys.stdin)
    rss_before = memory_status()["VmRSS"]
    sessions = [onnx_session(Path(p), request["threads"]) for p in request["paths"]]
    feeds = [[onnx_feed(session, [row])[0] for row in request["ids"]] for session in sessions]
    for session, feed in zip(sessions, feeds):
        for sentence in feed[:_WARMUP]:
            session.run(None, sentence)
    times: list[list[float]] = [[] for _ in sessions]
    for number in range(request["rounds"] * len(request["ids"])):
        sentence = number % len(request["ids"])
        for k in range(len(sessions)):
            which = (k + number) % len(sessions)
            start = time.perf_counter()
            sessions[which].run(None, feeds[which][sentence])
            times[which].append(time.perf_counter() - start)
    peak = memory_status()["VmHWM"]
    json.dump(
        {"p50_ms": [1000 * float(np.median(t)) for t in times], "peak_rss": peak, "rss_before": rss_before}, sys.stdout
    )
