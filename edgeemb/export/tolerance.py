"""What an export's verification holds its file to: each figure, its default limit and why, in one
place. A figure outside its limit fails the export (the file is removed) with one line naming the
figure, its value and the limit; a `warning` figure only warns. `edgeemb export --tolerance
FIGURE=LIMIT` sets a limit for one run, `--no-verify` skips the checks.

The limits were measured with `python tools/verify_numbers.py` (docs/export-verification.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeemb.errors import EdgeembError


@dataclass(frozen=True)
class Figure:
    name: str  # the figure's key in the check's JSON, and in `--tolerance NAME=LIMIT`
    meaning: str  # what it measures, for the error line
    at_least: bool  # the figure must be >= its limit (a cosine), else <= (a difference)
    warning: bool = False  # outside its limit, the export warns instead of failing

    def holds(self, value: float, limit: float) -> bool:
        return value >= limit if self.at_least else value <= limit  # NaN holds neither way

    def describe(self, value: float, limit: float) -> str:
        side = "at least" if self.at_least else "at most"
        return f"{self.meaning} is {value:.4g}, the tolerance {side} {limit:g} ({self.name})"


# Every figure a format's check measures that a limit can be set on.
FIGURES: dict[str, dict[str, Figure]] = {
    fmt: {figure.name: figure for figure in figures}
    for fmt, figures in {
        "onnx": (
            Figure("max_abs_diff", "the max abs difference to the compressed model's reference", False),
            Figure("reference_min_cosine", "the lowest cosine to the compressed model's reference", True),
            Figure("reference_mean_cosine", "the mean cosine to the compressed model's reference", True),
            Figure("given_min_cosine", "the lowest cosine of the untouched graph to the source model", True, True),
        ),
        "gguf": (
            Figure("mean_kl", "the mean KL divergence (nats per token) from the expected table's logits", False),
            Figure("top1_agreement", "the share of next tokens the expected table's logits also rank first", True),
            Figure(
                "greedy_tokens_equal_to_transformers",
                "of llama.cpp's greedy tokens, those transformers with the same table predicts before the first "
                "difference (a Hugging Face source)",
                True,
            ),
        ),
        "st": (Figure("max_abs_diff", "the max abs difference to the compressed model", False),),
        "hf": (Figure("max_abs_diff", "the max abs difference of the logits to the compressed model", False),),
    }.items()
}

# The default limits, by profile (a format, or how the file is written). The figures quoted are
# MiniLM's on STS-B dev's 2,910 sentences and SmolLM2's and Gemma 3 270M's on the fixed text.
DEFAULTS: dict[str, dict[str, float]] = {
    # The table's own subgraph: the file computes what the compressed model computes, up to float
    # rounding. GatherBlockQuantized multiplies in fp16 (int4: max abs diff 3.2e-5; the other
    # mappings 2.6e-7, lowest cosine 0.9999996); the rows shifted by one: 0.43, mean cosine 0.03.
    # The untouched graph given with --from against the source model: MiniLM's fp32 export agrees to
    # 2.2e-7, a float16 conversion to a lowest cosine of 0.999999; below 0.999 it is another model
    # (an int8 one: 0.873; fine-tuned, edited), and the figures against the original measure that as
    # well: a warning, not a failure.
    "onnx": {"max_abs_diff": 1e-3, "reference_min_cosine": 0.9999, "given_min_cosine": 0.999},
    # --quantize-rest: int8 MatMuls move every sentence a little (mean cosine to the reference 0.992
    # to 0.993 for the three built-in tables, lowest 0.968); rows read from the wrong place fall far
    # below (mean 0.03).
    "onnx-int8-rest": {"reference_mean_cosine": 0.98, "reference_min_cosine": 0.9, "given_min_cosine": 0.999},
    # GGUF: llama.cpp's logits from the file against its logits from the same file with token_embd
    # the expected rows in F32, on a fixed text. Only the tied head's kernel differs (activations
    # rounded to 8 bits against a quantised head): SmolLM2 Q8_0/Q5_0/Q4_0 7.5e-4 to 8.3e-4 nats,
    # Gemma 3 270M 3.8e-4 to 3.9e-4; rows read from the wrong place: 6.5 to 9.2 nats.
    # A Hugging Face source, also: of the 32 greedy tokens llama.cpp generates from the file, transformers
    # running the source model with the expected rows must predict at least 8 before the first
    # difference. Both run the same weights, but llama.cpp rounds activations to the weights' type
    # (F16, BF16; 8 bits against a quantised tied head), so a near tie may break the other way late in
    # a continuation (a tiny random qwen2 with a tied Q4_0 head: at its 15th token); a head tied to the
    # wrong tensor or a conversion that misreads the model differ from the first tokens.
    "gguf": {"mean_kl": 0.01},
    "gguf-hf": {"mean_kl": 0.01, "greedy_tokens_equal_to_transformers": 8},
    # sentence-transformers: the same PyTorch modules with the same decoded table (MiniLM: 0).
    "st": {"max_abs_diff": 1e-4},
    # transformers: the folder loaded back against the source with the table rounded to the folder's
    # float type, the same weights (tiny random causal LMs: 0).
    "hf": {"max_abs_diff": 1e-4},
}


def parse_tolerances(values: Iterable[str]) -> dict[str, float]:
    """`--tolerance FIGURE=LIMIT` options as {figure: limit}; the figures are checked against the
    format by `limits`."""
    parsed = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            parsed[name.strip()] = float(number)
        except ValueError:
            raise EdgeembError(f"--tolerance {value!r}: give FIGURE=LIMIT, e.g. max_abs_diff=1e-3") from None
        if not sep:
            raise EdgeembError(f"--tolerance {value!r}: give FIGURE=LIMIT, e.g. max_abs_diff=1e-3")
    return parsed


def limits(fmt: str, profile: str, overrides: Mapping[str, float]) -> dict[str, float]:
    """The limits a check of `fmt` holds its file to: `profile`'s defaults with `overrides` over
    them; a figure the format does not measure is refused (before the export runs)."""
    unknown = sorted(set(overrides) - set(FIGURES[fmt]))
    if unknown:
        raise EdgeembError(
            f"--tolerance {', '.join(unknown)}: not a figure the {fmt} check measures " f"({', '.join(FIGURES[fmt])})"
        )
    return {**DEFAULTS[profile], **overrides}


def held(fmt: str, path: Path, figures: Mapping[str, float | None], limits: Mapping[str, float]) -> list[str]:
    """Hold `figures` to `limits`: raise one line naming every failing figure, its value and its
    limit; return the warnings (figures that only warn). A limit on a figure this check did not
    measure (the untouched graph's, without --from) is not applied."""
    failing, warnings = [], []
    for name, limit in limits.items():
        figure, value = FIGURES[fmt][name], figures.get(name)
        if value is None or figure.holds(value, limit):
            continue
        (warnings if figure.warning else failing).append(figure.describe(value, limit))
    if failing:
        raise EdgeembError(
            f"{path}: verification failed: {'; '.join(failing)}; removed the file "
            "(--tolerance FIGURE=LIMIT to accept it, --no-verify to skip the checks)"
        )
    return warnings


def stated(fmt: str, limits: Mapping[str, float]) -> str:
    """`limits` as a reader sees them: "max_abs_diff <= 0.001, reference_min_cosine >= 0.9999"."""
    sides = {True: ">=", False: "<="}
    return ", ".join(f"{name} {sides[FIGURES[fmt][name].at_least]} {limit:g}" for name, limit in limits.items())
