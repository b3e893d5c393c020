"""Context probes: does the model tell word senses apart in context, and do compressed tables blur them?

Each probe is two spans in two sentences with a relation: `same-sense` (one word form, one
meaning), `different-sense` (one word form, different meanings: polysemy and homonymy) or
`synonym` (different words, one meaning). A span's vector is the mean of the model's last hidden
states over the tokens that overlap it; a probe's score is the cosine of its two span vectors.
Separation is the AUC (Mann-Whitney) of one relation's cosines above another's: 1.0 when every
same-sense probe scores above every different-sense one, 0.5 when the model cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgeemb.evaluate.data import Probes
from edgeemb.evaluate.encoder import SpanEncode
from edgeemb.rows import unit_rows

SPAN_VECTOR = "mean of the last hidden states of the tokens overlapping the span"
# name -> (relation expected closer, relation expected farther)
SEPARATIONS = {
    "polysemy": ("same-sense", "different-sense"),
    "synonymy": ("synonym", "different-sense"),
}


def builtin_probes() -> Path:
    """edgeemb's own probe set: polysemy, homonymy and synonymy in English, German, French, Spanish."""
    return Path(str(resources.files("edgeemb.evaluate") / "probes.tsv"))


def probe_cosines(encode: SpanEncode, probes: Probes) -> np.ndarray:
    """The cosine of each probe's two span vectors (each distinct span in context encoded once)."""
    keys = list(
        dict.fromkeys(
            [*zip(probes.sentences_a, probes.spans_a), *zip(probes.sentences_b, probes.spans_b)],
        )
    )
    vectors = unit_rows(np.asarray(encode([text for text, _ in keys], [span for _, span in keys]), np.float32))
    index = {key: i for i, key in enumerate(keys)}
    left = vectors[[index[key] for key in zip(probes.sentences_a, probes.spans_a)]]
    right = vectors[[index[key] for key in zip(probes.sentences_b, probes.spans_b)]]
    return np.einsum("ij,ij->i", left, right)


def auc(closer: np.ndarray, farther: np.ndarray) -> float:
    """P(a `closer` cosine > a `farther` one), ties counting half."""
    greater = (closer[:, None] > farther[None, :]).mean()
    ties = (closer[:, None] == farther[None, :]).mean()
    return float(greater + ties / 2)


@dataclass(frozen=True)
class Separation:
    name: str
    closer: str
    farther: str
    auc: float | None  # None when the probes lack one of the two relations


def separations(cosines: np.ndarray, relations: list[str]) -> list[Separation]:
    labels = np.asarray(relations)
    found = []
    for name, (closer, farther) in SEPARATIONS.items():
        a, b = cosines[labels == closer], cosines[labels == farther]
        found.append(Separation(name, closer, farther, auc(a, b) if len(a) and len(b) else None))
    return found
