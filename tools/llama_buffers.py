"""llama.cpp's own account of the memory it allocates for GGUF files: its load log's buffer lines.

    python tools/llama_buffers.py FILE.gguf [FILE.gguf ...]

Each file loads in a fresh Python process with `verbose=True`; the lines llama.cpp prints about
buffer sizes (mapped weights, CPU_REPACK copies, KV cache, compute) are shown per file. It shows,
for example, that a Q4_0 token_embd gets a repacked copy for the tied output head's matmul
beside the mapped file, which is why such a file does not lower peak RSS.
"""

from __future__ import annotations

import subprocess
import sys

_LOAD = "import llama_cpp, sys; llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_batch=256, verbose=True)"


def buffer_lines(path: str) -> list[str]:
    run = subprocess.run([sys.executable, "-c", _LOAD, path], capture_output=True, text=True, check=True)
    return [line.strip() for line in run.stderr.splitlines() if "buffer size" in line]


if __name__ == "__main__":
    for file in sys.argv[1:]:
        print(file)
        for line in buffer_lines(file):
            print("   ", line)
