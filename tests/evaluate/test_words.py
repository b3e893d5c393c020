"""Word-level probes: coverage, static word vectors and Spearman by hand, the static and contextual
figures of a compressed table (a trimmed vocabulary retokenises), and a file with no covered word."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import WordPairs
from edgeemb.evaluate.words import coverage, static_vectors, word_pieces, word_spearman
from edgeemb.pipeline import EvaluationData, evaluate_quality
from edgeemb.recipe import parse_recipe
from edgeemb.sources import open_model
from edgeemb.table import DenseTable
from tests.conftest import WORDS, data_file

PIECES = {" cat": [1], " dog": [2], " hot dog": [3, 2], " zzz": [0]}  # 0 is the unknown piece


def tokenize(text: str) -> list[int]:
    return PIECES[text]


def pairs(*rows: tuple[str, str, float]) -> WordPairs:
    return WordPairs([a for a, _, _ in rows], [b for _, b, _ in rows], np.asarray([s for _, _, s in rows]))


def test_coverage_counts_single_split_and_unknown_words_and_scores_only_covered_pairs():
    words = pairs(("cat", "dog", 5.0), ("hot dog", "dog", 8.0), ("zzz", "cat", 1.0))
    pieces = word_pieces(words.words1 + words.words2, tokenize, unk_id=0)
    assert pieces == {"cat": [1], "hot dog": [3, 2], "zzz": [], "dog": [2]}
    figures, scored = coverage(words, pieces)
    assert (figures.words, figures.single_piece, figures.split, figures.uncovered) == (4, 2, 1, 1)
    assert figures.pieces_per_word == pytest.approx(4 / 3) and figures.pairs_scored == 2
    assert scored.tolist() == [True, True, False]


def test_static_vectors_are_the_mean_of_the_pieces_rows():
    table = DenseTable(np.arange(12, dtype=np.float32).reshape(4, 3))
    vectors = static_vectors(table, {"hot dog": [3, 2], "cat": [1], "zzz": []})
    assert vectors["hot dog"].tolist() == [7.5, 8.5, 9.5]
    assert vectors["cat"].tolist() == [3, 4, 5] and not vectors["zzz"].any()


def test_word_spearman_follows_the_ranks_of_the_cosines():
    words = pairs(("a", "b", 1.0), ("a", "c", 2.0), ("a", "d", 3.0))
    angle = {"a": 0.0, "b": 1.2, "c": 0.6, "d": 0.1}  # cosine to "a" grows from b to d, as the gold scores
    vectors = {w: np.asarray([np.cos(t), np.sin(t)], np.float32) for w, t in angle.items()}
    scored = np.ones(3, bool)
    assert word_spearman(words, vectors, scored) == pytest.approx(100)
    reversed_vectors = {**vectors, "b": vectors["d"], "d": vectors["b"]}
    assert word_spearman(words, reversed_vectors, scored) == pytest.approx(-100)
    with pytest.raises(EdgeembError, match="Spearman is undefined"):
        word_spearman(words, {w: vectors["a"] for w in angle}, scored)


@pytest.fixture
def word_file(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["word1\tword2\tscore"]
    lines += [f"{a}\t{b}\t{rng.uniform(0, 10):.2f}" for a, b in zip(WORDS[:40], WORDS[40:80])]
    path = tmp_path / "words.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_compressed_table_is_scored_with_its_own_rows_static_and_contextual(tiny_model, word_file):
    model = open_model(str(tiny_model))
    same = evaluate_quality(model, DenseTable(model.table.weight.copy()), EvaluationData(words=(word_file,)))
    words = same.words[0]
    assert words.pairs == words.pairs_scored == 40 and words.single_piece == words.words == 80
    assert words.static_compressed == pytest.approx(words.static_original)
    assert words.contextual_compressed == pytest.approx(words.contextual_original, abs=1e-6)
    shuffled = np.random.default_rng(0).permutation(model.table.weight)
    other = evaluate_quality(model, DenseTable(shuffled), EvaluationData(words=(word_file,))).words[0]
    assert other.static_original == pytest.approx(words.static_original)
    assert abs(other.static_compressed - words.static_original) > 1
    assert abs(other.contextual_compressed - words.contextual_original) > 1


def test_a_trimmed_vocabulary_retokenises_the_words(tiny_model, word_file, tmp_path):
    from edgeemb.pipeline import compress

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(WORDS[:80]) + "\n")
    recipe = parse_recipe({"name": "trim", "steps": [{"trim_vocab": {"corpus": [str(corpus)], "holdout": 0}}]})
    result = compress(tiny_model, recipe, tmp_path / "out", data=EvaluationData(words=(word_file,)))
    assert result.report.table.vocabulary.rows < 192
    words = result.report.quality.words[0]
    # every word is a kept piece and the trimmed table's rows are the original rows, renumbered
    assert words.static_compressed == pytest.approx(words.static_original)


@pytest.mark.real
def test_the_causal_lm_static_table_is_scored_without_a_contextual_figure():
    model = open_model("smollm2-135m")
    simlex = data_file("word_similarity", "simlex999.tsv")
    words = evaluate_quality(model, model.table, EvaluationData(words=(simlex,))).words[0]
    assert words.contextual_original is None and words.static_compressed == pytest.approx(words.static_original)
    # ' ' + word: the pieces running text uses (most SimLex words are one piece, bare they are split)
    assert words.pairs_scored == 999 and words.single_piece > 0.9 * words.words


def test_a_word_file_with_no_covered_word_is_one_line_and_writes_nothing(tiny_model, tmp_path):
    path = tmp_path / "words.tsv"
    path.write_text("word1\tword2\tscore\n日本\t東京\t5\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", str(tiny_model), "-o", str(out), "--words", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "Error: no word pair has both words in the vocabulary (2 of 2 words tokenise to nothing but the unknown piece)"
    ]
    assert not out.exists()


def test_cli_evaluate_reports_words_in_json(tiny_model, word_file, tmp_path):
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["compress", str(tiny_model), "-r", "int8", "-o", str(out)]).exit_code == 0
    result = CliRunner().invoke(main, ["evaluate", str(out), "--words", str(word_file), "--json"])
    assert result.exit_code == 0, result.output
    words = json.loads(result.output)["quality"]["words"][0]
    assert words["pairs_scored"] == 40 and abs(words["static_compressed"] - words["static_original"]) < 5
