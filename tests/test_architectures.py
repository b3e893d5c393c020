"""The architecture matrix (#19): a tiny random model of each architecture edgeemb deploys, built on
the fly, taken inspect -> compress -> export -> load and run in its runtime, the export's check
passing. Hugging Face causal LMs go to GGUF through llama.cpp's own converter and run in llama.cpp
(the export fails unless transformers with the same table predicts its greedy tokens);
sentence-transformers encoders go to ONNX and run in onnxruntime against PyTorch."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.export.tolerance import DEFAULTS
from edgeemb.ggufio import TOKEN_EMBD, read_gguf_header
from tests.tiny_models import CAUSAL_LMS, SENTENCE_ENCODERS, causal_lm, sentence_encoder

# the llama.cpp architecture the converter writes for each Hugging Face one
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3", "phi3": "phi3"}


def _json(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sentencepiece") is None,
    reason="llama-cpp-python runs the exports; sentencepiece reads the tiny models' tokenizer for the converter",
)
@pytest.mark.parametrize("arch", CAUSAL_LMS)
def test_a_causal_lm_runs_in_llama_cpp(arch, tmp_path):
    model = causal_lm(tmp_path / arch, arch)
    facts = _json("inspect", str(model))["model"]
    assert (facts["architecture"], facts["vocab"], facts["dim"], facts["tied"]) == (
        "gemma3_text" if arch == "gemma3" else arch,
        320,
        64,
        True,
    )
    _json("compress", str(model), "-r", "int4", "-o", str(tmp_path / "out"))
    report = _json("export", str(tmp_path / "out"), "--format", "gguf", "--type", "Q8_0")
    exported = read_gguf_header(tmp_path / "out" / "model.gguf")
    assert exported.metadata["general.architecture"] == GGUF_ARCHITECTURES[arch]
    assert exported.tensor(TOKEN_EMBD).type_name == report["export"]["tensor_type"] == "Q8_0"
    verify = report["verify"]
    assert len(verify["export"]["greedy_ids"]) == 32 and verify["export"]["decode_tokens_per_s"] > 0
    assert verify["greedy_tokens_equal_to_transformers"] >= DEFAULTS["gguf-hf"]["greedy_tokens_equal_to_transformers"]


@pytest.mark.parametrize("arch", SENTENCE_ENCODERS)
def test_a_sentence_encoder_runs_in_onnxruntime(arch, tmp_path):
    model = sentence_encoder(tmp_path / arch, arch)
    facts = _json("inspect", str(model))["model"]
    assert (facts["format"], facts["vocab"], facts["dim"], facts["tied"]) == ("sentence-transformers", 192, 64, None)
    _json("compress", str(model), "-r", "int4", "-o", str(tmp_path / "out"))
    report = _json("export", str(tmp_path / "out"), "--format", "onnx")
    assert report["export"]["table"].startswith("int4") and (tmp_path / "out" / "model.onnx").is_file()
    assert report["verify"]["checker"] == "ok" and report["verify"]["max_abs_diff"] < 1e-3
