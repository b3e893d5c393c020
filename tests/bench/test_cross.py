"""`edgeemb cross`: clear messages when a tool is missing, and (with the cross compiler and qemu
installed, as .ci/run installs them) a real static aarch64 llama.cpp build that runs a GGUF under
qemu as a Cortex-A76 and is refused by a Cortex-A53."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q

from edgeemb.bench.cross import cross_build, smoke_test
from edgeemb.bench.devices import load_device
from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.results import to_json
from tests.formats.test_ggml import _layer_weights, _write_llama

TOOLS = all(shutil.which(tool) for tool in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64", "cmake"))


def test_missing_tools_name_the_package_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(
        EdgeembError,
        match=(
            r"aarch64-linux-gnu-gcc not found: install the cross compiler "
            r"\(Debian: apt-get install gcc-aarch64-linux-gnu"
        ),
    ):
        cross_build(load_device("rpi5"), tmp_path / "out")
    with pytest.raises(
        EdgeembError, match=r"qemu-aarch64 not found: install qemu-user \(Debian: apt-get install qemu-user\)"
    ):
        smoke_test(tmp_path / "llama-bench", "cortex-a76")


def test_bad_requests_are_refused_before_building(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EdgeembError, match="exists and is not empty; pass --force"):
        cross_build(load_device("rpi5"), out)
    with pytest.raises(EdgeembError, match="rpi5 is a Linux device; --ndk is for Android targets"):
        cross_build(load_device("rpi5"), tmp_path / "new", ndk=tmp_path)
    with pytest.raises(EdgeembError, match="not an Android NDK"):
        cross_build(load_device("android-mid"), tmp_path / "new", ndk=tmp_path)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(
    not TOOLS, reason="needs gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu, qemu-user and cmake (.ci/run installs them)"
)
def test_rpi5_build_runs_a_gguf_as_cortex_a76_and_is_refused_by_a_cortex_a53(tmp_path):
    model = tmp_path / "tiny.gguf"
    embd = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    _write_llama(model, embd, Q.Q4_0, _layer_weights(256, seed=2))  # an F16 output head: fp16 arithmetic on armv8.2-a
    runner = CliRunner()
    done = runner.invoke(
        main, ["cross", "--target", "rpi5", "-o", str(tmp_path / "rpi5"), "--smoke", str(model), "--json"]
    )
    assert done.exit_code == 0, done.output
    build = json.loads(done.output)
    assert (
        build["arm_arch"] == "armv8.2-a+dotprod+fp16" and build["smoke"]["ok"] and build["smoke"]["cpu"] == "cortex-a76"
    )
    binary = tmp_path / "rpi5" / "llama-bench"
    assert binary.read_bytes()[:4] == b"\x7fELF" and binary.read_bytes()[18] == 183  # e_machine EM_AARCH64
    records = json.loads(build["smoke"]["stdout"])  # llama-bench -o json: prompt and generation runs
    assert {record["n_prompt"] for record in records} >= {8} and all(record["avg_ts"] > 0 for record in records)
    assert json.loads((tmp_path / "rpi5" / "BUILD.json").read_text())["target"] == "rpi5"
    old = smoke_test(binary, "cortex-a53", model, built_for="armv8.2-a+dotprod+fp16")
    assert not old.ok and old.message.startswith(
        "this binary needs a newer CPU: it was built for armv8.2-a+dotprod+fp16, and cortex-a53 lacks"
    )


@pytest.mark.skipif(
    not TOOLS, reason="needs gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu, qemu-user and cmake (.ci/run installs them)"
)
def test_bundle_runs_end_to_end_under_qemu_and_compares_beside_a_host_run(tmp_path):
    import os
    import subprocess
    import tarfile

    from edgeemb.bench.run import bench

    model = tmp_path / "tiny.gguf"
    embd = np.random.default_rng(1).standard_normal((512, 256)).astype(np.float32)
    _write_llama(model, embd, Q.Q4_0, _layer_weights(256, seed=2))
    runner = CliRunner()
    out = tmp_path / "tiny-rpi5.tar.gz"
    done = runner.invoke(
        main,
        [
            "bundle",
            str(model),
            "--target",
            "rpi5",
            "-o",
            str(out),
            "--prompt-tokens",
            "8",
            "--generate",
            "4",
            "--runs",
            "1",
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["tiny-rpi5/llama-bench", "tiny-rpi5/run.sh", "tiny-rpi5/tiny.gguf"]
        tar.extractall(tmp_path / "device", filter="data")
    folder = tmp_path / "device" / "tiny-rpi5"
    env = {**os.environ, "EDGEEMB_RUNNER": "qemu-aarch64 -cpu cortex-a76", "THREADS": "1"}
    ran = subprocess.run(
        ["sh", str(folder / "run.sh")], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert ran.returncode == 0, ran.stderr
    device = json.loads((folder / "bench.json").read_text())
    assert device["schema"] == "edgeemb.bench/1" and device["profile"] == "rpi5" and device["fits"] is True
    assert device["throughput"]["value"] > 0 and device["prompt_ms_per_token"] > 0 and device["peak_rss_bytes"] > 0
    assert device["file_bytes"] == model.stat().st_size and device["threads"] == 1
    host = tmp_path / "host.json"
    host.write_text(to_json(bench(model, runs=1, prompt_tokens=8, generate=4, texts=["w1 w2 w3"])))
    shown = runner.invoke(main, ["compare", str(host), str(folder / "bench.json")])
    assert shown.exit_code == 0, shown.output
    assert "mean" in shown.output and "ratio" in shown.output and "llama-bench -t" in shown.output
    done = runner.invoke(main, ["bundle", str(model), "--target", "rpi5", "-o", str(out)])
    assert done.exit_code == 1 and "exists" in done.output
