"""`edgeemb bench --emulate`: instruction counts under qemu that are exact (a loop of N iterations
adds N times its body), the same in every run, and measured the same way for ONNX files (an
aarch64 Python with onnxruntime) and GGUF files (the cross-built llama-bench); clear messages for
a missing tool or a CPU the installed qemu does not model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q

from edgeemb.bench.devices import load_device
from edgeemb.bench.instructions import _fake_machine, count_instructions, run_counted
from edgeemb.bench.run import bench, compare_runs
from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.results import BenchResult
from tests.formats.test_ggml import _layer_weights, _write_llama

QEMU = all(shutil.which(tool) for tool in ("qemu-aarch64", "aarch64-linux-gnu-gcc", "gcc", "unshare", "apt-get"))
NEEDS_QEMU = pytest.mark.skipif(
    not QEMU, reason="needs qemu-user, gcc-aarch64-linux-gnu, gcc and apt (.ci/run installs them)"
)
CROSS = QEMU and all(shutil.which(tool) for tool in ("aarch64-linux-gnu-g++", "cmake"))
RPI5 = load_device("rpi5")

LOOP = r"""
#include <stdlib.h>
int main(int argc, char **argv)
{
    volatile long sum = 0;
    for (long i = atol(argv[1]); i > 0; i--)
        sum += i;
    return 0;
}
"""


def test_missing_qemu_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "m.onnx").write_bytes(b"0")
    with pytest.raises(
        EdgeembError, match=r"qemu-aarch64 not found: install qemu-user \(Debian: apt-get install qemu-user\)"
    ):
        count_instructions(tmp_path / "m.onnx", RPI5, ids=[[1, 2]])


def test_the_guest_sees_the_profiles_cpu(tmp_path):
    machine = _fake_machine(tmp_path, RPI5)
    cpuinfo = (machine / "cpuinfo").read_text()
    assert cpuinfo.count("processor\t:") == RPI5.cores == 4
    assert "CPU part\t: 0xd0b" in cpuinfo and " asimddp" in cpuinfo  # Cortex-A76, with dot products
    (tmp_path / "a53").mkdir()
    assert "asimddp" not in (_fake_machine(tmp_path / "a53", load_device("rpi3")) / "cpuinfo").read_text()
    assert (machine / "sys" / "devices" / "system" / "cpu" / "possible").read_text() == "0-3\n"


@NEEDS_QEMU
def test_counts_are_exact_and_repeat(tmp_path):
    loop = tmp_path / "loop"
    (tmp_path / "loop.c").write_text(LOOP)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", "-o", str(loop), str(tmp_path / "loop.c")], check=True)
    short, again, long = (run_counted([str(loop), str(n)], RPI5) for n in (1000, 1000, 3000))
    assert short.threads == again.threads and len(short.threads) == 1
    per_iteration, remainder = divmod(long.threads[0] - short.threads[0], 2000)
    assert remainder == 0 and 2 <= per_iteration <= 8  # a load, an add, a store, a decrement and a branch, give or take
    assert short.peak_rss_bytes > 0


@NEEDS_QEMU
def test_a_cpu_qemu_does_not_model_is_named(tmp_path):
    listed = subprocess.run(
        ["qemu-aarch64", "-cpu", "help"], capture_output=True, text=True, check=False
    ).stdout.split()
    if "cortex-a710" in listed:
        pytest.skip("this qemu models the Cortex-A710")
    (tmp_path / "m.onnx").write_bytes(b"0")
    with pytest.raises(EdgeembError, match=r"qemu \S+ .*has no cortex-a710 model \(it has .*cortex-a76"):
        count_instructions(tmp_path / "m.onnx", load_device("android-high"), ids=[[1, 2]])


@NEEDS_QEMU
def test_onnx_counts_per_sentence_repeat(tiny_model, tmp_path):
    from edgeemb.export.onnx import export_onnx

    fp32 = tmp_path / "fp32.onnx"
    export_onnx(tiny_model, None, fp32)
    texts = ["a short sentence", "another one that is a little longer"]
    first, second = (bench(fp32, tokenizer=str(tiny_model), texts=texts, emulate=True) for _ in range(2))
    assert first.unit == "sentence" and first.units == 2 and first.emulated.cpu == "cortex-a76"
    assert (
        first.instructions == second.instructions > 0 and first.short_run_instructions == second.short_run_instructions
    )
    assert first.other_thread_instructions is None  # one thread: nothing left out of the count
    assert compare_runs(first, second)["instructions"] == 1.0


@pytest.mark.skipif(not CROSS, reason="needs the cross compiler, qemu-user and cmake (.ci/run installs them)")
def test_gguf_counts_per_token_repeat(tmp_path):
    big, small = tmp_path / "f32.gguf", tmp_path / "q4_0.gguf"
    embd = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)  # the writer's vocabulary is 512
    _write_llama(big, embd, Q.F32, _layer_weights(256, seed=2))
    _write_llama(small, embd, Q.Q4_0, _layer_weights(256, seed=2))
    runner = CliRunner()
    done = runner.invoke(main, ["bench", str(small), "--baseline", str(big), "--emulate", "--generate", "4", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    baseline, result = report["baseline"], report["result"]
    assert (
        result["unit"] == "generated token"
        and result["units"] == 4
        and result["emulated"]["arm_arch"] == "armv8.2-a+dotprod+fp16"
    )
    assert result["instructions"] > 0 and "other_thread_instructions" not in result
    assert result["vs_baseline"]["file_bytes"] == small.stat().st_size / big.stat().st_size
    again = count_instructions(big, RPI5, generate=4)
    assert (
        again["instructions"] == baseline["instructions"]
        and again["short_run_instructions"] == baseline["short_run_instructions"]
    )


@pytest.mark.real
@NEEDS_QEMU
def test_minilm_int4_onnx_costs_fewer_instructions_per_sentence(minilm_onnx, tmp_path):
    from edgeemb.export.onnx import compress_onnx

    _, table, fp32 = minilm_onnx
    small = compress_onnx(fp32, table, tmp_path / "int4.onnx", quantize_rest=True).path
    texts = ["The committee postponed its decision until March."]
    before, after = (bench(path, texts=texts, emulate=True) for path in (fp32, small))
    ratios = compare_runs(before, after)
    # int8 MatMuls with the A76's dot products against fp32: well under half the instructions
    # (0.458x over bench's eight sentences, docs/bench-emulated.md)
    assert ratios["instructions"] < 0.6 and ratios["file_bytes"] < 0.25 and ratios["peak_rss"] < 1
    assert os.path.getsize(small) == after.file_bytes


def test_compare_keeps_counts_and_timings_apart(tmp_path):
    run = {
        "schema": "edgeemb.bench/1",
        "fits": True,
        "artifact": "a.onnx",
        "backend": "onnxruntime",
        "file_bytes": 10,
        "host": {"machine": "x86_64"},
        "profile": None,
        "peak_rss_bytes": 100,
    }
    counted = {**run, "instructions_per_unit": 5.0}
    timed = {
        **run,
        "latency_ms": {"p50": 1.0, "p95": 1.0, "mean": 1.0, "count": 1},
        "throughput": {"value": 1.0, "unit": "sentences/s"},
    }
    results = {name: BenchResult.model_validate(data) for name, data in (("counted", counted), ("timed", timed))}
    assert (
        compare_runs(results["counted"], results["timed"]) == {}
        and compare_runs(results["timed"], results["counted"]) == {}
    )
    halved = results["counted"].model_copy(update={"instructions_per_unit": 2.5, "file_bytes": 5})
    assert compare_runs(results["counted"], halved) == {"file_bytes": 0.5, "instructions": 0.5, "peak_rss": 1.0}
    (tmp_path / "a.json").write_text(json.dumps(counted))
    (tmp_path / "b.json").write_text(json.dumps(timed))
    done = CliRunner().invoke(main, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert (
        done.exit_code == 1
        and "instruction counts (bench --emulate) and timed runs measure different things" in done.output
    )
