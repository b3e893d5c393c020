"""Similarities STS and retrieval can be scored with besides plain cosine."""

from __future__ import annotations

SIMILARITIES = ("cosine", "centered", "whitened", "csls")
