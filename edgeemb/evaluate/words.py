"""Word-level probes: are similar concepts close? Word-similarity Spearman of a static table and of
a contextual model, on word1/word2/score files such as WordSim353 and SimLex-999.

A word's static vector is the mean of the table rows of its pieces, the word tokenised as it
appears after a space in running text (byte-level BPE and SentencePiece vocabularies keep that
space in the word's first piece, and the bare word's pieces are rarer ones: docs/word-probes.md
measures both), no special tokens, the unknown piece left out; its contextual vector is the
model's embedding of the word alone. Pairs are scored only where both words have a piece.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import WordPairs
from edgeemb.rows import unit_rows
from edgeemb.table import EmbeddingTable

Tokenize = Callable[[str], list[int]]
Encode = Callable[[list[str]], np.ndarray]

STATIC_VECTOR = "mean of the rows of ' ' + word's pieces, as in running text (no special tokens, no unknown piece)"
CONTEXTUAL_VECTOR = "the model's sentence embedding of the word alone"


@dataclass(frozen=True)
class WordCoverage:
    """How a tokenizer splits the distinct words of a word-similarity file."""

    words: int
    single_piece: int
    split: int  # several pieces
    uncovered: int  # no piece but the unknown one: pairs with such a word are not scored
    pieces_per_word: float  # over covered words
    pairs_scored: int


def word_pieces(words: list[str], tokenize: Tokenize, unk_id: int | None) -> dict[str, list[int]]:
    """Each distinct word's piece ids as in running text (after a space), the unknown piece left out."""
    return {word: [i for i in tokenize(" " + word) if i != unk_id] for word in dict.fromkeys(words)}


def coverage(pairs: WordPairs, pieces: dict[str, list[int]]) -> tuple[WordCoverage, np.ndarray]:
    """The coverage figures and the mask of pairs whose two words both have a piece."""
    counts = np.asarray([len(ids) for ids in pieces.values()])
    covered = counts > 0
    scored = np.asarray([bool(pieces[a]) and bool(pieces[b]) for a, b in zip(pairs.words1, pairs.words2)])
    if not scored.any():
        raise EdgeembError(
            f"no word pair has both words in the vocabulary ({int((~covered).sum())} of {len(counts)} words "
            "tokenise to nothing but the unknown piece)"
        )
    figures = WordCoverage(
        words=len(counts),
        single_piece=int((counts == 1).sum()),
        split=int((counts > 1).sum()),
        uncovered=int((~covered).sum()),
        pieces_per_word=float(counts[covered].mean()),
        pairs_scored=int(scored.sum()),
    )
    return figures, scored


def static_vectors(table: EmbeddingTable, pieces: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Each word's mean piece row (a zero vector for a word with no piece)."""
    ids = np.asarray([i for word_ids in pieces.values() for i in word_ids], dtype=np.int64)
    rows = table.lookup(ids) if len(ids) else np.zeros((0, table.shape[1]), np.float32)
    bounds = np.cumsum([0, *(len(word_ids) for word_ids in pieces.values())])
    return {
        word: rows[start:stop].mean(axis=0) if stop > start else np.zeros(table.shape[1], np.float32)
        for word, start, stop in zip(pieces, bounds[:-1], bounds[1:])
    }


def contextual_vectors(encode: Encode, words: list[str]) -> dict[str, np.ndarray]:
    distinct = list(dict.fromkeys(words))
    return dict(zip(distinct, np.asarray(encode(distinct), dtype=np.float32)))


def word_spearman(pairs: WordPairs, vectors: dict[str, np.ndarray], scored: np.ndarray) -> float:
    """Spearman x100 between the scored pairs' cosines and their gold scores."""
    from scipy.stats import spearmanr  # scipy.stats takes ~0.7 s to import: loaded only when words are scored

    left = unit_rows(np.stack([vectors[w] for w, keep in zip(pairs.words1, scored) if keep]))
    right = unit_rows(np.stack([vectors[w] for w, keep in zip(pairs.words2, scored) if keep]))
    cosines = np.einsum("ij,ij->i", left, right)
    gold = pairs.scores[scored]
    if np.ptp(cosines) == 0 or np.ptp(gold) == 0:
        raise EdgeembError(
            "word similarity: every scored pair has the same cosine or gold score; Spearman is undefined"
        )
    return float(spearmanr(cosines, gold).statistic * 100)
