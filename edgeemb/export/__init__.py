"""Exporters: a compressed table into a file that a device runtime loads, each verified there.

- `edgeemb.export.gguf`: a GGUF with `token_embd.weight` rewritten, verified in llama.cpp.
- `edgeemb.export.onnx`: a whole sentence-embedding model, or an existing ONNX file with its
  embedding Gather rewritten, verified in onnxruntime.
"""
