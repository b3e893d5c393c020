"""Similarities beside cosine: each one's math on hand-made vectors, STS and retrieval scored with
them (each text encoded once), and the CLI's --similarity / --fit-text / --csls-k end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import StsData, read_beir
from edgeemb.evaluate.sentence import retrieval, retrieval_by_similarity, sts_by_similarity, sts_spearman
from edgeemb.evaluate.similarity import SIMILARITIES, Centered, Cosine, Csls, Whitened, similarity
from tests.conftest import WORDS
from tests.evaluate.test_sentence import letters, write_beir
from tests.test_cli import assert_one_line_error, run

ALL = [similarity(name) for name in SIMILARITIES]


def test_each_similarity_is_registered_once_by_its_class_line() -> None:
    assert SIMILARITIES == ("cosine", "centered", "whitened", "csls")
    assert [type(kind) for kind in ALL] == [Cosine, Centered, Whitened, Csls]
    assert similarity("csls", k=3).k == 3
    with pytest.raises(EdgeembError, match="unknown similarity 'dot'"):
        similarity("dot")


def test_cosine_is_the_dot_of_unit_rows() -> None:
    rng = np.random.default_rng(1)
    queries, documents = rng.standard_normal((5, 6)), rng.standard_normal((7, 6))
    expected = (queries @ documents.T) / np.outer(np.linalg.norm(queries, axis=1), np.linalg.norm(documents, axis=1))
    np.testing.assert_allclose(Cosine().scorer(queries, documents, documents, block=2).block(0, 5), expected, rtol=1e-6)


def test_whitening_makes_the_fit_sets_covariance_the_identity() -> None:
    rng = np.random.default_rng(2)
    mixing = rng.standard_normal((5, 5)) * [8.0, 4.0, 1.0, 0.5, 0.25]  # anisotropic, as embeddings are
    fit = rng.standard_normal((200, 5)) @ mixing + 7.0
    whitened = Whitened().project(fit)(fit)
    np.testing.assert_allclose(whitened.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(5), atol=1e-4)
    # and other rows go through the same map: the mean of the fit set lands on zero
    np.testing.assert_allclose(Whitened().project(fit)(fit.mean(axis=0, keepdims=True)), 0, atol=1e-4)


# A shared offset c (every text leans the same way) fools cosine: with the fit set centred on c,
# query c + e1 is on topic with 0.2c + e1, off topic with c + e2. Cosine: 0.759 vs 0.9 (wrong);
# centred: 1/sqrt(0.64 * 9 + 1) = 0.385 vs 0 (right).
OFFSET = np.array([3.0, 0, 0, 0])
UNITS = np.eye(4)
FIT = np.array([OFFSET + sign * UNITS[k] for k in (1, 2, 3) for sign in (1, -1)])
QUERY = (OFFSET + UNITS[1])[None]
DOCUMENTS = np.array([0.2 * OFFSET + UNITS[1], OFFSET + UNITS[2]])


def test_centering_removes_a_shared_offset_cosine_is_fooled_by() -> None:
    cosine = Cosine().scorer(QUERY, DOCUMENTS, FIT, block=1).block(0, 1)[0]
    centered = Centered().scorer(QUERY, DOCUMENTS, FIT, block=1).block(0, 1)[0]
    np.testing.assert_allclose(cosine, [2.8 / np.sqrt(10 * 1.36), 0.9], rtol=1e-5)
    np.testing.assert_allclose(centered, [1 / np.sqrt(0.64 * 9 + 1), 0], atol=1e-6)
    assert cosine.argmax() == 1 and centered.argmax() == 0


def test_csls_matches_its_definition_over_blocks() -> None:
    rng = np.random.default_rng(3)
    queries, documents = rng.standard_normal((11, 5)), rng.standard_normal((9, 5))
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_d = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    cosines = unit_q @ unit_d.T
    k = 3
    r_query = np.sort(cosines, axis=1)[:, -k:].mean(axis=1)  # each query's k nearest documents
    r_document = np.sort(cosines, axis=0)[-k:].mean(axis=0)  # each document's k nearest queries
    expected = (2 * cosines - r_query[:, None] - r_document[None, :]) / 2
    for block in (1, 2, 4, 11):  # the running top-k over query blocks gives the same penalties
        scorer = Csls(k).scorer(queries, documents, documents, block)
        np.testing.assert_allclose(scorer.block(0, 11), expected, atol=1e-6)
    rows, columns = np.array([0, 5, 10]), np.array([8, 0, 3])
    np.testing.assert_allclose(scorer.pairs(rows, columns), expected[rows, columns], atol=1e-6)


def test_csls_clips_k_to_the_other_side() -> None:
    rng = np.random.default_rng(4)
    queries, documents = rng.standard_normal((2, 3)), rng.standard_normal((4, 3))
    scorer = Csls(10).scorer(queries, documents, documents, block=1)
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_d = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    cosines = unit_q @ unit_d.T
    np.testing.assert_allclose(scorer.query_penalty, cosines.mean(axis=1) / 2, atol=1e-6)
    np.testing.assert_allclose(scorer.document_penalty, cosines.mean(axis=0) / 2, atol=1e-6)


def test_csls_penalises_a_hub() -> None:
    # Three queries share a direction h; the hub is h itself, at cosine 0.71 to every query. Each
    # query's own document is near it alone (cosine 0.53). Cosine gives every query the hub; CSLS,
    # which charges the hub for being near everyone, gives each its own document.
    axes = np.eye(7)
    queries = axes[:3] + axes[3]
    own = axes[:3] + 0.9 * axes[4:7]
    documents = np.vstack([own, axes[3]])
    cosine = Cosine().scorer(queries, documents, documents, block=3).block(0, 3)
    csls = Csls(2).scorer(queries, documents, documents, block=3).block(0, 3)
    assert cosine.argmax(axis=1).tolist() == [3, 3, 3]
    assert csls.argmax(axis=1).tolist() == [0, 1, 2]


def test_whitening_refuses_fewer_texts_than_dimensions() -> None:
    Whitened().check_fit(5, 4)
    with pytest.raises(EdgeembError, match="needs at least 5 distinct texts .* got 4"):
        Whitened().check_fit(4, 4)
    with pytest.raises(EdgeembError, match="needs at least 27 distinct texts .* got 3"):
        Whitened().project(letters(["ab", "bc", "cd"]))
    for kind in (Cosine(), Centered(), Csls()):
        kind.check_fit(1, 384)  # only whitening estimates a covariance


# --- STS and retrieval scored with them ------------------------------------------------------------

PAIRS = [("ab", "ab", 5.0), ("ab", "abc", 4.0), ("ab", "ac", 3.0), ("ab", "cd", 1.0), ("bcd", "cd", 3.5)]


def sts(pairs=PAIRS) -> StsData:
    return StsData([a for a, _, _ in pairs], [b for _, b, _ in pairs], np.array([s for _, _, s in pairs]))


def test_sts_encodes_each_text_once_for_every_similarity() -> None:
    seen: list[str] = []

    def counting(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return letters(texts)

    kinds = [Cosine(), Centered(), Csls(2)]
    fit = ["xyz", "ab", "xyz", "qrs"]
    spearman = sts_by_similarity(counting, sts(), kinds, fit)
    assert sorted(seen) == sorted(["ab", "abc", "ac", "cd", "bcd"] + ["xyz", "ab", "qrs"])
    assert list(spearman) == ["cosine", "centered", "csls"]
    assert spearman["cosine"] == pytest.approx(sts_spearman(letters, sts()))


def test_sts_fit_text_changes_what_centered_subtracts() -> None:
    own = sts_by_similarity(letters, sts(), [Centered()])["centered"]
    other = sts_by_similarity(letters, sts(), [Centered()], ["z", "y", "zy"])["centered"]
    cosine = sts_spearman(letters, sts())
    # a mean m orthogonal to every sentence: centred cosine = (cos + |m|^2) / (1 + |m|^2), same ranks
    assert other == pytest.approx(cosine)
    assert own != pytest.approx(cosine)


def test_sts_whitened_with_too_few_sentences_is_one_clear_error() -> None:
    with pytest.raises(EdgeembError, match="whitened similarity needs at least 27 distinct texts .* got 5"):
        sts_by_similarity(letters, sts(), [Cosine(), Whitened()])


def test_retrieval_with_cosine_is_unchanged_and_csls_is_scored(tmp_path: Path) -> None:
    from tests.evaluate.test_sentence import TOY_CORPUS, TOY_QRELS, TOY_QUERIES

    data = read_beir(write_beir(tmp_path / "beir", TOY_CORPUS, TOY_QUERIES, TOY_QRELS))
    scores = retrieval_by_similarity(letters, data, [Cosine(), Centered(), Csls(2)])
    assert scores["cosine"] == retrieval(letters, data)
    assert {name: s.queries for name, s in scores.items()} == {"cosine": 2, "centered": 2, "csls": 2}
    assert all(0 <= s.ndcg_at_10 <= 1 for s in scores.values())


# --- the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory) -> Path:
    """80 documents of the tiny model's words (more than its 64 dimensions), 12 queries."""
    rng = np.random.default_rng(5)
    corpus = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, 8))} for i in range(80)]
    queries = [{"_id": f"q{i}", "text": corpus[i]["text"].split(" ", 4)[-1]} for i in range(12)]
    qrels = [(f"q{i}", f"d{j}", int(rng.integers(1, 3))) for i in range(12) for j in {i, *rng.choice(80, 2)}]
    return write_beir(tmp_path_factory.mktemp("beir") / "beir", corpus, queries, qrels)


def test_cli_reports_each_similarity_for_original_and_compressed(tiny_model, tiny_sts, tiny_beir, tmp_path) -> None:
    out = tmp_path / "out"
    args = ["--sts", tiny_sts, "--beir", tiny_beir, "--similarity", "csls", "--similarity", "whitened"]
    result = run("compress", tiny_model, "-r", "int4", "-o", out, *args, "--csls-k", 5, "--json")
    assert result.exit_code == 0, result.stderr
    quality = json.loads((out / "report.json").read_text())["quality"]
    assert quality == json.loads(result.stdout)["quality"]
    sts, retrieval = quality["sts"], quality["retrieval"]
    assert list(sts["similarities"]) == list(retrieval["similarities"]) == ["whitened", "csls"]  # canonical order
    whitened, csls = sts["similarities"]["whitened"], sts["similarities"]["csls"]
    assert whitened["fit"] == {"texts": 112, "source": "the STS file's sentences"} and "k" not in whitened
    assert csls["k"] == 5 and "fit" not in csls
    for figures in (whitened, csls):
        assert figures["delta"] == pytest.approx(figures["compressed"] - figures["original"])
        assert figures["original"] != pytest.approx(sts["original"])  # scored its own way, not cosine again
    assert retrieval["similarities"]["whitened"]["fit"] == {"texts": 80, "source": "the corpus documents"}
    for figures in retrieval["similarities"].values():
        for side in ("original", "compressed"):
            assert figures[side]["queries"] == 12 and 0 < figures[side]["ndcg_at_10"] <= 1
    markdown = (out / "report.md").read_text()
    assert "| STS Spearman x100, whitened |" in markdown and "| nDCG@10, csls |" in markdown
    assert "fit on the corpus documents, 80 texts" in markdown and "(k = 5)" in markdown

    # evaluate measures the same again; without --similarity the figures are left out
    evaluated = json.loads(run("evaluate", out, *args, "--csls-k", 5, "--json").stdout)["quality"]
    assert evaluated["sts"] == sts and evaluated["retrieval"] == retrieval
    plain = json.loads(run("evaluate", out, "--sts", tiny_sts, "--json").stdout)["quality"]["sts"]
    assert "similarities" not in plain and plain["original"] == sts["original"]


def test_cli_fit_text_is_used_and_recorded(tiny_model, tiny_sts, tmp_path) -> None:
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    fit = tmp_path / "fit.txt"
    fit.write_text("\n".join(" ".join(WORDS[i : i + 5]) for i in range(60)) + "\n" + WORDS[0] + "\n" + WORDS[0])
    args = ["evaluate", out, "--sts", tiny_sts, "--similarity", "centered", "--json"]
    own = json.loads(run(*args).stdout)["quality"]["sts"]["similarities"]["centered"]
    given = json.loads(run(*args, "--fit-text", fit).stdout)["quality"]["sts"]["similarities"]["centered"]
    assert given["fit"]["source"] == str(fit) and given["fit"]["texts"] == 61  # distinct lines
    assert len(given["fit"]["sha256"]) == 64
    assert given["original"] != pytest.approx(own["original"])


def test_cli_whitening_with_fewer_texts_than_dimensions_is_one_line(tiny_model, tmp_path) -> None:
    small = tmp_path / "small.tsv"
    rows = [f"{' '.join(WORDS[i : i + 3])}\t{' '.join(WORDS[i + 1 : i + 4])}\t{i % 5}" for i in range(10)]
    small.write_text("sentence1\tsentence2\tscore\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = run("compress", tiny_model, "-o", out, "--sts", small, "--similarity", "whitened")
    assert_one_line_error(result, "whitened similarity needs at least 65 distinct texts")
    assert "got 11" in result.stderr  # 10 pairs of overlapping word windows: 11 distinct sentences
    assert not out.exists()
    fit = tmp_path / "fit.txt"
    fit.write_text("one line\nanother\n")
    result = run("compress", tiny_model, "-o", out, "--sts", small, "--similarity", "whitened", "--fit-text", fit)
    assert_one_line_error(result, "needs at least 65 distinct texts to fit a 64-dimensional covariance")
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--similarity", "csls"], "--similarity scores STS and retrieval: give --sts or --beir"),
        (["--similarity", "csls", "--sts", "STS", "--fit-text", "STS"], "--fit-text is what centered and whitened"),
    ],
)
def test_cli_similarity_options_that_cannot_apply(tiny_model, tiny_sts, tmp_path, options, message) -> None:
    out = tmp_path / "out"
    result = run("compress", tiny_model, "-o", out, *[tiny_sts if o == "STS" else o for o in options])
    assert_one_line_error(result, message)
    assert not out.exists()
