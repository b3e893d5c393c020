"""Offload to flash: store layout, the cache replay, the read model, real reads, and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.formats import get_format
from edgeemb.offload import (
    Layout,
    OffloadConfig,
    emulate_offload,
    load_profile,
    profile_names,
    source_rows,
    table_rows,
    write_store,
)
from edgeemb.offload.replay import INDEX_BYTES_PER_ENTRY, plan
from edgeemb.offload.store import TRAILER
from edgeemb.sources import open_model
from edgeemb.table import DenseTable, LowRankTable, QuantizedTable
from tests.conftest import data_file

PAGE = 4096


def _rows(rows: int = 1000, dim: int = 64, seed: int = 0):
    weight = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return table_rows(QuantizedTable.quantize(weight, get_format("Q8_0")))


def _file_extents(path: Path, layout: Layout, tokens: np.ndarray) -> np.ndarray:
    """Each token's units read back from the store file, concatenated in layer order."""
    data = np.fromfile(path, dtype=np.uint8)
    offsets, sizes = layout.extents(tokens)
    return np.stack(
        [np.concatenate([data[o : o + s] for o, s in zip(row_o, row_s)]) for row_o, row_s in zip(offsets, sizes)]
    )


@pytest.mark.parametrize("kind, layers", [("single", 1), ("ple", 5), ("ple-layer", 5)])
def test_store_file_holds_every_row_where_the_layout_says(tmp_path, kind, layers):
    rows = _rows(rows=1000, dim=64)  # Q8_0: 2 blocks of 34 bytes = 68-byte records
    layout = Layout(kind, 1000, rows.records.shape[1], PAGE, layers)
    write_store(tmp_path / "t.store", rows, layout)
    assert (tmp_path / "t.store").stat().st_size == layout.file_bytes + len(TRAILER)  # edgeemb's mark follows the pages
    ids = np.array([0, 1, 59, 60, 61, 999])
    np.testing.assert_array_equal(_file_extents(tmp_path / "t.store", layout, ids), rows.records[ids])
    offsets, sizes = layout.extents(np.arange(1000))
    # a 68-byte record (or slice) never straddles a page: one token costs one page (token-major)
    assert np.all(offsets // PAGE == (offsets + sizes - 1) // PAGE)


def test_records_larger_than_a_page_start_on_a_page(tmp_path):
    rows = table_rows(DenseTable(np.ones((10, 1500), np.float32)))  # 6000-byte records
    layout = Layout("single", 10, 6000, PAGE)
    offsets, _ = layout.extents(np.arange(10))
    assert np.all(offsets % PAGE == 0) and layout.file_bytes == 10 * 2 * PAGE
    write_store(tmp_path / "big.store", rows, layout)
    np.testing.assert_array_equal(_file_extents(tmp_path / "big.store", layout, np.array([3, 9])), rows.records[[3, 9]])


def test_store_refuses_to_overwrite_without_force(tmp_path):
    rows = _rows()
    layout = Layout("single", 1000, rows.records.shape[1], PAGE)
    (tmp_path / "t.store").write_text("precious")
    with pytest.raises(EdgeembError, match="already exists"):
        write_store(tmp_path / "t.store", rows, layout)
    with pytest.raises(EdgeembError, match="edgeemb did not write this file"):  # --force replaces only edgeemb's own
        write_store(tmp_path / "t.store", rows, layout, force=True)
    assert (tmp_path / "t.store").read_text() == "precious"
    write_store(tmp_path / "s.store", rows, Layout("ple", 1000, rows.records.shape[1], PAGE, 2))
    write_store(tmp_path / "s.store", rows, layout, force=True)
    assert (tmp_path / "s.store").stat().st_size == layout.file_bytes + len(TRAILER)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.store", "t.store"]  # no temporary left behind


def test_table_rows_keep_shared_parts_resident():
    weight = np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32)
    left = QuantizedTable.quantize(weight[:, :8], get_format("int8"))
    lowrank = LowRankTable(left, np.ones((8, 32), np.float32))
    stored = table_rows(lowrank)
    assert stored.records.shape[0] == 300
    assert stored.resident_bytes == 8 * 32 * 4
    assert stored.nbytes == lowrank.nbytes


def test_lru_cache_replay_matches_a_hand_count():
    # records of 100 bytes: a cache of two records and their index entries
    layout = Layout("single", 50, 100, PAGE)
    budget = 2 * (100 + INDEX_BYTES_PER_ENTRY)
    replay = plan(np.array([1, 2, 1, 3, 2, 1]), layout, budget)
    # 1 miss, 2 miss, 1 hit, 3 miss (evicts 2), 2 miss (evicts 1), 1 miss
    np.testing.assert_array_equal(replay.hits, [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(replay.bytes_read, [PAGE, PAGE, 0, PAGE, PAGE, PAGE])
    assert replay.peak_cache_bytes == budget


def test_page_cache_keeps_neighbours_and_pays_a_page_for_each():
    layout = Layout("single", 50, 1000, PAGE)  # four 1000-byte rows to a page
    tokens = np.array([0, 1, 4, 0])
    budget = PAGE + INDEX_BYTES_PER_ENTRY
    by_page = plan(tokens, layout, budget, cache_unit="page")
    by_row = plan(tokens, layout, budget, cache_unit="row")
    np.testing.assert_array_equal(by_page.hits, [0, 1, 0, 0])  # row 1 came with row 0's page; page 1 evicts page 0
    np.testing.assert_array_equal(by_row.hits, [0, 0, 0, 1])  # four rows fit: row 0 is still there
    assert by_page.peak_cache_bytes == budget
    with pytest.raises(EdgeembError, match="cache unit"):
        plan(tokens, layout, budget, cache_unit="block")


def test_ple_token_major_reads_once_per_token_layer_major_once_per_layer():
    tokens = np.array([5, 7, 5])
    token_major = plan(tokens, Layout("ple", 10000, 680, PAGE, 18), 0)
    layer_major = plan(tokens, Layout("ple-layer", 10000, 680, PAGE, 18), 0)
    np.testing.assert_array_equal(token_major.reads, [1, 1, 1])
    np.testing.assert_array_equal(token_major.bytes_read, [PAGE] * 3)
    np.testing.assert_array_equal(layer_major.reads, [18, 18, 18])  # 18 tables, pages far apart
    np.testing.assert_array_equal(layer_major.bytes_read, [18 * PAGE] * 3)
    np.testing.assert_array_equal(token_major.lookups, [18, 18, 18])


def test_read_model_is_the_documented_formula():
    ufs = load_profile("ufs-3.1")
    one_page = ufs.read_latency_us * 1e-6 + PAGE / (ufs.seq_read_mb_s * 1e6)
    assert ufs.read_seconds(1, PAGE) == pytest.approx(one_page)
    assert ufs.read_seconds(0, 0) == 0.0
    # more reads than the queue holds pay the access latency again, and never beat the IOPS rating
    many = ufs.queue_depth + 1
    access = max(2 * ufs.read_latency_us * 1e-6, many / ufs.rand_read_iops)
    assert ufs.read_seconds(many, many * PAGE) == pytest.approx(access + many * PAGE / (ufs.seq_read_mb_s * 1e6))


def test_builtin_profiles_cite_sources_and_order_from_nvme_to_microsd():
    names = profile_names()
    assert set(names) >= {"ufs-4.0", "ufs-3.1", "emmc-5.1", "microsd-a2", "nvme"}
    assert names[0] == "nvme" and names[-1] == "microsd-a2"
    for name in names:
        profile = load_profile(name)
        assert profile.sources and all(c.cite for c in profile.sources)


def test_hot_set_serves_first_occurrences():
    rows = _rows()
    layout = Layout("single", 1000, rows.records.shape[1], PAGE)
    tokens = np.array([4, 4, 9, 4, 9, 300])
    config = OffloadConfig(
        ("ufs-3.1",), cache_bytes=(0,), hot_bytes=2 * (rows.records.shape[1] + INDEX_BYTES_PER_ENTRY)
    )
    report = emulate_offload(rows, layout, tokens, config, calibration=np.array([9, 4, 4, 9, 4, 1]))
    assert report.hot_set.tokens == 2
    # only token 300, not in the hot set, is read
    assert report.points[0].hit_rate == pytest.approx(5 / 6)
    assert report.points[0].bytes_per_token == pytest.approx(PAGE / 6)


def test_sim_and_real_read_the_same_bytes_and_order_the_profiles_alike(tmp_path):
    rows = _rows(rows=20000, dim=256)
    layout = Layout("single", 20000, rows.records.shape[1], PAGE)
    write_store(tmp_path / "t.store", rows, layout)
    tokens = np.random.default_rng(2).integers(0, 20000, 200)
    config = OffloadConfig(("nvme", "emmc-5.1", "microsd-a2"), cache_bytes=(0, 20000), mode="real")
    report = emulate_offload(rows, layout, tokens, config, store=tmp_path / "t.store")
    assert report.real.host_reads > 0
    for point in report.points:
        assert point.bytes_per_token > 0
        sim = [r.sim.mean_us for r in point.results]
        real = [r.real.mean_us for r in point.results]
        assert all(r.real_bytes_per_token == point.bytes_per_token for r in point.results)  # exactly
        assert sim == sorted(sim)  # nvme < eMMC < microSD
        assert real[0] < real[2]  # nvme < microSD when read (eMMC may tie with a slow host disk)
        # held to the profile, a real read never beats its model by more than timer noise
        assert all(r.real.mean_us >= 0.95 * r.sim.mean_us for r in point.results)


def test_bad_input_gets_a_clear_error(tmp_path):
    rows = _rows()
    layout = Layout("single", 1000, rows.records.shape[1], PAGE)
    with pytest.raises(EdgeembError, match="larger than the table"):
        emulate_offload(rows, layout, np.array([1, 2]), OffloadConfig(cache_bytes=(rows.records.nbytes + 1,)))
    with pytest.raises(EdgeembError, match="unknown flash profile 'ufs-9'"):
        emulate_offload(rows, layout, np.array([1, 2]), OffloadConfig(profiles=("ufs-9",), cache_bytes=(0,)))
    with pytest.raises(EdgeembError, match="token stream is empty"):
        emulate_offload(rows, layout, np.array([], dtype=np.int64), OffloadConfig(cache_bytes=(0,)))
    with pytest.raises(EdgeembError, match="calibration"):
        emulate_offload(rows, layout, np.array([1]), OffloadConfig(cache_bytes=(0,), hot_bytes=10_000))
    with pytest.raises(EdgeembError, match="per-layer lookups need --layout ple"):
        Layout("single", 1000, 68, PAGE, 4)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\npage_size: -1\n")
    with pytest.raises(EdgeembError, match="not a valid flash profile"):
        load_profile(broken)


def test_cli_offload_tiny_model_json_and_errors(tiny_model, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the water was long and the people made a way over the time " * 20)
    result = CliRunner().invoke(
        main,
        ["offload", str(tiny_model), "--text", str(text), "-p", "all", "--json", "--plot", str(tmp_path / "o.png")],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["offload"]
    assert report["record_bytes"] == 64 * 4  # the tiny model's fp32 rows
    assert report["head"]["tied"] is False and report["head"]["bytes"] == 0
    assert [r["profile"] for r in report["points"][0]["results"]] == profile_names()
    hit_rates = [p["hit_rate"] for p in report["points"]]
    assert hit_rates[0] == 0.0 and hit_rates == sorted(hit_rates) and hit_rates[-1] > 0.5
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"

    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    for args, message in [
        (["--text", str(empty)], "empty"),
        (["--text", str(text), "-p", "floppy"], "unknown flash profile 'floppy'"),
        (["--text", str(text), "--cache-mb", "1"], "larger than the table"),
        (["--text", str(text), "--head-type", "Q4_0"], "no output head tied"),
        (["--text", str(text), "--plot", str(tmp_path / "o.png")], "already exists"),
    ]:
        result = CliRunner().invoke(main, ["offload", str(tiny_model), *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_cache_that_holds_less_than_its_budget_says_why(tiny_model, tmp_path):
    # #19 problem 6: `--cache-mb 0.1` silently became a 14 KiB cache (the cache column shows what it holds).
    text = tmp_path / "text.txt"
    text.write_text("the water was long and the people made a way over the time " * 20)
    result = CliRunner().invoke(
        main,
        ["offload", str(tiny_model), "--text", str(text), "--json"]
        + [option for mb in ("0.01", "0.002", "0.0001", "0") for option in ("--cache-mb", mb)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["offload"]
    row = report["record_bytes"] + INDEX_BYTES_PER_ENTRY  # 256 + 16: a row and its index entry
    notes = {point["cache_budget_bytes"]: (point["cache_peak_bytes"], point.get("note")) for point in report["points"]}
    peak, note = notes[10_000]  # more than the stream reads: capped by what it reads
    assert peak == report["distinct_tokens"] * row < 10_000
    assert (
        note == f"a budget of 10,000 bytes holds at most {peak:,}: all the stream reads; a longer text fills more of it"
    )
    rounded = f"a budget of 2,000 bytes holds at most {7 * row:,}: whole rows of {row} bytes (index entry included)"
    assert notes[2000] == (7 * row, rounded)
    small = f"a budget of 100 bytes holds nothing: less than one row of {row} bytes (index entry included)"
    assert notes[100] == (0, small)
    assert notes[0] == (0, None)
    printed = CliRunner().invoke(
        main, ["offload", str(tiny_model), "--text", str(text), "--cache-mb", "0.002"], env={"COLUMNS": "300"}
    )
    assert f"note: {rounded}" in printed.stderr


def test_cli_model_without_a_tokenizer(tiny_model, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model, bare)
    for file in bare.rglob("*"):
        if file.name.startswith(("tokenizer", "vocab", "special_tokens")):
            file.unlink()
    text = tmp_path / "t.txt"
    text.write_text("the water")
    result = CliRunner().invoke(main, ["offload", str(bare), "--text", str(text)])
    assert result.exit_code != 0 and "no tokenizer" in result.output


@pytest.mark.real
def test_gemma_table_streams_from_flash_with_a_cache_under_five_percent(tmp_path):
    """The issue's case: Gemma 3 270M, a 512-token WikiText-2 stream, UFS 3.1, single and PLE."""
    from edgeemb.offload.run import offload

    wiki = data_file("wikitext2", "wikitext2_raw_test_joined.txt")
    source = open_model("gemma3-270m")
    stored = source_rows(source)
    assert stored.describe == "Q8_0" and stored.records.shape == (262144, 680)  # the GGUF's own bytes
    budget = int(0.05 * stored.nbytes)
    for layout in ("single", "ple"):
        result = offload(
            "gemma3-270m", wiki, OffloadConfig(("ufs-3.1",), cache_bytes=(budget,)), layout=layout, head_type="Q4_0"
        )
        report = result.offload
        point = report.points[0]
        assert report.layout.layers == (18 if layout == "ple" else 1)
        assert report.tokens == 512 and point.cache_peak_bytes <= budget
        assert 0.5 < point.hit_rate < 1  # repeats hit; first occurrences must come from flash
        assert point.reads_per_token == pytest.approx(1 - point.hit_rate, abs=0.02 if layout == "ple" else 1e-9)
        assert 0 < point.results[0].sim.p99_us < 1000
        # a tied table keeps a head in RAM: a Q4_0 head is about 53% of the Q8_0 table
        assert report.head.bytes == pytest.approx(0.53 * stored.nbytes, rel=0.01)


@pytest.mark.real
def test_smollm2_mmap_on_and_off_in_llama_cpp():
    from edgeemb.offload.run import offload

    wiki = data_file("wikitext2", "wikitext2_raw_test_joined.txt")
    result = offload("smollm2-135m", wiki, OffloadConfig(("ufs-3.1",), cache_bytes=(0,)), max_tokens=64, runtime=True)
    mapped, loaded = result.runtime
    assert (mapped.use_mmap, loaded.use_mmap) == (True, False)
    # mmap leaves the weights as file pages; without it they are copied into anonymous memory
    assert mapped.rss_file_bytes > loaded.rss_file_bytes + 50e6
    assert loaded.rss_anon_bytes > mapped.rss_anon_bytes + 50e6
    assert mapped.decode_tokens_per_s > 0 and loaded.decode_tokens_per_s > 0


def test_o_direct_is_used_on_this_filesystem(tmp_path):
    probe = tmp_path / "probe"
    probe.write_bytes(b"\0" * PAGE)
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        pytest.skip("this filesystem does not support O_DIRECT")
    rows = _rows()
    layout = Layout("single", 1000, rows.records.shape[1], PAGE)
    write_store(tmp_path / "t.store", rows, layout)
    report = emulate_offload(
        rows, layout, np.array([1, 2, 3]), OffloadConfig(cache_bytes=(0,), mode="real"), store=tmp_path / "t.store"
    )
    assert report.real.o_direct is True and report.real.page_cache is False


def test_offload_of_an_output_folder_streams_its_compressed_rows(tiny_model, tmp_path):
    from edgeemb.offload.run import offload
    from edgeemb.pipeline import compress

    compress(str(tiny_model), "int8", tmp_path / "out")
    text = tmp_path / "t.txt"
    text.write_text("the water was long and the people made a way " * 10)
    result = offload(tmp_path / "out", text, OffloadConfig(cache_bytes=(0,)))
    report = result.offload
    assert result.source == str(tmp_path / "out")
    assert report.record_bytes == 64 + 2  # int8 codes and an fp16 scale per row, not the fp32 source's 256
    assert report.table.startswith("int8")
    with pytest.raises(EdgeembError, match="needs a GGUF model"):
        offload(tmp_path / "out", text, OffloadConfig(cache_bytes=(0,)), runtime=True)


def test_cli_offload_of_a_device_recipe_output_takes_its_plan_unless_told_otherwise(tiny_model, tmp_path):
    from edgeemb.pipeline import compress
    from edgeemb.recipe import parse_recipe

    recipe = parse_recipe(
        {"name": "tiny-device", "steps": ["quantize"], "offload": {"profiles": ["emmc-5.1"], "cache_mb": 0.002}}
    )
    compress(str(tiny_model), recipe, tmp_path / "out")
    text = tmp_path / "t.txt"
    text.write_text("the water was long and the people made a way " * 10)

    def run(*options):
        result = CliRunner().invoke(main, ["offload", str(tmp_path / "out"), "--text", str(text), "--json", *options])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["offload"]["points"]

    planned = run()
    assert [p["cache_budget_bytes"] for p in planned] == [2000]
    assert [r["profile"] for r in planned[0]["results"]] == ["emmc-5.1"]
    told = run("-p", "nvme", "--cache-mb", "0.004")
    assert [p["cache_budget_bytes"] for p in told] == [4000] and told[0]["results"][0]["profile"] == "nvme"
