"""Fuzz edgeemb's readers of untrusted files: GGUF models, table safetensors and recipe YAML.

    python tools/fuzz_inputs.py --cases 10000 -o docs/fuzz

Each case is a seeded mutation of a small valid file (bit flips, bytes set to boundary values,
64-bit counts and lengths up to 2^62, truncation, duplicated or inserted runs; for tables also
edits of the JSON spec and of the arrays' names, dtypes and shapes; for recipes, edits of the YAML
text, anchors and aliases included). Every case runs in a worker process under a per-case time
limit and a 1 GiB address-space cap, and must end either accepted or refused with an
EdgeembError (the one line the CLI prints): another exception is a traceback, a timeout a hang.
Writes OUT.json (every failing case, the counts) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

KINDS = ("gguf", "table", "recipe")
_BOUNDARY = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63 - 1, 2**64 - 1]
_MEMORY_CAP = 1 << 30


def seed_gguf(folder: Path) -> bytes:
    import gguf

    path = folder / "seed.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_string("general.name", "fuzz")
    writer.add_token_list([f"t{i}" for i in range(32)])
    writer.add_token_scores([float(i) for i in range(32)])
    rows = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    writer.add_tensor(
        "token_embd.weight",
        gguf.quants.quantize(rows, gguf.GGMLQuantizationType.Q8_0),
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    writer.add_tensor("blk.0.attn_q.weight", rows[:, :32].astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def seed_tables() -> list[tuple[dict, dict]]:
    """(spec, arrays) of a table of each kind, to mutate structurally."""
    from edgeemb.formats import get_format
    from edgeemb.table import DenseTable, LowRankTable, MixedTable, QuantizedTable, TrimmedTable

    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    tables = [
        DenseTable(weight),
        QuantizedTable.quantize(weight, get_format("int4")),
        QuantizedTable.quantize(weight, get_format("Q8_0")),
        QuantizedTable.quantize(weight, get_format("pq", subspaces=8, centroids=16, train_rows=64, iterations=2)),
        LowRankTable(QuantizedTable.quantize(weight[:, :16], get_format("int8")), weight[:16, :].copy()),
        MixedTable.split(
            weight,
            (np.arange(64) % 2).astype(np.uint8),
            [DenseTable, lambda rows: QuantizedTable.quantize(rows, get_format("int4"))],
        ),
        TrimmedTable(DenseTable(weight[:40]), np.arange(40, dtype=np.int32), {"source_rows": 64}),
    ]
    return [(table.spec(), table.arrays()) for table in tables]


SEED_RECIPE = """name: fuzz
description: a recipe to mutate
steps:
  - svd: {rank: 16}
  - quantize: {format: int4, block_size: 32, zero_point: true}
evaluate: {sts: data.tsv}
export: {format: onnx, quantize_rest: true}
offload: {profiles: [ufs-3.1], cache_mb: 2}
"""
_YAML_SNIPPETS = [
    "&a [1, 2]",
    "*a",
    "!!python/object:os.system 'true'",
    "{format: pq, subspaces: '64'}",
    "block_size: 32.5",
    "zero_point: 'no'",
    "[" * 200,
    "- " * 100,
    "rank: -1",
    "rank: 1e308",
    "format: Q4_K",
    "steps: []",
    "\x00",
    "\t",
    "'",
    "a: &x [x, x, x, x, x, x, x, x]\nb: &y [*x, *x, *x, *x, *x, *x, *x, *x]\nc: [*y, *y, *y, *y, *y, *y, *y, *y]",
]


def mutate_bytes(blob: bytes, rng: random.Random) -> bytes:
    data = bytearray(blob)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(6) if data else 5  # an empty input can only grow
        at = rng.randrange(max(1, len(data)))
        if action == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif action == 1:
            data[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif action == 2:  # a boundary value as a little-endian u32/u64 (counts, lengths, offsets, dims)
            value, width = rng.choice(_BOUNDARY), rng.choice([4, 8])
            at -= at % width
            data[at : at + width] = struct.pack("<Q", value % 2**64)[:width]
        elif action == 3:
            del data[rng.randrange(len(data) + 1) :]
        elif action == 4:
            end = min(len(data), at + rng.randint(1, 64))
            data[at:at] = data[at:end] * rng.randint(1, 8)
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(data)


def mutate_table(spec: dict, arrays: dict, rng: random.Random) -> bytes:
    from safetensors.numpy import save

    spec, arrays = json.loads(json.dumps(spec)), dict(arrays)
    for _ in range(rng.randint(1, 3)):
        action = rng.randrange(6)
        if action == 0 and arrays:  # drop an array
            del arrays[rng.choice(sorted(arrays))]
        elif action == 1 and arrays:  # another shape
            name = rng.choice(sorted(arrays))
            array = arrays[name]
            arrays[name] = (
                array.reshape(-1)[: max(0, array.size - rng.randint(0, 40))].copy()
                if rng.random() < 0.5
                else np.concatenate([array, array])
            )
        elif action == 2 and arrays:  # another dtype
            name = rng.choice(sorted(arrays))
            arrays[name] = arrays[name].astype(rng.choice([np.float16, np.float32, np.int32, np.uint8, np.int64]))
        else:  # a value in the spec changed
            _mutate_json(spec, rng)
    text = json.dumps(spec)
    if rng.random() < 0.1:
        text = text[: rng.randrange(len(text) + 1)]
    return save({name: np.ascontiguousarray(a) for name, a in arrays.items()}, metadata={"edgeemb.table": text})


def _mutate_json(node, rng: random.Random) -> None:
    holders = []

    def walk(value):
        if isinstance(value, dict):
            holders.extend((value, key) for key in value)
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            holders.extend((value, index) for index in range(len(value)))
            for child in value:
                walk(child)

    walk(node)
    if not holders:
        return
    holder, key = rng.choice(holders)
    holder[key] = rng.choice(
        [None, -1, 0, 7, 2**40, 1.5, "x", "dense", "quantized", "mixed", "pq", [], {}, True, "Q4_K", "int2"]
    )


def mutate_recipe(rng: random.Random) -> bytes:
    lines = SEED_RECIPE.splitlines()
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(lines))
        action = rng.randrange(4)
        if action == 0:
            lines[at] = lines[at] + " " + rng.choice(_YAML_SNIPPETS)
        elif action == 1:
            lines[at] = lines[at].split(":")[0] + ": " + rng.choice(_YAML_SNIPPETS)
        elif action == 2:
            lines.insert(at, rng.choice(_YAML_SNIPPETS))
        else:
            lines[at] = mutate_bytes(lines[at].encode(), rng).decode("utf-8", "replace")
    return "\n".join(lines).encode()


def run_case(kind: str, path: Path) -> None:
    """What edgeemb does with the file: open it as a model, a table, or a recipe, and use it."""
    if kind == "gguf":
        from edgeemb.sources import open_model

        model = open_model(str(path))
        model.table.lookup(np.arange(min(4, model.table.shape[0])))
    elif kind == "table":
        from edgeemb.table import load_table

        table = load_table(path)
        table.lookup(np.arange(min(4, table.shape[0])))
    else:
        from edgeemb.recipe import load_recipe

        load_recipe(path)


def worker(kind: str, cases: int, seed: int, timeout: float) -> None:
    """Child: make and run `cases` cases of `kind`, one JSON line each on stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_CAP, _MEMORY_CAP))
    import edgeemb.recipe  # noqa: F401  (loaded before the first case: its import is not a case's time)
    import edgeemb.sources  # noqa: F401
    from edgeemb.errors import EdgeembError

    def expire(signum, frame):
        raise TimeoutError("case took longer than the limit")

    signal.signal(signal.SIGALRM, expire)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        gguf_seed = seed_gguf(folder) if kind == "gguf" else b""
        tables = seed_tables() if kind == "table" else []
        for number in range(cases):
            if kind == "gguf":
                blob = mutate_bytes(gguf_seed, rng)
            elif kind == "table":
                blob = (
                    mutate_table(*rng.choice(tables), rng)
                    if rng.random() < 0.7
                    else mutate_bytes(mutate_table(*rng.choice(tables), rng), rng)
                )
            else:
                blob = mutate_recipe(rng)
            path = folder / f"case.{ {'gguf': 'gguf', 'table': 'safetensors', 'recipe': 'yaml'}[kind] }"
            path.write_bytes(blob)
            outcome, detail = "accepted", ""
            started = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                run_case(kind, path)
            except EdgeembError as exc:
                outcome, detail = ("refused", str(exc)) if "\n" not in str(exc) else ("multi-line", str(exc))
            except TimeoutError as exc:
                outcome, detail = "hang", str(exc)
            except MemoryError:
                outcome, detail = "memory", "hit the address-space cap"
            except Exception as exc:  # noqa: BLE001  what the fuzzer is looking for
                outcome, detail = (
                    "traceback",
                    "".join(traceback.format_exception_only(exc)).strip() + " @ " + _where(exc),
                )
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            record = {"case": number, "outcome": outcome, "seconds": time.perf_counter() - started}
            if outcome not in ("accepted", "refused"):
                record.update(detail=detail[:500], input=blob[:2048].hex() if len(blob) <= 4096 else None)
            print(json.dumps(record), flush=True)
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
    print(json.dumps({"peak_rss_bytes": peak}), flush=True)


def _where(exc: BaseException) -> str:
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if "/edgeemb/" in frame.filename]
    frame = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000, help="cases per kind")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per case")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/fuzz"), help="writes OUT.json and OUT.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.cases, args.seed, args.timeout)
        return
    summary = {"command": " ".join(["python tools/fuzz_inputs.py", *sys.argv[1:]]), "kinds": {}}
    for kind in args.kinds:
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--cases",
                str(args.cases),
                "--seed",
                str(args.seed),
                "--timeout",
                str(args.timeout),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        cases = [r for r in records if "case" in r]
        peak = next((r["peak_rss_bytes"] for r in records if "peak_rss_bytes" in r), None)
        counts = {
            outcome: sum(r["outcome"] == outcome for r in cases)
            for outcome in ("accepted", "refused", "traceback", "multi-line", "hang", "memory")
        }
        summary["kinds"][kind] = {
            "cases": len(cases),
            "counts": counts,
            "worker_exit": done.returncode,
            "peak_rss_mb": peak and peak / 2**20,
            "slowest_case_s": max((r["seconds"] for r in cases), default=0),
            "wall_s": time.perf_counter() - started,
            "failures": [r for r in cases if r["outcome"] not in ("accepted", "refused")][:50],
            **({"worker_stderr": done.stderr[-2000:]} if done.returncode else {}),
        }
        print(kind, counts, f"peak RSS {(peak or 0) / 2**20:.0f} MB", f"worker exit {done.returncode}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(summary))
    bad = sum(
        k["counts"]["traceback"]
        + k["counts"]["multi-line"]
        + k["counts"]["hang"]
        + k["counts"]["memory"]
        + (k["worker_exit"] != 0)
        for k in summary["kinds"].values()
    )
    sys.exit(1 if bad else 0)


def render(summary: dict) -> str:
    lines = [
        "# Fuzzing edgeemb's readers",
        "",
        f"`{summary['command']}` (seeded: the same command gives the same cases).",
        "",
        "Every case must be accepted or refused with one line; "
        "a traceback, a hang (over the per-case limit) or the 1 GiB address-space cap is a failure.",
        "",
        "| input | cases | accepted | refused (one line) | tracebacks | hangs | memory cap | peak RSS | slowest case |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, k in summary["kinds"].items():
        c = k["counts"]
        lines.append(
            f"| {kind} | {k['cases']} | {c['accepted']} | {c['refused']} | {c['traceback'] + c['multi-line']} "
            f"| {c['hang']} | {c['memory']} | {k['peak_rss_mb'] or 0:.0f} MB | {k['slowest_case_s']:.2f} s |"
        )
    failures = [(kind, f) for kind, k in summary["kinds"].items() for f in k["failures"]]
    if failures:
        lines += ["", "Failures (first of each kind):", ""] + [
            f"- {kind} case {f['case']}: {f['outcome']}: {f.get('detail', '')}" for kind, f in failures
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
