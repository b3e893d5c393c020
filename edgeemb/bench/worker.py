"""The measuring side of `edgeemb bench`, run as `python -m edgeemb.bench.worker` in a process of
its own (pinned and capped by `limits.run_limited`): a JSON request on stdin (texts come already
tokenised: a tokenizer is not part of what is measured), the measurements as JSON on stdout. Peak
RSS is this process's VmHWM: the runtime, the model and the interpreter.

- onnxruntime: a sentence model; latency per sentence, one sentence per call.
- llama.cpp: a GGUF causal LM; prompt processing per token (one batch), and generation per token
  (greedy, one token per call).
- numpy: an edgeemb output folder's table; latency per lookup of a batch of random ids.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from edgeemb.bench.limits import enter_limits
from edgeemb.proc import memory_status


def _latency(seconds: list[float]) -> dict:
    ms = 1000 * np.asarray(seconds)
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "mean": float(ms.mean()),
        "count": len(ms),
    }


def _onnx(request: dict) -> dict:
    # per backend, here: whatever this process imports is part of the peak RSS it measures
    from edgeemb.evaluate.onnxruntime import onnx_feed, onnx_session

    path = Path(request["artifact"])
    threads = len(os.sched_getaffinity(0))
    begin = time.perf_counter()
    session = onnx_session(path, threads)
    load = time.perf_counter() - begin
    feeds = [onnx_feed(session, [ids])[0] for ids in request["ids"]]
    session.run(None, feeds[0])  # warm-up: first-run allocations are not latency
    times = []
    for _ in range(request["runs"]):
        for feed in feeds:
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    latency = _latency(times)
    return {
        "load_s": load,
        "unit": "sentence",
        "latency_ms": latency,
        "throughput": {"value": len(times) / sum(times), "unit": "sentences/s"},
        "threads": threads,
    }


def _gguf(request: dict) -> dict:
    # per backend, here: whatever this process imports is part of the peak RSS it measures
    from edgeemb.evaluate.llamacpp import Decoder, load_llama

    path = Path(request["artifact"])
    prompt = np.asarray(request["ids"], np.int32)
    generate = request["generate"]
    begin = time.perf_counter()
    llm = load_llama(path, n_ctx=len(prompt) + generate + 1, n_batch=max(len(prompt), 1), use_mmap=request["mmap"])
    load = time.perf_counter() - begin
    decoder = Decoder(llm, max(len(prompt), 1))
    try:
        decoder.decode(prompt, 0, all_logits=False)  # warm-up: pages the weights in
        prompt_times, token_times = [], []
        for _ in range(request["runs"]):
            decoder.clear()
            start = time.perf_counter()
            logits = decoder.decode(prompt, 0, all_logits=False)
            prompt_times.append((time.perf_counter() - start) / len(prompt))
            for position in range(len(prompt), len(prompt) + generate):
                token = np.asarray([int(logits[-1].argmax())], np.int32)
                start = time.perf_counter()
                logits = decoder.decode(token, position, all_logits=False)
                token_times.append(time.perf_counter() - start)
    finally:
        decoder.close()
    latency = _latency(token_times)
    return {
        "load_s": load,
        "unit": "generated token",
        "latency_ms": latency,
        "prompt_ms_per_token": 1000 * float(np.median(prompt_times)),
        "prompt_tokens": len(prompt),
        "throughput": {"value": len(token_times) / sum(token_times), "unit": "tokens/s"},
        "threads": len(os.sched_getaffinity(0)),
        "mmap": request["mmap"],
    }


def _table(request: dict) -> dict:
    # per backend, here: whatever this process imports is part of the peak RSS it measures
    from edgeemb.artifact import load_artifact

    begin = time.perf_counter()
    table = load_artifact(Path(request["artifact"])).table
    load = time.perf_counter() - begin
    rng = np.random.default_rng(0)
    batch = request["batch"]
    ids = [rng.integers(0, table.shape[0], batch) for _ in range(8)]
    table.lookup(ids[0])  # warm-up (compiles a lookup kernel on first use)
    times = []
    for number in range(request["runs"] * 20):
        start = time.perf_counter()
        table.lookup(ids[number % len(ids)])
        times.append(time.perf_counter() - start)
    latency = _latency(times)
    return {
        "load_s": load,
        "unit": f"lookup of {batch} rows",
        "latency_ms": latency,
        "throughput": {"value": batch * len(times) / sum(times), "unit": "rows/s"},
        "threads": 1,
    }


MEASURE = {"onnxruntime": _onnx, "llama.cpp": _gguf, "numpy": _table}


def main() -> None:
    request = json.load(sys.stdin)
    enter_limits(request["limits"])
    rss_before = memory_status()["VmRSS"]
    result = MEASURE[request["backend"]](request)
    memory = memory_status()
    result.update(
        peak_rss_bytes=memory["VmHWM"],
        interpreter_rss_bytes=rss_before,
        # after the run: pages of mapped files (an mmapped model) and anonymous memory (buffers, caches)
        rss_file_bytes=memory["RssFile"],
        rss_anon_bytes=memory["RssAnon"],
        # pages read from storage: a memory cap smaller than a mapped model makes them climb
        major_faults=resource.getrusage(resource.RUSAGE_SELF).ru_majflt,
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
