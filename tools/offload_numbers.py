"""The offload emulator on a real model, in one run: the figures and the PNG the README quotes.

    python tools/offload_numbers.py --model gemma3-270m \
        --text ../shared/data/wikitext2/wikitext2_raw_test_joined.txt -o docs

The token stream is the first `--max-tokens` tokens of `--text`; the hot set counts token
frequencies on its second half (by characters), which the stream never sees. For the model:
- the cache-size sweep, single layout, UFS 3.1 (the PNG), with a cache of rows and with a cache
  of whole pages (as the OS page cache holds an mmapped table), and a cache of 5% of the table;
- the same 5% cache with the table split across the model's layers (`ple`, token-major) and
  stored one table per layer (`ple-layer`);
- every built-in profile at that cache, `sim` and `real` (O_DIRECT reads held to the profile
  by the user-space throttle): bytes per token and the profiles' order, side by side;
- llama.cpp with mmap on and off, for the shipped GGUF and for an edgeemb-compressed one
  (recipe `gguf-q4_0-act`, calibrated on the same second half): peak RSS, resident file pages
  and decode tokens/s, each in its own process.
Writes docs/offload-MODEL.md, .json and .png. Latencies are emulated from published flash
figures; tokens/s are measured here on a shared machine, so read them as ratios in one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeemb.export.gguf import export_gguf
from edgeemb.offload import OffloadConfig, profile_names
from edgeemb.offload.run import offload
from edgeemb.pipeline import step_context
from edgeemb.recipe import load_recipe
from edgeemb.report.plots import plot_offload
from edgeemb.results import to_dict
from edgeemb.sources import open_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--text", type=Path, required=True, help="plain text (e.g. WikiText-2 raw test)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--profile", default="ufs-3.1")
    parser.add_argument("--head-type", default="Q4_0", help="format of the separate RAM head of a tied table")
    parser.add_argument("--recipe", default="gguf-q4_0-act", help="edgeemb recipe for the compressed GGUF")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs"))
    args = parser.parse_args()

    text = args.text.read_text(encoding="utf-8")
    source = open_model(args.model)
    stem = f"offload-{Path(args.model).stem}"
    with tempfile.TemporaryDirectory(prefix="edgeemb-offload-") as work:
        work = Path(work)
        stream, calibration = work / "stream.txt", work / "calibration.txt"
        stream.write_text(text[: len(text) // 2], encoding="utf-8")
        calibration.write_text(text[len(text) // 2 :], encoding="utf-8")
        common = {"max_tokens": args.max_tokens, "head_type": args.head_type if source.tied else None}

        swept = offload(args.model, stream, OffloadConfig((args.profile,)), **common)
        sweep = to_dict(swept)
        pages = to_dict(
            offload(args.model, stream, OffloadConfig((args.profile,), cache_unit="page"), **common).offload
        )
        plot_offload(swept.offload, args.out / f"{stem}.png", args.model)
        five = int(0.05 * sweep["offload"]["table_bytes"])
        layouts = {
            layout: to_dict(
                offload(args.model, stream, OffloadConfig((args.profile,), (five,)), layout=layout, **common).offload
            )
            for layout in ("single", "ple", "ple-layer")
        }
        hot = to_dict(
            offload(
                args.model,
                stream,
                OffloadConfig((args.profile,), (five // 2,), hot_bytes=five // 2),
                calibration=calibration,
                **common,
            ).offload
        )
        modes = to_dict(
            offload(args.model, stream, OffloadConfig(tuple(profile_names()), (five,), mode="real"), **common).offload
        )

        compressed = work / f"{args.recipe}.gguf"
        recipe = load_recipe(args.recipe)
        export_gguf(source.path, recipe.apply(source.table, step_context(source, calibration)), compressed)
        runtime = {
            "shipped": to_dict(
                offload(args.model, stream, OffloadConfig((args.profile,), (five,)), runtime=True, **common)
            ),
            args.recipe: to_dict(
                offload(compressed, stream, OffloadConfig((args.profile,), (five,)), runtime=True, **common)
            ),
        }

    data = {
        "model": sweep["model"],
        "text": str(args.text),
        "profile": args.profile,
        "five_percent_bytes": five,
        "sweep": sweep["offload"],
        "page_cache_sweep": pages,
        "layouts": layouts,
        "hot_set": hot,
        "modes": modes,
        "runtime": {
            name: {"table": r["offload"]["table"], "table_bytes": r["offload"]["table_bytes"], "runs": r["runtime"]}
            for name, r in runtime.items()
        },
    }
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(render(data, args, stem))
    print((args.out / f"{stem}.md").read_text())


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def render(data: dict, args, stem: str) -> str:
    sweep, model = data["sweep"], data["model"]
    lines = [
        f"# Embedding offload to flash: {model['name']}",
        "",
        (
            "Made by `python tools/offload_numbers.py "
            f"--model {args.model} --text {args.text} --max-tokens {args.max_tokens}` "
            f"(one run). Stream: the first {sweep['tokens']} tokens of the text ({sweep['distinct_tokens']} distinct); "
            "hot set counted on its second half. Latency is added per token by flash reads, from the profile's "
            "published figures (`edgeemb/offload/profiles/`), with no overlap with compute."
        ),
        "",
        f"Table: {sweep['rows']:,} rows x {sweep['record_bytes']} B ({sweep['table']}), {_mb(sweep['table_bytes'])} "
        f"resident today. Output head: {sweep['head']['note']}"
        + (
            f"; counted as {sweep['head']['type']}, {_mb(sweep['head']['bytes'])}."
            if sweep["head"].get("type")
            else "."
        ),
        "",
        f"## Cache size against hit rate and added latency ({data['profile']}, layout single)",
        "",
        f"![cache sweep]({stem}.png)",
        "",
        "| cache budget (+ index) | share of table | resident in all | hit rate | flash reads / token "
        "| bytes / token | added mean / p99 | page cache: hit rate, added mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for point, paged in zip(sweep["points"], data["page_cache_sweep"]["points"]):
        sim = point["results"][0]["sim"]
        lines.append(
            f"| {_kb(point['cache_budget_bytes'])} | {point['cache_budget_bytes'] / sweep['table_bytes']:.3%} "
            f"| {_mb(point['resident_bytes'])} | {point['hit_rate']:.1%} | {point['reads_per_token']:.2f} "
            f"| {point['bytes_per_token']:,.0f} | {sim['mean_us']:.0f} / {sim['p99_us']:.0f} us "
            f"| {paged['hit_rate']:.1%}, {paged['results'][0]['sim']['mean_us']:.0f} us |"
        )
    lines += [
        "",
        f"## A cache of 5% of the table ({_mb(data['five_percent_bytes'])}), by layout ({data['profile']})",
        "",
        "| layout | lookups / token | cache used | hit rate | reads / token | bytes / token | added p50 / p99 / mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, report in [*data["layouts"].items(), ("single + hot set (half the budget)", data["hot_set"])]:
        point = report["points"][0]
        sim = point["results"][0]["sim"]
        lines.append(
            f"| {name} | {report['lookups_per_token']} | {_kb(point['cache_peak_bytes'] + report['hot_set']['bytes'])} "
            f"| {point['hit_rate']:.1%} | {point['reads_per_token']:.2f} | {point['bytes_per_token']:,.0f} "
            f"| {sim['p50_us']:.0f} / {sim['p99_us']:.0f} / {sim['mean_us']:.0f} us |"
        )
    modes = data["modes"]
    real = modes["real"]
    lines += [
        "",
        (
            "## Every profile, sim and real (5% cache, single layout; "
            f"real: {'O_DIRECT' if real['o_direct'] else 'page cache in play'}, "
            f"throttle {real['throttle']}; this host's own reads: {real['host_read_us']:.0f} us each)"
        ),
        "",
        "| profile | sim bytes / token | real bytes / token | sim mean / p99 | real mean / p99 | note |",
        "|---|---|---|---|---|---|",
    ]
    point = modes["points"][0]
    for r in point["results"]:
        note = "host disk slower than the profile: real shows the host" if r["host_limited"] else ""
        lines.append(
            f"| {r['profile']} | {point['bytes_per_token']:,.0f} | {r['real_bytes_per_token']:,.0f} "
            f"| {r['sim']['mean_us']:.0f} / {r['sim']['p99_us']:.0f} us "
            f"| {r['real']['mean_us']:.0f} / {r['real']['p99_us']:.0f} us | {note} |"
        )
    lines += [
        "",
        "## llama.cpp with mmap on and off (each run in its own process)",
        "",
        "| GGUF | token_embd | use_mmap | peak RSS | file pages | anonymous | decode tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in data["runtime"].items():
        for run in entry["runs"]:
            lines.append(
                f"| {name} | {entry['table']}, {_mb(entry['table_bytes'])} | {run['use_mmap']} "
                f"| {_mb(run['peak_rss_bytes'])} "
                f"| {_mb(run['rss_file_bytes'])} | {_mb(run['rss_anon_bytes'])} | {run['decode_tokens_per_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
