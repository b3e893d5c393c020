"""Exporters: a compressed table into a file that a device runtime loads, each verified there.

- `edgeemb.export.gguf`: a GGUF with `token_embd.weight` rewritten, verified in llama.cpp; a
  Hugging Face causal LM converted to GGUF first by llama.cpp's converter (`edgeemb.export.convert`).
- `edgeemb.export.onnx`: a whole sentence-embedding model, or an existing ONNX file with its
  embedding Gather rewritten, verified in onnxruntime.
- `edgeemb.export.st`, `edgeemb.export.hf`: a sentence-transformers or transformers folder with the
  table decoded into it, loaded back and compared with the compressed model.
"""
