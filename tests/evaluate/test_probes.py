"""Context probes: the reader (spans found, bad rows refused by line), AUC and cosines by hand,
span vectors from the model's own token states, the built-in set, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.errors import EdgeembError
from edgeemb.evaluate.data import RELATIONS, read_probes
from edgeemb.evaluate.encoder import SentenceEncoder
from edgeemb.evaluate.probes import auc, builtin_probes, probe_cosines, separations

HEADER = "sentence_a\tspan_a\tsentence_b\tspan_b\trelation"


def write(path, *rows: str, header: str = HEADER):
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def test_reader_finds_each_span_and_reads_the_optional_language(tmp_path):
    path = write(
        tmp_path / "p.tsv",
        "the river bank\tbank\tthe bank lent money\tbank\tdifferent-sense\ten",
        "a big house\tbig\ta large house\tlarge\tsynonym\t",
        header=HEADER + "\tlanguage",
    )
    probes = read_probes(path)
    assert probes.spans_a == [(10, 14), (2, 5)] and probes.spans_b == [(4, 8), (2, 7)]
    assert probes.relations == ["different-sense", "synonym"] and probes.languages == ["en", ""]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("the river bank\tbanks\tthe bank\tbank\tsame-sense", "line 2: span 'banks' is not in its sentence 'the river"),
        ("the river bank\tbank\tthe bank\tbank\tsimilar", "line 2: relation 'similar' is not one of same-sense"),
        ("the river bank\tbank\tthe bank", "line 2: expected at least 5 tab-separated fields, got 3"),
        ("the river bank\t \tthe bank\tbank\tsame-sense", "line 2: span ' ' is not in its sentence"),
    ],
)
def test_reader_refuses_a_bad_row_by_line(tmp_path, row, message):
    with pytest.raises(EdgeembError, match=message):
        read_probes(write(tmp_path / "p.tsv", row))


def test_auc_counts_pairs_above_and_ties_as_half():
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auc(np.array([0.1]), np.array([0.2, 0.3])) == 0.0
    assert auc(np.array([0.5, 0.9]), np.array([0.5, 0.1])) == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_probe_cosines_encode_each_span_once_and_pair_them(tmp_path):
    path = write(
        tmp_path / "p.tsv",
        "ab ab\tab\tab cd\tcd\tdifferent-sense",
        "ab ab\tab\tab cd\tab\tsame-sense",
    )
    calls = []

    def encode(texts, spans):  # the span's own letters, so cosines are known
        calls.append(len(texts))
        return np.array([[t[s:e].count(c) for c in "abcd"] for t, (s, e) in zip(texts, spans)], np.float32)

    cosines = probe_cosines(encode, read_probes(path))
    assert calls == [3] and cosines.tolist() == pytest.approx([0.0, 1.0])
    found = {s.name: s.auc for s in separations(cosines, ["different-sense", "same-sense"])}
    assert found == {"polysemy": 1.0, "synonymy": None}


def test_a_span_vector_is_the_mean_of_the_models_token_states_over_the_span(tiny_model):
    encoder = SentenceEncoder(tiny_model)
    text = "the water was long"
    whole = encoder.original_spans([text], [(0, len(text))])[0]
    states = encoder._model.encode([text], output_value="token_embeddings", convert_to_numpy=True)[0]
    assert np.allclose(whole, states[1:-1].mean(axis=0), atol=1e-5)  # [CLS] and [SEP] overlap no span
    word = encoder.original_spans([text], [(4, 9)])[0]
    assert np.allclose(word, states[2], atol=1e-5)  # "water" is one piece, the second token after [CLS]


def test_the_builtin_probe_set_reads_and_covers_every_relation_in_four_languages():
    probes = read_probes(builtin_probes())
    assert set(probes.relations) == set(RELATIONS) and set(probes.languages) == {"en", "de", "fr", "es"}
    english = [r for r, language in zip(probes.relations, probes.languages) if language == "en"]
    assert min(english.count(relation) for relation in RELATIONS) >= 16


def test_cli_runs_probes_for_original_and_compressed(tiny_model, tmp_path):
    path = write(
        tmp_path / "p.tsv",
        "the water was long\twater\tthe water is little\twater\tsame-sense\ten",
        "the water was long\twater\tthe way out\tway\tdifferent-sense\ten",
        "she made time\tmade\tshe did time\tdid\tsynonym\ten",
        "the long way\tlong\tmy long day\tlong\tdifferent-sense\tde",
        header=HEADER + "\tlanguage",
    )
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["compress", str(tiny_model), "-r", "int8", "-o", str(out)]).exit_code == 0
    result = CliRunner().invoke(main, ["evaluate", str(out), "--probes", str(path), "--json"])
    assert result.exit_code == 0, result.output
    probes = json.loads(result.output)["quality"]["probes"]
    assert probes["probes"] == 4 and [r["probes"] for r in probes["relations"]] == [1, 2, 1]
    polysemy, synonymy = probes["separations"]
    assert polysemy["name"] == "polysemy" and polysemy["original"] in (0.0, 0.5, 1.0)
    assert probes["languages"]["de"][0]["original"] is None  # German has no same-sense probe


def test_cli_a_probe_whose_span_is_not_in_its_sentence_is_one_line(tiny_model, tmp_path):
    path = write(tmp_path / "p.tsv", "the river bank\tshore\tthe bank\tbank\tsame-sense")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", str(tiny_model), "-o", str(out), "--probes", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip() == (f"Error: {path} line 2: span 'shore' is not in its sentence 'the river bank'")
    assert not out.exists()


@pytest.mark.real
def test_minilm_tells_senses_apart_and_int4_keeps_it():
    """MiniLM's polysemy AUC on the built-in English probes is well above chance, and its int4
    table moves it by less than 0.02."""
    from edgeemb.pipeline import EvaluationData, evaluate_quality
    from edgeemb.recipe import load_recipe
    from edgeemb.sources import open_model

    model = open_model("minilm")
    table = load_recipe("int4").apply(model.table)
    probes = evaluate_quality(model, table, EvaluationData(builtin_probes=True)).probes
    english = {s.name: s for s in probes.languages["en"]}
    assert english["polysemy"].original > 0.75
    assert abs(english["polysemy"].compressed - english["polysemy"].original) < 0.02
