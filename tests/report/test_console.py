"""report/console.py: how the commands print typed results, on results built by hand for the
cases the tiny models do not reach (a device's bench.json with means only, a run the memory cap
killed, emulated counts); the commands' everyday output is checked in tests/test_cli.py and others."""

from __future__ import annotations

from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.results import BenchResult, to_json

HOST = {
    "schema": "edgeemb.bench/1",
    "artifact": "host/model.gguf",
    "backend": "llama.cpp",
    "file_bytes": 2_000_000,
    "host": {"machine": "x86_64", "python": "3.11.7"},
    "profile": "rpi5",
    "limits": {
        "cores": {
            "asked": 4,
            "applied": 2,
            "cpus": [0, 1],
            "how": "sched_setaffinity",
            "note": "4 cores asked, this host has 2",
        },
        "memory": {"cap_mb": 512, "how": "RSS watchdog (user space, polled every 20 ms)"},
    },
    "fits": True,
    "load_s": 0.5,
    "unit": "generated token",
    "latency_ms": {"p50": 10.0, "p95": 12.0, "mean": 10.5, "count": 32},
    "prompt_ms_per_token": 2.0,
    "prompt_tokens": 64,
    "throughput": {"value": 95.2, "unit": "tokens/s"},
    "threads": 2,
    "mmap": True,
    "peak_rss_bytes": 300_000_000,
    "major_faults": 7,
}


def _compare(tmp_path, *results: dict) -> str:
    files = []
    for number, result in enumerate(results):
        files.append(tmp_path / f"{number}.json")
        files[-1].write_text(to_json(BenchResult.model_validate(result)))
    done = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["compare", *map(str, files)])
    assert done.exit_code == 0, done.output
    return done.output


def test_a_device_run_with_means_only_beside_a_host_run_gets_mean_ratios(tmp_path):
    device = {
        **HOST,
        "artifact": "model.gguf",
        "host": {"machine": "aarch64", "runner": "device"},
        "profile": "rpi5",
        "limits": {"cores": {"asked": None, "applied": 4, "how": "llama-bench -t"}},
        "load_s": None,
        "latency_ms": {"p50": None, "p95": None, "mean": 21.0, "count": 3},
        "major_faults": None,
        "measured_by": "llama-bench",
    }
    output = _compare(tmp_path, HOST, device)
    assert "p50 10.00 ms, p95 12.00 ms per generated token" in output and "mean 21.00 ms per generated token" in output
    assert "2.00x" in output  # latency by means: 21.0 / 10.5
    assert "2.00 ms per token (64 tokens)" in output and "x86_64, rpi5" in output and "aarch64, rpi5" in output
    assert (
        "model.gguf: 2 cores (sched_setaffinity); 4 cores asked, this host has 2; memory cap 512 MB by RSS watchdog"
        in output
    )
    assert "model.gguf: 4 cores (llama-bench -t)" in output


def test_a_run_the_memory_cap_killed_says_so_and_gets_no_ratios(tmp_path):
    killed = {key: HOST[key] for key in ("schema", "artifact", "backend", "file_bytes", "host", "profile", "limits")}
    killed.update(fits=False, message="does not fit in 512 MB (RSS watchdog killed it)")
    # as an onnxruntime run: no prompt, no fault count
    no_prompt = {**HOST, "prompt_ms_per_token": None, "prompt_tokens": None, "major_faults": None}
    output = _compare(tmp_path, killed, no_prompt)
    assert "does not fit in 512 MB (RSS watchdog killed it)" in output and "ratio" not in output
    assert "│ prompt " in output and "ms per token" not in output


def test_emulated_counts_side_by_side_with_their_ratio(tmp_path):
    counted = {
        "schema": "edgeemb.bench/1",
        "artifact": "fp32.onnx",
        "backend": "onnxruntime",
        "file_bytes": 4_000_000,
        "host": {"machine": "x86_64", "python": "3.11.7"},
        "profile": "rpi5",
        "fits": True,
        "emulated": {"qemu": "qemu-aarch64 version 8.2.2", "cpu": "cortex-a76", "threads": 1},
        "unit": "sentence",
        "units": 8,
        "instructions": 80_000_000,
        "instructions_per_unit": 10_000_000.0,
        "short_run_instructions": 500_000_000,
        "peak_rss_bytes": 200_000_000,
    }
    smaller = {
        **counted,
        "artifact": "int4.onnx",
        "file_bytes": 1_000_000,
        "instructions_per_unit": 4_000_000.0,
        "other_thread_instructions": [12, 15],
    }
    output = _compare(tmp_path, counted, smaller)
    assert "onnxruntime under qemu qemu-aarch64 as cortex-a76 (one thread)" in output
    assert "10.00 M (8 counted)" in output and "4.00 M (8 counted)" in output
    assert "0.40x" in output and "0.25x" in output  # instructions, file bytes
    assert "int4.onnx: other threads ran [12, 15] instructions" in output
