"""Prompts: evaluation encodes STS with the model's STS prompt and retrieval with its query and
document prompts where the model defines them, says so in the report, takes overrides, and
refuses a prompt the model does not define in one line."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.pipeline import EvaluationData, evaluate_quality
from edgeemb.sources import open_model
from edgeemb.table import DenseTable

PROMPTS = {"STS": "the way ", "query": "what ", "document": "water "}  # words of the tiny model's vocabulary


@pytest.fixture(scope="module")
def prompted_model(tiny_model, tmp_path_factory):
    """The tiny model with prompts in its config_sentence_transformers.json, as EmbeddingGemma has."""
    folder = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(tiny_model, folder)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config.update(prompts=PROMPTS, default_prompt_name=None)
    config_file.write_text(json.dumps(config))
    return folder


def _quality(model_path, tiny_sts, tiny_beir=None, prompts=()):
    model = open_model(str(model_path))
    data = EvaluationData(sts=tiny_sts, beir=tiny_beir, prompts=prompts)
    return evaluate_quality(model, DenseTable(model.table.weight.copy()), data)


def test_the_models_prompts_are_used_and_reported_and_change_the_figures(prompted_model, tiny_model, tiny_sts):
    prompted = _quality(prompted_model, tiny_sts).sts
    plain = _quality(prompted_model, tiny_sts, prompts=("sts=none",)).sts
    unprompted_model = _quality(tiny_model, tiny_sts).sts
    assert prompted.prompt == "STS" and plain.prompt is None and unprompted_model.prompt is None
    assert plain.original == pytest.approx(unprompted_model.original)  # none: the texts as they are
    assert prompted.original != plain.original  # the prompt reached the model (equal without it)
    chosen = _quality(prompted_model, tiny_sts, prompts=("sts=query",)).sts
    assert chosen.prompt == "query" and chosen.original != prompted.original


def test_retrieval_takes_the_query_and_document_prompts(prompted_model, tmp_path, tiny_sts):
    from tests.evaluate.test_sentence import write_beir

    beir = write_beir(
        tmp_path / "beir",
        [{"_id": f"d{i}", "text": text} for i, text in enumerate(["the water was long", "people made a way"])],
        [{"_id": "q1", "text": "long water"}],
        [("q1", "d0", 1)],
    )
    retrieval = _quality(prompted_model, tiny_sts, beir).retrieval
    assert (retrieval.query_prompt, retrieval.document_prompt) == ("query", "document")


def test_a_prompt_the_model_does_not_define_is_one_line(prompted_model, tiny_sts, tmp_path):
    out = tmp_path / "out"
    runner = CliRunner()
    assert runner.invoke(main, ["compress", str(prompted_model), "-r", "int8", "-o", str(out)]).exit_code == 0
    result = runner.invoke(main, ["evaluate", str(out), "--sts", str(tiny_sts), "--prompt", "sts=classification"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip() == (
        "Error: --prompt sts=classification: the model defines no prompt 'classification' "
        "(its prompts: STS, document, query)"
    )
    result = runner.invoke(main, ["evaluate", str(out), "--sts", str(tiny_sts), "--prompt", "title=STS"])
    assert result.output.strip() == "Error: --prompt 'title=STS': expected ROLE=NAME, ROLE one of sts, query, document"
    done = runner.invoke(main, ["evaluate", str(out), "--sts", str(tiny_sts), "--json"])
    assert json.loads(done.output)["quality"]["sts"]["prompt"] == "STS"
