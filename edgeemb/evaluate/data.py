"""Readers for user evaluation data: STS pairs, BEIR retrieval folders and plain text lists.

Every problem with the user's files surfaces as an `EdgeembError` naming the file and, where it
helps, the line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeemb.errors import EdgeembError, regular_file

STS_COLUMNS = ("sentence1", "sentence2", "score")


@dataclass(frozen=True)
class StsData:
    """Sentence pairs with gold similarity scores (any scale: only their ranks matter)."""

    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # float64, one per pair


@dataclass(frozen=True)
class BeirData:
    """A retrieval collection, restricted to the queries that have judgements."""

    corpus_ids: list[str]
    corpus_texts: list[str]  # title + " " + text when the document has a title
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> graded relevance
    ignored_qrels: int  # judgements naming documents absent from the corpus (dropped)


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for each non-blank line of a tab-separated, unquoted file."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for fields in reader:
                if any(field.strip() for field in fields):
                    yield reader.line_num, fields
    except UnicodeDecodeError as exc:
        raise EdgeembError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except csv.Error as exc:  # a field past csv's limit (128 KiB), say: the line it stopped on
        raise EdgeembError(f"{path} line {reader.line_num}: not tab-separated text edgeemb reads ({exc})") from None


def read_sts(path: str | Path) -> StsData:
    """Read an STS TSV whose header names `sentence1`, `sentence2` and `score` columns."""
    path = regular_file(path, "STS file")
    rows, names = _header(path, "STS file", STS_COLUMNS)
    i1, i2, iscore = (names.index(column) for column in STS_COLUMNS)
    width = max(i1, i2, iscore) + 1
    sentences1: list[str] = []
    sentences2: list[str] = []
    scores: list[float] = []
    for line, fields in rows:
        if len(fields) < width:
            raise EdgeembError(f"{path} line {line}: expected at least {width} tab-separated fields, got {len(fields)}")
        score = _score(path, line, fields[iscore])
        sentences1.append(fields[i1])
        sentences2.append(fields[i2])
        scores.append(score)
    if not scores:
        raise EdgeembError(f"STS file {path} has a header but no sentence pairs")
    return StsData(sentences1, sentences2, np.asarray(scores, dtype=np.float64))


def _score(path: Path, line: int, text: str) -> float:
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise EdgeembError(f"{path} line {line}: score {text!r} is not a number")
    return score


def _jsonl(path: Path, keys: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line of a JSON-lines file; objects hold `keys`."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise EdgeembError(f"{path} line {line}: invalid JSON ({exc.msg})") from exc
                if not isinstance(record, dict) or any(key not in record for key in keys):
                    raise EdgeembError(f"{path} line {line}: expected a JSON object with {', '.join(keys)}")
                yield line, record
    except UnicodeDecodeError as exc:
        raise EdgeembError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc


def _texts_by_id(path: Path, with_title: bool) -> dict[str, str]:
    texts: dict[str, str] = {}
    for line, record in _jsonl(path, ("_id", "text")):
        doc_id = str(record["_id"])
        if doc_id in texts:
            raise EdgeembError(f"{path} line {line}: duplicate _id {doc_id!r}")
        text = str(record["text"] or "")
        title = str(record.get("title") or "") if with_title else ""
        texts[doc_id] = f"{title} {text}".strip() if title else text
    if not texts:
        raise EdgeembError(f"{path} holds no records")
    return texts


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    rows = _tsv_rows(path)
    if next(rows, None) is None:  # the header row, whatever it names
        raise EdgeembError(f"qrels file {path} is empty")
    qrels: dict[str, dict[str, int]] = {}
    for line, fields in rows:
        if len(fields) < 3:
            raise EdgeembError(f"{path} line {line}: expected query-id, corpus-id, score")
        try:
            score = int(fields[2])
        except ValueError:
            raise EdgeembError(f"{path} line {line}: score {fields[2]!r} is not an integer") from None
        qrels.setdefault(fields[0].strip(), {})[fields[1].strip()] = score
    if not qrels:
        raise EdgeembError(f"qrels file {path} has a header but no judgements")
    return qrels


def read_beir(folder: str | Path) -> BeirData:
    """Read a BEIR folder: corpus.jsonl, queries.jsonl and qrels/test.tsv."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeembError(f"BEIR folder not found: {folder}")
    paths = {name: folder / name for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        raise EdgeembError(f"BEIR folder {folder} lacks {', '.join(missing)}")
    for name, path in paths.items():
        regular_file(path, f"BEIR {name}")
    corpus = _texts_by_id(paths["corpus.jsonl"], with_title=True)
    queries = _texts_by_id(paths["queries.jsonl"], with_title=False)
    judged = _read_qrels(paths["qrels/test.tsv"])

    total = sum(len(docs) for docs in judged.values())
    known = {
        query_id: kept
        for query_id, docs in judged.items()
        if (kept := {doc_id: rel for doc_id, rel in docs.items() if doc_id in corpus})
    }
    ignored = total - sum(len(docs) for docs in known.values())
    if ignored == total:
        raise EdgeembError(
            f"none of the {total} judgements in {paths['qrels/test.tsv']} names a document in corpus.jsonl"
        )
    # Keep the queries file's order; queries without (usable) judgements cannot be scored.
    query_ids = [query_id for query_id in queries if query_id in known]
    if not query_ids:
        raise EdgeembError(f"no query in {paths['qrels/test.tsv']} appears in queries.jsonl")
    return BeirData(
        corpus_ids=list(corpus),
        corpus_texts=list(corpus.values()),
        query_ids=query_ids,
        query_texts=[queries[query_id] for query_id in query_ids],
        qrels={query_id: known[query_id] for query_id in query_ids},
        ignored_qrels=ignored,
    )


def read_text(path: str | Path) -> str:
    """A plain-text file, whole (for perplexity: the text as it is, blank lines included)."""
    path = regular_file(path, "text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EdgeembError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    if not text.strip():
        raise EdgeembError(f"text file {path} is empty")
    return text


def read_texts(path: str | Path) -> list[str]:
    """Read a plain-text file as one text per non-empty line (surrounding whitespace dropped)."""
    # split("\n"), not splitlines(): the latter also breaks at form feeds and Unicode separators.
    return [line.strip() for line in read_text(path).split("\n") if line.strip()]


WORD_COLUMNS = ("word1", "word2", "score")
PROBE_COLUMNS = ("sentence_a", "span_a", "sentence_b", "span_b", "relation")
RELATIONS = ("same-sense", "different-sense", "synonym")


@dataclass(frozen=True)
class WordPairs:
    """Word pairs with gold similarity scores (WordSim353, SimLex-999: only ranks matter)."""

    words1: list[str]
    words2: list[str]
    scores: np.ndarray  # float64, one per pair


@dataclass(frozen=True)
class Probes:
    """Pairs of spans in context, each labelled with how their meanings relate (`RELATIONS`).

    A span is a character range of its sentence: the first occurrence of the span's text."""

    sentences_a: list[str]
    spans_a: list[tuple[int, int]]
    sentences_b: list[str]
    spans_b: list[tuple[int, int]]
    relations: list[str]
    languages: list[str]  # "" where the file has no language column


def _header(path: Path, what: str, columns: tuple[str, ...]) -> tuple[Iterator[tuple[int, list[str]]], list[str]]:
    """The remaining rows of a TSV and its header's column names, which include `columns`."""
    rows = _tsv_rows(path)
    header = next(rows, None)
    if header is None:
        raise EdgeembError(f"{what} {path} is empty")
    names = [name.strip() for name in header[1]]
    missing = [column for column in columns if column not in names]
    if missing:
        raise EdgeembError(
            f"{what} {path} lacks column(s) {', '.join(missing)} in its header (found: {', '.join(names)})"
        )
    return rows, names


def read_word_pairs(path: str | Path) -> WordPairs:
    """Read a word-similarity TSV whose header names `word1`, `word2` and `score` columns."""
    path = regular_file(path, "word-similarity file")
    rows, names = _header(path, "word-similarity file", WORD_COLUMNS)
    i1, i2, iscore = (names.index(column) for column in WORD_COLUMNS)
    width = max(i1, i2, iscore) + 1
    words1: list[str] = []
    words2: list[str] = []
    scores: list[float] = []
    for line, fields in rows:
        if len(fields) < width:
            raise EdgeembError(f"{path} line {line}: expected at least {width} tab-separated fields, got {len(fields)}")
        score = _score(path, line, fields[iscore])
        if not fields[i1].strip() or not fields[i2].strip():
            raise EdgeembError(f"{path} line {line}: a word is empty")
        words1.append(fields[i1].strip())
        words2.append(fields[i2].strip())
        scores.append(score)
    if not scores:
        raise EdgeembError(f"word-similarity file {path} has a header but no word pairs")
    return WordPairs(words1, words2, np.asarray(scores, dtype=np.float64))


def read_probes(path: str | Path) -> Probes:
    """Read a context-probe TSV: sentence_a, span_a, sentence_b, span_b, relation and, optionally,
    language; every span must occur in its sentence."""
    path = regular_file(path, "probe file")
    rows, names = _header(path, "probe file", PROBE_COLUMNS)
    indices = [names.index(column) for column in PROBE_COLUMNS]
    ilanguage = names.index("language") if "language" in names else None
    width = max(indices) + 1
    probes = Probes([], [], [], [], [], [])
    for line, fields in rows:
        if len(fields) < width:
            raise EdgeembError(f"{path} line {line}: expected at least {width} tab-separated fields, got {len(fields)}")
        sentence_a, span_a, sentence_b, span_b, relation = (fields[i] for i in indices)
        if relation not in RELATIONS:
            raise EdgeembError(f"{path} line {line}: relation {relation!r} is not one of {', '.join(RELATIONS)}")
        probes.sentences_a.append(sentence_a)
        probes.spans_a.append(_span(path, line, sentence_a, span_a))
        probes.sentences_b.append(sentence_b)
        probes.spans_b.append(_span(path, line, sentence_b, span_b))
        probes.relations.append(relation)
        language = fields[ilanguage].strip() if ilanguage is not None and ilanguage < len(fields) else ""
        probes.languages.append(language)
    if not probes.relations:
        raise EdgeembError(f"probe file {path} has a header but no probes")
    return probes


def _span(path: Path, line: int, sentence: str, span: str) -> tuple[int, int]:
    start = sentence.find(span) if span.strip() else -1
    if start < 0:
        raise EdgeembError(f"{path} line {line}: span {span!r} is not in its sentence {sentence!r}")
    return start, start + len(span)
