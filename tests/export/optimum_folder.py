"""Folders as `optimum-cli export onnx` writes them, built here from a sentence-transformers model
(optimum-onnx pins a transformers older than ours, so it cannot be installed beside edgeemb): the
bare transformer exported by torch's TorchScript exporter as optimum does, inputs input_ids,
attention_mask and token_type_ids, output last_hidden_state, in model.onnx (its weights in
model.onnx_data with `external_data`), beside config.json and the tokenizer's files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def optimum_folder(model: Path, folder: Path, *, external_data: bool = False) -> Path:
    import onnx
    import torch
    from transformers import AutoModel

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Eager attention: the pattern onnxruntime's optimizer fuses into Attention, as in
            # optimum's exports of BERT models.
            self.transformer = AutoModel.from_pretrained(model, attn_implementation="eager").eval()

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    folder.mkdir(parents=True)
    ids = torch.tensor([[2, 40, 41, 3], [2, 42, 3, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Bare(),
            (ids, (ids > 0).long(), torch.zeros_like(ids)),
            folder / "model.onnx",
            dynamo=False,
            opset_version=14,
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch_size", 1: "sequence_length"} for name in (*INPUTS, "last_hidden_state")},
        )
    if external_data:
        graph = onnx.load(folder / "model.onnx")
        onnx.save(graph, folder / "model.onnx", save_as_external_data=True, location="model.onnx_data")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, folder / name)
    config = json.loads((model / "tokenizer_config.json").read_text())
    special = {key: value for key, value in config.items() if key.endswith("_token") and isinstance(value, str)}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return folder


def optimize_o2(folder: Path, hidden: int, heads: int, *, embed_layer_norm: bool = False) -> set[str]:
    """Rewrite folder/model.onnx as `optimum-cli export onnx --optimize O2` leaves it: onnxruntime's
    transformer optimizer with its BERT fusions (Attention, SkipLayerNormalization, BiasGelu;
    EmbedLayerNormalization only when asked, as optimum leaves it out by default). Returns the
    com.microsoft ops in the result."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = embed_layer_norm
    optimized = optimize_model(
        str(folder / "model.onnx"),
        model_type="bert",
        num_heads=heads,
        hidden_size=hidden,
        optimization_options=options,
        opt_level=1,
    )
    optimized.save_model_to_file(str(folder / "model.onnx"))
    return {node.op_type for node in optimized.model.graph.node if node.domain == "com.microsoft"}


def perturb_weights(path: Path, count: int, scale: float = 0.5, seed: int = 0) -> list[str]:
    """Add noise to `count` float weights of the graph other than its largest 2-D table (the word
    embedding): a graph that is no longer its source model, as a fine-tuned or edited one is."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path)
    floats = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1]
    embedding = max((t for t in floats if len(t.dims) == 2), key=lambda t: t.dims[0])
    chosen = [t for t in floats if t is not embedding and np.prod(t.dims) > 1][:count]
    rng = np.random.default_rng(seed)
    for tensor in chosen:
        values = numpy_helper.to_array(tensor)
        noisy = values + scale * values.std() * rng.standard_normal(values.shape).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    onnx.save(graph, path)
    return [tensor.name for tensor in chosen]
