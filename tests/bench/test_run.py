"""`edgeemb bench`: device profiles, the limits applied on this host (pinned cores, a memory cap
by cgroup or watchdog, "does not fit"), and each runtime's measurements on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q

from edgeemb.artifact import write_artifact
from edgeemb.bench.devices import device_names, load_device
from edgeemb.bench.limits import memory_cgroups_available
from edgeemb.bench.run import bench, compare_runs
from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.table import DenseTable, QuantizedTable
from tests.formats.test_ggml import _layer_weights, _write_llama

CGROUPS = memory_cgroups_available()


def _profile(tmp_path: Path, cores: int, memory_cap_mb: int) -> Path:
    data = load_device("rpi4").model_dump()
    data.update(name="test-device", cores=cores, memory_cap_mb=memory_cap_mb)
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    return path


def _table_artifact(folder: Path, rows: int, dim: int = 256, quantized: bool = False) -> Path:
    weight = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    table = QuantizedTable.quantize(weight, get_format("int4")) if quantized else DenseTable(weight)
    write_artifact(folder, table, {"model": "random"}, {}, "", force=False)
    return folder


def test_builtin_profiles_load_with_sources_and_a_flash_profile():
    names = device_names()
    assert {"rpi-zero2", "rpi3", "rpi4", "rpi5", "android-arm64", "android-mid", "android-high"} <= set(names)
    for name in names:
        device = load_device(name)
        assert device.cores >= 1 and 0 < device.memory_cap_mb < device.memory_mb
        assert device.sources and device.qemu_cpu.startswith("cortex-")


def test_bad_profiles_are_clear(tmp_path):
    with pytest.raises(EdgeembError, match="unknown device profile 'pi9'"):
        load_device("pi9")
    data = load_device("rpi4").model_dump()
    data["flash"] = "floppy"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    with pytest.raises(EdgeembError, match="not a valid device profile.*unknown flash profile 'floppy'"):
        load_device(path)


def test_numpy_lookup_bench_pins_the_cores_it_is_given(tmp_path):
    artifact = _table_artifact(tmp_path / "int4", 2000, quantized=True)
    result = bench(artifact, profile=load_device(_profile(tmp_path, cores=1, memory_cap_mb=2000)), runs=1, batch=256)
    assert result.fits and result.backend == "numpy" and result.unit == "lookup of 256 rows"
    cores = result.limits.cores
    assert (cores.asked, cores.applied, cores.how, cores.note) == (1, 1, "sched_setaffinity", None)
    assert len(cores.cpus) == 1
    assert result.latency_ms.count == 20 and 0 < result.latency_ms.p50 <= result.latency_ms.p95
    assert result.throughput.value > 0 and result.peak_rss_bytes > result.interpreter_rss_bytes


@pytest.mark.parametrize(("how", "cap"), [("watchdog", 300), *([("cgroup", 100)] if CGROUPS else [])])
def test_a_model_over_the_memory_cap_does_not_fit_and_one_under_it_does(tmp_path, how, cap):
    """A 200 MB fp32 table is killed by the cap and reported, not raised; the same table as int4
    (28 MB) fits under the same cap. The watchdog caps RSS, shared libraries included (fp32 peaks
    near 440 MB while it loads, int4 near 190 MB with numpy and the compiled lookup); a cgroup caps
    the memory charged to the run, and reclaims the file pages it read before it kills (fp32 needs
    its table in memory while it loads; int4 peaks near 85 MB), so each gets a cap between its two."""
    profile = load_device(_profile(tmp_path, cores=1, memory_cap_mb=cap))
    big = bench(_table_artifact(tmp_path / "fp32", 200_000), profile=profile, runs=1, batch=256, memory_limit=how)
    assert big.fits is False and big.message.startswith(f"does not fit in {cap} MB")
    assert big.limits.memory.cap_mb == cap
    assert ("cgroup" in big.limits.memory.how) == (how == "cgroup")
    small = bench(
        _table_artifact(tmp_path / "int4", 200_000, quantized=True),
        profile=profile,
        runs=1,
        batch=256,
        memory_limit=how,
    )
    assert small.fits is True
    assert (small.charged_peak_bytes if how == "cgroup" else small.peak_rss_bytes) <= cap * 2**20
    assert compare_runs(big, small) == {}  # no ratios against a run that did not fit


def test_onnx_bench_measures_sentences_and_compares(tiny_model, tmp_path):
    from edgeemb.export.onnx import export_onnx

    fp32 = tmp_path / "fp32.onnx"
    export_onnx(tiny_model, None, fp32)
    first = bench(fp32, tokenizer=str(tiny_model), runs=2, texts=["a short sentence", "another one"])
    second = bench(fp32, tokenizer=str(tiny_model), runs=2, texts=["a short sentence", "another one"])
    assert first.fits and first.unit == "sentence" and first.latency_ms.count == 4
    cores = first.limits.cores
    assert (cores.asked, cores.applied, cores.how, cores.note) == (None, first.threads, "sched_setaffinity", None)
    assert (first.limits.memory, first.limits.cpu_quota, first.limits.reads) == (None, None, None)
    ratios = compare_runs(first, second)
    assert ratios["file_bytes"] == 1.0 and ratios["latency_p50"] > 0


def test_gguf_bench_measures_prompt_and_generation(tmp_path):
    path = tmp_path / "tiny.gguf"
    embd = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    _write_llama(path, embd, Q.F32, _layer_weights(256, seed=2))
    result = bench(path, runs=1, prompt_tokens=16, generate=8, texts=["w1 w2 w3"])
    assert result.fits and result.backend == "llama.cpp" and result.unit == "generated token"
    assert result.latency_ms.count == 8 and result.prompt_tokens == 16 and result.prompt_ms_per_token > 0
    no_mmap = bench(path, runs=1, prompt_tokens=16, generate=8, texts=["w1 w2 w3"], mmap=False)
    assert no_mmap.mmap is False and result.mmap is True


def test_cli_bench_json_and_errors(tmp_path):
    artifact = _table_artifact(tmp_path / "t", 500)
    runner = CliRunner()
    done = runner.invoke(main, ["bench", str(artifact), "--runs", "1", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["schema"] == "edgeemb.bench/1"
    done = runner.invoke(main, ["bench", str(artifact), "--profile", "pi9"])
    assert done.exit_code == 1 and "unknown device profile 'pi9'" in done.output
    stray = tmp_path / "model.bin"
    stray.write_bytes(b"0")
    done = runner.invoke(main, ["bench", str(stray)])
    assert done.exit_code == 1 and "cannot tell its runtime" in done.output


# A worker that enters its limits, then times what it is told to do: read a file or spin the CPU.
_TIMER = """
import json, os, sys, time
from edgeemb.bench.limits import enter_limits
request = json.load(sys.stdin)
enter_limits(request["limits"])
start, cpu = time.perf_counter(), time.process_time()
if request["task"] == "read":
    with open(request["path"], "rb") as file:
        while file.read(1 << 20):
            pass
else:
    while time.process_time() - cpu < 0.3:
        pass
print(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}))
"""


@pytest.mark.skipif(not CGROUPS, reason="needs root and cgroups")
def test_flash_throttle_and_cpu_quota_slow_the_run_by_cgroup(tmp_path):
    import sys

    from edgeemb.bench.limits import ReadThrottle, block_device, evict_page_cache, run_limited

    data = tmp_path / "model.bin"
    data.write_bytes(np.random.default_rng(0).bytes(6 * 2**20))
    device = block_device(data)
    if device is None:
        pytest.skip("the test folder is on no block device")
    evict_page_cache(data)
    run = run_limited(
        [sys.executable, "-c", _TIMER],
        {"task": "read", "path": str(data)},
        read_throttle=ReadThrottle(device, 3 * 2**20, 200),
    )
    assert run.returncode == 0, run.stderr
    assert run.limits["reads"]["how"].startswith("cgroup v") and run.limits["reads"]["device"] == device
    assert json.loads(run.stdout)["wall"] > 1.5  # 6 MiB at 3 MiB/s: two seconds, less what the first tick lets through
    run = run_limited([sys.executable, "-c", _TIMER], {"task": "spin"}, cores=1, cpu_quota=0.25)
    assert run.returncode == 0, run.stderr
    assert run.limits["cpu_quota"]["how"].startswith("cgroup v")
    spun = json.loads(run.stdout)
    assert spun["wall"] > 2.5 * spun["cpu"]  # a quarter of each 100 ms period: ~4x the CPU time


def test_flash_needs_a_profile_and_a_quota_is_a_share(tmp_path):
    artifact = _table_artifact(tmp_path / "t", 100)
    with pytest.raises(EdgeembError, match="give --profile"):
        bench(artifact, runs=1, flash=True)
    with pytest.raises(EdgeembError, match=r"CPU quota is a share of each core's time, in \(0, 1\]; got 1.5"):
        bench(artifact, runs=1, cpu_quota=1.5)
    with pytest.raises(EdgeembError, match="an emulated run counts instructions"):
        bench(artifact, runs=1, cpu_quota=0.5, emulate=True)
