"""Similarities beside cosine on MiniLM: STS-B dev and Cranfield, original vs two compressed tables.

    python tools/similarity_numbers.py --data ../shared/data -o docs/similarity

MiniLM (catalog `minilm`) compressed with `int4` and `minilm-pq` by `edgeemb.pipeline.compress`
into a temporary folder, each evaluated on STS-B dev (Spearman x100) and Cranfield (nDCG@10,
recall@10) with every similarity in `edgeemb.evaluate.similarity`: cosine, centered, whitened
(both fitted on the texts evaluated: STS-B dev's sentences, Cranfield's documents) and csls
(k = 10). The original model's figures are the same in both reports (its texts encoded once, the
encoder memoized across the two compressions); the tool checks they agree.

Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from report_files import write_report

from edgeemb.evaluate.similarity import SIMILARITIES
from edgeemb.pipeline import EvaluationData, compress
from edgeemb.results import Quality, to_dict

MODEL = "minilm"
RECIPES = ("int4", "minilm-pq")
COMMAND = "python tools/similarity_numbers.py --data ../shared/data -o docs/similarity"
METRICS = (
    ("sts", "STS-B dev Spearman x100", 2),
    ("ndcg_at_10", "Cranfield nDCG@10", 4),
    ("recall_at_10", "Cranfield recall@10", 4),
)


def by_similarity(quality: Quality, side: str) -> dict:
    """STS Spearman, nDCG@10 and recall@10 of one side (original or compressed), per similarity."""
    sts, retrieval = quality.sts, quality.retrieval
    assert sts is not None and retrieval is not None and sts.similarities and retrieval.similarities
    figures = {
        "cosine": {"sts": getattr(sts, side), **to_dict(getattr(retrieval, side))},
    }
    for name in SIMILARITIES[1:]:
        figures[name] = {
            "sts": getattr(sts.similarities[name], side),
            **to_dict(getattr(retrieval.similarities[name], side)),
        }
    return figures


def measure(data: Path, threads: int) -> dict:
    import torch  # heavy: the sentence model runs in it; imported here to bound its threads first

    torch.set_num_threads(threads)
    started = time.time()
    evaluation = EvaluationData(
        sts=data / "stsb" / "stsb_en_dev.tsv",
        beir=data / "cranfield_beir",
        similarities=SIMILARITIES,
        csls_k=10,
    )
    tables: dict[str, dict] = {}
    original: dict | None = None
    with tempfile.TemporaryDirectory() as work:
        for recipe in RECIPES:
            step = time.time()
            report = compress(MODEL, recipe, Path(work) / recipe, data=evaluation).report
            quality = report.quality
            sts, retrieval, drift = quality.sts, quality.retrieval, quality.drift
            assert sts is not None and retrieval is not None and drift is not None
            assert sts.similarities is not None and retrieval.similarities is not None
            measured = by_similarity(quality, "original")
            if original is not None and measured != original:
                raise SystemExit("the original model's figures differ between the two compressions")
            original = measured
            tables[recipe] = {
                "storage": report.table.storage,
                "table_bytes": report.table.bytes,
                "ratio_vs_fp32": report.table.ratio_vs_fp32,
                "sentence_cosine_mean": drift.mean_cosine,
                "figures": by_similarity(quality, "compressed"),
                "seconds": time.time() - step,
            }
            sts_fit, beir_fit = sts.similarities["whitened"].fit, retrieval.similarities["whitened"].fit
            assert sts_fit is not None and beir_fit is not None
            data_facts = {
                "sts": {"data": sts.data, "pairs": sts.pairs, "fit_texts": sts_fit.texts},
                "retrieval": {
                    "data": str(evaluation.beir),
                    "queries": retrieval.original.queries,
                    "fit_texts": beir_fit.texts,
                },
            }
    return {
        "command": COMMAND,
        "model": MODEL,
        **data_facts,
        "csls_k": evaluation.csls_k,
        "original": original,
        "tables": tables,
        "threads": threads,
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "seconds": time.time() - started,
    }


def render(result: dict) -> str:
    tables = result["tables"]
    names = list(tables)
    lines = [
        "# Similarities beside cosine",
        "",
        "`edgeemb compress` and `edgeemb evaluate` score STS and retrieval with cosine, the headline figure "
        "`compare` and `sweep` read, and with each `--similarity` asked for beside it, for the original and the "
        "compressed model (report.json `quality.sts.similarities`, `quality.retrieval.similarities`; report.md "
        "and the console print a row each):",
        "",
        "- `cosine`: the unit rows' dot product.",
        "- `centered`: the fit set's mean subtracted first (a direction every embedding shares no longer "
        "makes every pair look alike).",
        "- `whitened`: the fit set's mean subtracted and its covariance made the identity (eigendecomposition, "
        "W = U diag(1/sqrt(λ + ε))), then unit rows. It needs more distinct fit texts than the embedding has "
        "dimensions (385 for MiniLM), and says so in one line before encoding.",
        "- `csls`: 2 cos(q, d) − r(q) − r(d), r being the mean cosine to the k nearest on the other side "
        "(`--csls-k`, default 10): a hub, near everything, pays for it.",
        "",
        "The fit set is the evaluated texts (STS: the file's distinct sentences; retrieval: the corpus) or "
        "`--fit-text FILE`'s lines; the report records which and how many.",
        "",
        f"MiniLM (all-MiniLM-L6-v2, catalog `{result['model']}`): STS-B dev ({result['sts']['pairs']} pairs) and "
        f"Cranfield ({result['retrieval']['queries']} queries) scored with each similarity, for the original "
        "table and two compressed ones:",
        "",
        *(
            f"- {name}: {table['storage']}, {table['table_bytes'] / 1e6:.2f} MB ({table['ratio_vs_fp32']:.1f}x "
            f"smaller than fp32); sentence cosine to the original {table['sentence_cosine_mean']:.4f}"
            for name, table in tables.items()
        ),
        "",
        f"centered and whitened fit on the texts evaluated (STS-B dev: its {result['sts']['fit_texts']} distinct "
        f"sentences; Cranfield: its {result['retrieval']['fit_texts']} documents); csls takes k = "
        f"{result['csls_k']} neighbours on the other side (STS: first vs second sentences; Cranfield: "
        "queries vs documents).",
        "",
    ]
    for metric, label, digits in METRICS:
        lines += [
            f"{label}:",
            "",
            "| similarity | original | vs cosine | " + " | ".join(f"{name} | change" for name in names) + " |",
            "|---|---|---|" + "---|---|" * len(names),
        ]
        cosine = result["original"]["cosine"][metric]
        for similarity, figures in result["original"].items():
            before = figures[metric]
            cells = [f"{before:.{digits}f}", f"{before - cosine:+.{digits}f}"]
            for name in names:
                after = tables[name]["figures"][similarity][metric]
                cells += [f"{after:.{digits}f}", f"{after - before:+.{digits}f}"]
            lines.append(f"| {similarity} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["In short (from the tables above):", ""]
    for metric, label, digits in METRICS:
        original = {name: figures[metric] for name, figures in result["original"].items()}
        best = max(original, key=original.__getitem__)
        changes = ", ".join(
            f"{name} {min(table['figures'][s][metric] - original[s] for s in original):+.{digits}f} to "
            f"{max(table['figures'][s][metric] - original[s] for s in original):+.{digits}f}"
            for name, table in tables.items()
        )
        lines.append(
            f"- {label}: highest on the original model with {best} ({original[best]:.{digits}f}; cosine "
            f"{original['cosine']:.{digits}f}); compression's change across the similarities: {changes}."
        )
    lines.append("")
    timings = ", ".join(f"{name} {table['seconds']:.0f} s" for name, table in tables.items())
    lines += [
        "`vs cosine`: the original model's figure with that similarity minus its cosine figure; `change`: the "
        "compressed table's figure minus the original's, with the same similarity.",
        "",
        f"Command: `{result['command']}`; {result['seconds']:.0f} s wall time ({timings}: each recipe's "
        f"compression and evaluation, the first also the original model's encodings) on {result['host']}, "
        f"shared with other jobs; torch on {result['threads']} thread(s).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/similarity"), help="writes OUT.md and OUT.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--render", action="store_true", help="only re-render OUT.md from OUT.json")
    args = parser.parse_args()
    write_report(args.out, None if args.render else lambda: measure(args.data, args.threads), render)


if __name__ == "__main__":
    main()
