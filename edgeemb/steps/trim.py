"""`trim_vocab`: keep only the rows a language or domain uses, renumbered densely.

    - trim_vocab: {scripts: [latin]}                        # pieces written in Latin/ASCII/common characters
    - trim_vocab: {corpus: [domain.txt], min_count: 2}      # pieces seen twice in the user's text
    - trim_vocab: {scripts: [ascii], corpus: [news.txt]}    # the union of both
    - trim_vocab: {scripts: [ascii], characters: true}      # and every single character, any script
    - trim_vocab: {scripts: [ascii, {latin: 100000}]}       # accented Latin pieces only among the first 100k ids

Policies unite; the tokenizer's floor (special, control and byte tokens, fallback pieces) is always
kept, and the result is closed under merge intermediates (see `edgeemb.vocab`). The last
`holdout` share of the corpus lines is not counted: the trim is judged on it (how many of its
tokens survive, how many of its lines tokenise differently, how many more tokens they take).
The step must come first; the steps after it (svd, quantize) see the kept rows.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from edgeemb.errors import EdgeembError, regular_file
from edgeemb.progress import track
from edgeemb.steps.base import PathArgument, StepConfig, StepContext, register
from edgeemb.table import DenseTable, EmbeddingTable, TrimmedTable
from edgeemb.vocab import Tokenize, Vocabulary, require_kept, script_mask, single_characters


class TrimConfig(StepConfig):
    """Keep the union of the policies given (at least one); with a corpus, at most one of
    min_count, top_k, coverage (default: min_count 1)."""

    scripts: tuple[str | dict[str, int], ...] = Field(
        default=(),
        strict=False,
        description=(
            "keep pieces written wholly in these scripts: 'ascii', or e.g. 'latin', 'cyrillic' "
            "(with ASCII and common punctuation); {latin: 100000}: only among the first 100000 ids "
            "(BPE and SentencePiece vocabularies number pieces in merge order, frequent first)"
        ),
    )
    characters: bool = Field(
        default=False,
        description=(
            "also keep every single-character piece, of any script: other text then falls back to characters, not bytes"
        ),
    )
    corpus: tuple[PathArgument, ...] = Field(
        default=(),
        strict=False,
        description="text whose tokens are counted: plain-text files (a line each) or BEIR folders (their documents)",
    )
    min_count: int | None = Field(default=None, ge=1, description="keep pieces seen at least this often in the corpus")
    top_k: int | None = Field(default=None, ge=1, description="keep the corpus's k most frequent pieces")
    coverage: float | None = Field(
        default=None, gt=0, le=1, description="keep the most frequent pieces covering this share of corpus tokens"
    )
    holdout: float = Field(
        default=0.1, ge=0, lt=1, description="last share of the corpus lines held back to judge the trim (not counted)"
    )
    drop: tuple[str, ...] = Field(
        default=(),
        strict=False,
        description="pieces to drop even if a policy or the floor keeps them (e.g. '<start_of_image>')",
    )

    @field_validator("scripts")
    @classmethod
    def _known_scripts(cls, scripts: tuple[str | dict[str, int], ...]) -> tuple[str | dict[str, int], ...]:
        for entry in scripts:
            if isinstance(entry, dict) and (len(entry) != 1 or next(iter(entry.values())) < 1):
                raise ValueError(f"a script entry is a name or {{name: first_ids}} with a positive count, got {entry}")
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            if name not in known_scripts():
                raise ValueError(f"unknown script {name!r} (e.g. ascii, latin, cyrillic, greek, cjk, arabic)")
        return scripts

    @model_validator(mode="after")
    def _policy(self) -> TrimConfig:
        if not self.scripts and not self.corpus and not self.characters:
            raise ValueError("give a policy: scripts, characters, a corpus, or any of them together")
        chosen = [k for k in ("min_count", "top_k", "coverage") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give at most one of min_count, top_k, coverage (got {' and '.join(chosen)})")
        if chosen and not self.corpus:
            raise ValueError(f"{chosen[0]} needs a corpus")
        return self


@functools.cache
def known_scripts() -> frozenset[str]:
    """'ascii', 'common', and the first word of every letter's Unicode name."""
    names = {"ascii", "common"}
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        if unicodedata.category(char)[0] == "L":
            names.add(unicodedata.name(char, "unknown").split(" ", 1)[0].lower())
    return frozenset(names)


@register("trim_vocab", TrimConfig, trims_vocab=True)
def trim_vocab(table: EmbeddingTable, config: TrimConfig, context: StepContext = StepContext()) -> TrimmedTable:
    if context.vocabulary is None:
        raise EdgeembError(
            "trim_vocab: this model has no tokenizer edgeemb can rewrite "
            "(it reads tokenizer.json and GGUF vocabularies)"
        )
    if not isinstance(table, DenseTable):
        raise EdgeembError("trim_vocab: the vocabulary is trimmed first, before any other step")
    vocab = context.vocabulary()
    if table.shape[0] != len(vocab):
        raise EdgeembError(f"trim_vocab: the table has {table.shape[0]} rows but the tokenizer {len(vocab)} pieces")
    floor = vocab.floor()
    keep = floor.copy()
    facts: dict = {"source_rows": len(vocab), "tokenizer": vocab.model, "floor_rows": int(floor.sum())}
    if config.scripts:
        by_script = np.zeros(len(vocab), bool)
        for entry in config.scripts:
            name, first_ids = next(iter(entry.items())) if isinstance(entry, dict) else (entry, len(vocab))
            by_script |= script_mask(vocab, (name,)) & (np.arange(len(vocab)) < first_ids)
        keep |= by_script
        facts["script_rows"] = int(by_script.sum())
    if config.characters:
        characters = single_characters(vocab)
        keep |= characters
        facts["character_rows"] = int(characters.sum())
    held: list[str] = []
    if config.corpus:
        lines = corpus_lines(config.corpus, "trim_vocab")
        split = max(1, round(len(lines) * (1 - config.holdout)))
        counted, held = lines[:split], lines[split:]
        counts = token_counts(vocab.tokenize, counted, len(vocab))
        frequent = _frequent(counts, config)
        keep |= frequent
        facts["corpus"] = {
            "files": [str(p) for p in config.corpus],
            "lines_counted": len(counted),
            "tokens_counted": int(counts.sum()),
            "distinct_tokens": int((counts > 0).sum()),
            "frequent_rows": int(frequent.sum()),
        }
    index = {token: i for i, token in enumerate(vocab.tokens)} if config.drop else {}
    for piece in config.drop:
        if piece not in index:
            raise EdgeembError(f"trim_vocab: drop: {piece!r} is not a piece of this vocabulary")
        keep[index[piece]] = False
    before_closure = int(keep.sum())
    keep = vocab.closure(keep)
    facts["closure_rows_added"] = int(keep.sum()) - before_closure
    kept = np.flatnonzero(keep).astype(np.int32)
    require_kept(vocab, kept)
    facts["rows"] = len(kept)
    if held:
        facts["holdout"] = holdout_report(vocab, kept, held)
    return TrimmedTable(DenseTable(np.ascontiguousarray(table.weight[kept])), kept, facts)


def holdout_report(vocab: Vocabulary, kept: np.ndarray, lines: list[str]) -> dict:
    """How the trim treats text it was not chosen on: the share of its original tokens whose row
    was kept, of its lines now tokenised differently, and the token count against the original."""
    trimmed = vocab.retokenizer(kept)
    mask = np.zeros(len(vocab), bool)
    mask[kept] = True
    original_tokens = new_tokens = kept_tokens = changed = 0
    for line in track(lines, "held-out text", len(lines)):
        before, after = vocab.tokenize(line), trimmed(line)
        original_tokens += len(before)
        new_tokens += len(after)
        kept_tokens += int(mask[before].sum()) if before else 0
        changed += [int(kept[i]) for i in after] != before
    return {
        "lines": len(lines),
        "tokens_original": original_tokens,
        "tokens_trimmed": new_tokens,
        "token_coverage": kept_tokens / max(original_tokens, 1),
        "lines_changed": changed / max(len(lines), 1),
        "token_increase": new_tokens / max(original_tokens, 1) - 1,
    }


def corpus_lines(paths: tuple[Path, ...], what: str) -> list[str]:
    """The non-blank lines of plain-text files and the documents of BEIR folders, in order;
    `what` names the caller in errors (e.g. 'trim_vocab')."""
    from edgeemb.evaluate.data import read_beir

    lines: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            lines += [text for text in read_beir(path).corpus_texts if text.strip()]
            continue
        try:
            text = regular_file(path, f"{what} corpus").read_text(encoding="utf-8")
            lines += [line for line in text.splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgeembError(f"{what}: cannot read corpus {path} ({exc})") from None
    if not lines:
        raise EdgeembError(f"{what}: the corpus ({', '.join(map(str, paths))}) has no text")
    return lines


def token_counts(tokenize: Tokenize, lines: list[str], rows: int) -> np.ndarray:
    """How often each id occurs in the lines' tokens (int64, at least `rows` long: a tokenizer
    may give ids past the table's rows)."""
    ids = (i for line in track(lines, "count corpus tokens", len(lines)) for i in tokenize(line))
    return np.bincount(np.fromiter(ids, np.int64), minlength=rows)


def _frequent(counts: np.ndarray, config: TrimConfig) -> np.ndarray:
    if config.top_k is not None:
        order = np.argsort(-counts, kind="stable")[: config.top_k]
        chosen = np.zeros(len(counts), bool)
        chosen[order[counts[order] > 0]] = True
        return chosen
    if config.coverage is not None:
        order = np.argsort(-counts, kind="stable")
        needed = int(np.searchsorted(np.cumsum(counts[order]), config.coverage * counts.sum())) + 1
        chosen = np.zeros(len(counts), bool)
        chosen[order[:needed]] = True
        return chosen
    return counts >= (config.min_count or 1)
