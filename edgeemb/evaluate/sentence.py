"""Sentence-level quality metrics over plain encoders: STS correlation, retrieval, embedding drift.

An encoder maps a list of texts to float32 (n, d) sentence embeddings; the metrics never see the
model or its table, so the same code scores a source model and any compressed variant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import BeirData, StsData
from edgeemb.evaluate.similarity import Cosine, Similarity
from edgeemb.progress import track
from edgeemb.rows import unit_rows

Encode = Callable[[list[str]], np.ndarray]

CUTOFF = 10  # nDCG@10 and recall@10, the BEIR headline numbers
_ENCODE_CHUNK = 512  # texts per encoder call: progress granularity without hurting batching
_SCORE_BUDGET = 1 << 24  # query × document cells scored per block (64 MiB of float32)


@dataclass(frozen=True)
class RetrievalScores:
    ndcg_at_10: float
    recall_at_10: float
    queries: int  # queries scored (those with at least one relevant document)


@dataclass(frozen=True)
class Drift:
    """Cosine between two encoders' embeddings of the same texts."""

    mean_cosine: float
    p01_cosine: float  # 1st percentile: the tail that a mean hides
    min_cosine: float
    n: int


def _embed(encode: Encode, texts: list[str], description: str) -> np.ndarray:
    """Encode `texts` in chunks and return unit-length float32 rows (zero vectors stay zero)."""
    chunks = range(0, len(texts), _ENCODE_CHUNK)
    parts = [
        np.asarray(encode(texts[i : i + _ENCODE_CHUNK]), dtype=np.float32)
        for i in track(chunks, description, len(chunks))
    ]
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(f"encoder returned shape {vectors.shape} for {len(texts)} texts")
    return unit_rows(vectors)


def sts_texts(data: StsData) -> list[str]:
    """The STS file's distinct sentences, in order: what is encoded, and the default fit set."""
    return list(dict.fromkeys(data.sentences1 + data.sentences2))


def sts_spearman(encode: Encode, data: StsData) -> float:
    """Spearman correlation ×100 between the pairs' cosine similarities and the gold scores."""
    return sts_by_similarity(encode, data, (Cosine(),))["cosine"]


def sts_by_similarity(
    encode: Encode, data: StsData, similarities: Sequence[Similarity], fit: list[str] | None = None
) -> dict[str, float]:
    """Spearman ×100 between the pairs' similarities and the gold scores, for each similarity.

    Each sentence is encoded once for all of them. The first sentences are the queries, the
    second ones the documents (csls: a sentence's neighbours are on the other side); centered
    and whitened fit on `fit`'s texts, by default the file's own sentences."""
    from scipy.stats import spearmanr  # scipy.stats takes ~0.7 s to import: loaded only when STS is scored

    unique = sts_texts(data)
    index = {sentence: i for i, sentence in enumerate(unique)}
    vectors = _embed(encode, unique, "Encoding STS sentences")
    fit_vectors = _fit_vectors(encode, similarities, fit, vectors)
    firsts, seconds = list(dict.fromkeys(data.sentences1)), list(dict.fromkeys(data.sentences2))
    first_row = {sentence: i for i, sentence in enumerate(firsts)}
    second_row = {sentence: i for i, sentence in enumerate(seconds)}
    pairs = np.asarray([first_row[s] for s in data.sentences1]), np.asarray([second_row[s] for s in data.sentences2])
    left, right = vectors[[index[s] for s in firsts]], vectors[[index[s] for s in seconds]]
    block = max(1, _SCORE_BUDGET // len(seconds))
    spearman = {}
    for similarity in similarities:
        scores = similarity.scorer(left, right, fit_vectors, block).pairs(*pairs)
        if np.ptp(scores) == 0 or np.ptp(data.scores) == 0:
            raise EdgeembError(
                f"STS: every pair has the same {similarity.name} similarity or the same gold score; "
                "Spearman is undefined"
            )
        spearman[similarity.name] = float(spearmanr(scores, data.scores).statistic * 100)
    return spearman


def _fit_vectors(
    encode: Encode, similarities: Sequence[Similarity], fit: list[str] | None, evaluated: np.ndarray
) -> np.ndarray:
    """The fit set's rows: `fit`'s distinct texts encoded when a similarity fits on them and they
    are given, else the `evaluated` texts' rows."""
    if fit is None or not any(similarity.uses_fit for similarity in similarities):
        return evaluated
    return _embed(encode, list(dict.fromkeys(fit)), "Encoding fit texts")


def retrieval(encode: Encode, data: BeirData) -> RetrievalScores:
    """Exact cosine retrieval over the whole corpus, scored by nDCG@10 and recall@10."""
    return retrieval_by_similarity(encode, data, (Cosine(),))["cosine"]


def retrieval_by_similarity(
    encode: Encode,
    data: BeirData,
    similarities: Sequence[Similarity],
    fit: list[str] | None = None,
    encode_queries: Encode | None = None,
) -> dict[str, RetrievalScores]:
    """Exact retrieval over the whole corpus with each similarity, scored by nDCG@10 and recall@10.

    nDCG follows pytrec_eval's `ndcg_cut_10` (as BEIR reports it): gain = graded relevance,
    discount log2(rank + 1), ideal DCG from the query's own judged relevances. Recall@10 is the
    fraction of the query's relevant (rel > 0) documents in the top 10. Queries with no relevant
    document are skipped; both numbers are means over the rest. The corpus and the queries are
    encoded once for every similarity; centered and whitened fit on `fit`'s texts, by default the
    corpus's distinct documents; csls's neighbours are the scored queries and the corpus.
    `encode_queries` encodes the queries where they take another prompt than the documents.
    """
    doc_index = {doc_id: i for i, doc_id in enumerate(data.corpus_ids)}
    scored = [i for i, query_id in enumerate(data.query_ids) if max(data.qrels[query_id].values()) > 0]
    if not scored:
        raise EdgeembError("no query has a relevant (score > 0) document: nothing to score")
    # Relevance as flat (query row, doc column, gain) triples; negative grades count as zero gain.
    rows, cols, gains = [], [], []
    for row, i in enumerate(scored):
        for doc_id, rel in data.qrels[data.query_ids[i]].items():
            rows.append(row)
            cols.append(doc_index[doc_id])
            gains.append(max(rel, 0))
    rows_a, cols_a, gains_a = np.asarray(rows), np.asarray(cols), np.asarray(gains, dtype=np.float64)

    docs = _embed(encode, data.corpus_texts, "Encoding corpus")
    queries = _embed(encode_queries or encode, [data.query_texts[i] for i in scored], "Encoding queries")
    distinct_docs = np.sort(np.unique(data.corpus_texts, return_index=True)[1])
    fit_vectors = _fit_vectors(encode, similarities, fit, docs[distinct_docs])
    n_docs = len(docs)
    k = min(CUTOFF, n_docs)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    block = max(1, _SCORE_BUDGET // n_docs)
    starts = range(0, len(scored), block)
    results = {}
    for similarity in similarities:
        scorer = similarity.scorer(queries, docs, fit_vectors, block)
        ndcg = np.empty(len(scored))
        recall = np.empty(len(scored))
        for start in track(starts, f"Scoring retrieval ({similarity.name})", len(starts)):
            stop = min(start + block, len(scored))
            scores = scorer.block(start, stop)
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)  # ranks 1..k, best first
            # Dense gains for this block of queries: the same size as `scores`, and exact.
            relevance = np.zeros((stop - start, n_docs))
            in_block = (rows_a >= start) & (rows_a < stop)
            relevance[rows_a[in_block] - start, cols_a[in_block]] = gains_a[in_block]
            retrieved = np.take_along_axis(relevance, top, axis=1)
            ideal = -np.sort(-np.partition(relevance, n_docs - k, axis=1)[:, n_docs - k :], axis=1)
            ndcg[start:stop] = (retrieved @ discount) / (ideal @ discount)
            recall[start:stop] = (retrieved > 0).sum(axis=1) / (relevance > 0).sum(axis=1)
        results[similarity.name] = RetrievalScores(
            ndcg_at_10=float(ndcg.mean()), recall_at_10=float(recall.mean()), queries=len(scored)
        )
    return results


def embedding_drift(encode_a: Encode, encode_b: Encode, texts: list[str]) -> Drift:
    """Per-text cosine between the embeddings two encoders give the same texts."""
    if not texts:
        raise EdgeembError("no texts to compare")
    a = _embed(encode_a, texts, "Encoding texts (reference)")
    b = _embed(encode_b, texts, "Encoding texts (candidate)")
    if a.shape != b.shape:
        raise ValueError(f"encoders disagree on the embedding shape: {a.shape} vs {b.shape}")
    cosines = np.einsum("ij,ij->i", a, b)
    return Drift(
        mean_cosine=float(cosines.mean()),
        p01_cosine=float(np.percentile(cosines, 1)),
        min_cosine=float(cosines.min()),
        n=len(texts),
    )
