"""The measured program of `edgeemb bench --emulate` for an ONNX file: run inside the aarch64
Python of edgeemb.bench.instructions, where only numpy and onnxruntime are installed (no edgeemb).

    python guest.py MODEL.onnx PASSES < IDS.json

Runs the first sentence once (first-run allocations), then PASSES passes over every sentence, one
sentence per call, on one thread: the counted difference between 0 and 1 passes is the work of
one pass. IDS.json, on stdin, holds one list of token ids per sentence, tokenised on the host.
"""

import json
import sys

import numpy as np
import onnxruntime as ort

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def feed(session: ort.InferenceSession, ids: list[int]) -> dict:
    row = np.asarray([ids], np.int64)
    values = {"input_ids": row, "attention_mask": np.ones_like(row), "token_type_ids": np.zeros_like(row)}
    return {
        entry.name: values[entry.name].astype(np.int32 if entry.type == "tensor(int32)" else np.int64)
        for entry in session.get_inputs()
    }


def main() -> None:
    model, passes = sys.argv[1], int(sys.argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    unknown = [entry.name for entry in session.get_inputs() if entry.name not in INPUTS]
    if unknown:
        sys.exit(f"the ONNX inputs {unknown} are not among {', '.join(INPUTS)}")
    feeds = [feed(session, ids) for ids in json.load(sys.stdin)]
    session.run(None, feeds[0])
    for _ in range(passes):
        for inputs in feeds:
            session.run(None, inputs)


if __name__ == "__main__":
    main()
