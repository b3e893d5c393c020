"""What the exports' verification limits rest on (edgeemb/export/tolerance.py): each check's figures
on right files and on broken ones.

    python tools/verify_numbers.py --data ../shared/data -o docs/export-verification

ONNX, MiniLM, every STS-B dev sentence, against the check's reference (the compressed model in
PyTorch): each built-in MiniLM table inside the graph, the other MatMuls as exported or int8
(--quantize-rest), and the int4 table with its rows shifted by one (what a broken rewrite reads).
Then graphs as a user may give them with --from, untouched, against the source model: the fp32
export, a float16 conversion of it (onnxruntime.transformers.float16) and an int8 one (onnxruntime
dynamic quantisation of its MatMuls).

GGUF, SmolLM2-135M and Gemma 3 270M: the table quantised to Q8_0, Q5_0 and Q4_0 and exported, then
`gguf_check.table_logits` (llama.cpp's logits on the fixed text against the same file with the
expected rows in F32) on that file and on one written with the rows shifted by one.

Writes OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from report_files import write_report

from edgeemb.evaluate.data import read_sts
from edgeemb.evaluate.encoder import sentence_encoder
from edgeemb.evaluate.onnxruntime import onnx_encoder
from edgeemb.export.gguf import export_gguf
from edgeemb.export.gguf_check import expected_rows, table_logits
from edgeemb.export.onnx import compress_onnx, export_onnx
from edgeemb.export.tolerance import DEFAULTS
from edgeemb.recipe import load_recipe, parse_recipe
from edgeemb.rows import unit_rows
from edgeemb.sources import open_model
from edgeemb.table import DenseTable

ONNX_TABLES = ("int4", "int8", "minilm-pq")
GGUF_MODELS = ("smollm2-135m", "gemma3-270m")
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_0")


def against(ours: np.ndarray, reference: np.ndarray) -> dict:
    cosines = np.einsum("ij,ij->i", ours, reference)
    return {
        "max_abs_diff": float(np.abs(ours - reference).max()),
        "mean_cosine": float(cosines.mean()),
        "p01_cosine": float(np.percentile(cosines, 1)),
        "min_cosine": float(cosines.min()),
    }


def onnx_rows(texts: list[str], folder: Path) -> tuple[list[dict], list[dict]]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = open_model("minilm")
    model = sentence_encoder(source.path, source.sha256)
    fp32 = folder / "fp32.onnx"
    export_onnx(source, None, fp32)
    rows = []
    for name in ONNX_TABLES:
        table = load_recipe(name).apply(source.table)
        reference = unit_rows(model.encoder(table.to_dense(), "reference")(texts))
        cases = [("right", table, False), ("right", table, True)]
        if name == "int4":
            cases.append(("rows shifted by one", DenseTable(np.roll(table.to_dense(), 1, axis=0)), False))
        for case, written, rest in cases:
            path = folder / f"{name}-{rest}-{len(rows)}.onnx"
            compress_onnx(fp32, written, path, quantize_rest=rest)
            figures = against(onnx_encoder(path, source)(texts), reference)
            rows.append({"table": name, "rest": "int8" if rest else "as exported", "file": case, **figures})
            print(rows[-1], flush=True)
    original = unit_rows(model.original(texts))
    fp16, int8 = folder / "fp16.onnx", folder / "int8.onnx"
    onnx.save(convert_float_to_float16(onnx.load(fp32), keep_io_types=True), fp16)
    quantize_dynamic(fp32, int8, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    given = []
    for label, path in (("fp32 export", fp32), ("float16 conversion", fp16), ("int8 MatMuls", int8)):
        given.append({"graph": label, **against(onnx_encoder(path, source)(texts), original)})
        print(given[-1], flush=True)
    return rows, given


def gguf_rows(folder: Path) -> list[dict]:
    rows = []
    for name in GGUF_MODELS:
        source = open_model(name)
        for fmt in GGUF_TYPES:
            table = parse_recipe({"steps": [{"quantize": {"format": fmt}}]}).apply(source.table)
            expected = expected_rows(table, fmt, rebuilt=False)
            path, broken = folder / f"{name}-{fmt}.gguf", folder / f"{name}-{fmt}-shifted.gguf"
            export_gguf(source.path, table, path)
            export_gguf(source.path, DenseTable(np.roll(expected, 1, axis=0)), broken, fmt)
            for case, file in (("right", path), ("rows shifted by one", broken)):
                figures = table_logits(file, expected)
                rows.append({"model": name, "type": fmt, "file": case, **vars(figures)})
                print(rows[-1], flush=True)
            path.unlink()
            broken.unlink()
    return rows


def measure(data: Path) -> dict:
    started = time.time()
    sts = read_sts(data / "stsb" / "stsb_en_dev.tsv")
    texts = sorted(set(sts.sentences1) | set(sts.sentences2))
    with tempfile.TemporaryDirectory() as tmp:
        onnx, given = onnx_rows(texts, Path(tmp))
        gguf = gguf_rows(Path(tmp))
    return {
        "data": str(data / "stsb" / "stsb_en_dev.tsv"),
        "sentences": len(texts),
        "defaults": DEFAULTS,
        "onnx": onnx,
        "given": given,
        "gguf": gguf,
        "seconds": time.time() - started,
    }


def summary(result: dict) -> list[str]:
    """Right files against broken ones, figure by figure, beside the limit."""
    exact = [r for r in result["onnx"] if r["file"] == "right" and r["rest"] == "as exported"]
    rest = [r for r in result["onnx"] if r["file"] == "right" and r["rest"] == "int8"]
    shifted = next(r for r in result["onnx"] if r["file"] != "right")
    right_kl = [r["mean_kl"] for r in result["gguf"] if r["file"] == "right"]
    broken_kl = [r["mean_kl"] for r in result["gguf"] if r["file"] != "right"]
    onnx, int8, gguf = (result["defaults"][profile] for profile in ("onnx", "onnx-int8-rest", "gguf"))
    given = ", ".join(f"{row['graph']} {row['min_cosine']:.6f}" for row in result["given"])
    return [
        "Right files against broken ones (the rows shifted by one), beside each limit:",
        "",
        f"- ONNX, the table's subgraph: max abs diff at most {max(r['max_abs_diff'] for r in exact):.1e} "
        f"(limit {onnx['max_abs_diff']:g}), lowest cosine {min(r['min_cosine'] for r in exact):.7f} "
        f"(limit {onnx['reference_min_cosine']:g}); shifted rows: max abs diff {shifted['max_abs_diff']:.2f}, "
        f"lowest cosine {shifted['min_cosine']:.2f}.",
        f"- ONNX with --quantize-rest: mean cosine at least {min(r['mean_cosine'] for r in rest):.4f} "
        f"(limit {int8['reference_mean_cosine']:g}), lowest {min(r['min_cosine'] for r in rest):.4f} "
        f"(limit {int8['reference_min_cosine']:g}).",
        f"- ONNX --from, the untouched graph's lowest cosine to the source model (a warning below "
        f"{onnx['given_min_cosine']:g}): {given}.",
        f"- GGUF: mean KL {min(right_kl):.1e} to {max(right_kl):.1e} nats per token for right files, "
        f"{min(broken_kl):.1f} to {max(broken_kl):.1f} for shifted rows (limit {gguf['mean_kl']:g}).",
    ]


def render(result: dict) -> str:
    lines = [
        "# What the export checks' limits rest on",
        "",
        "`python tools/verify_numbers.py --data ../shared/data -o docs/export-verification` "
        f"({result['seconds'] / 60:.1f} min). The limits: `edgeemb/export/tolerance.py`.",
        "",
        *summary(result),
        "",
        f"## ONNX: MiniLM against the compressed model in PyTorch ({result['sentences']} STS-B dev sentences)",
        "",
        "| table | other MatMuls | file | max abs diff | cosine mean | p1 | min |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["onnx"]:
        lines.append(
            f"| {row['table']} | {row['rest']} | {row['file']} | {row['max_abs_diff']:.2e} | {row['mean_cosine']:.6f} "
            f"| {row['p01_cosine']:.6f} | {row['min_cosine']:.6f} |"
        )
    lines += [
        "",
        "## ONNX: a graph given with --from, untouched, against the source model",
        "",
        "| graph | max abs diff | cosine mean | p1 | min |",
        "|---|---|---|---|---|",
    ]
    for row in result["given"]:
        lines.append(
            f"| {row['graph']} | {row['max_abs_diff']:.2e} | {row['mean_cosine']:.6f} | {row['p01_cosine']:.6f} "
            f"| {row['min_cosine']:.6f} |"
        )
    lines += [
        "",
        "## GGUF: llama.cpp's logits from the file against the same file with the expected rows in F32",
        "",
        "| model | token_embd | file | tokens | mean KL (nats) | max KL | same top token |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["gguf"]:
        lines.append(
            f"| {row['model']} | {row['type']} | {row['file']} | {row['tokens']} | {row['mean_kl']:.2e} "
            f"| {row['max_kl']:.2e} | {row['top1_agreement']:.1%} |"
        )
    limits = "; ".join(
        f"{profile}: " + ", ".join(f"{k} {v:g}" for k, v in values.items())
        for profile, values in result["defaults"].items()
    )
    return "\n".join([*lines, "", f"Default limits when measured: {limits}.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/export-verification"))
    parser.add_argument("--render-only", action="store_true", help="re-render OUT.md from OUT.json")
    args = parser.parse_args()
    write_report(args.out, None if args.render_only else lambda: measure(args.data), render)


if __name__ == "__main__":
    main()
