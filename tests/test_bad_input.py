"""The bad-input corpus of issue #22: each class of hostile or unlucky input, made on the fly from
tiny files and run through the edgeemb command. Every case must end with a non-zero exit, one
line on stderr and no traceback, nothing written beside the output (no temporaries left), an
existing output exactly as it was, and within a time bound (30 s). A FIFO runs in a child process
killed at that bound, under a 2 GiB address-space cap: a reader that opened it would block
forever. (The child alone takes 1-3 s on an idle 2-core machine, more on a loaded one: a tighter
bound would fail on load, not on a hang.)"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeemb.ggufio import TOKEN_EMBD, read_gguf_header
from tests.export.test_onnx import onnx_with_data_outside
from tests.sources.test_gguf import write_gguf
from tests.test_cli import assert_one_line_error, run

_CHILD_MEMORY = 2 << 30


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`: a file's bytes, or the kind of anything else (d: folder, p: FIFO)."""
    entries: dict[str, bytes | str] = {}
    for entry in sorted(folder.rglob("*")):
        mode = entry.lstat().st_mode
        entries[str(entry.relative_to(folder))] = entry.read_bytes() if stat.S_ISREG(mode) else stat.filemode(mode)[0]
    return entries


def refused(*args, fragment: str, watch: Path, seconds: float = 30) -> None:
    """`edgeemb ARGS` fails in one line holding `fragment`, within `seconds`, and leaves `watch` as it was."""
    before = snapshot(watch)
    start = time.monotonic()
    result = run(*args)
    assert time.monotonic() - start < seconds
    assert_one_line_error(result, fragment)
    assert snapshot(watch) == before  # nothing written, no temporaries, an existing output intact


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY, _CHILD_MEMORY))


def refused_in_child(*args, fragment: str, watch: Path, seconds: float = 30) -> None:
    """As `refused`, in a child process killed after `seconds` (a hang fails the test)."""
    before = snapshot(watch)
    done = subprocess.run(
        [sys.executable, "-m", "edgeemb.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=seconds,
        stdin=subprocess.DEVNULL,
        preexec_fn=_cap_memory,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and fragment in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert snapshot(watch) == before


@pytest.fixture(scope="module")
def tiny_out(tiny_model, tmp_path_factory) -> Path:
    """The tiny model compressed with the default recipe (copy it before changing it)."""
    out = tmp_path_factory.mktemp("tiny-out") / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    return out


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def _fifo(path: Path) -> Path:
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


# --- GGUF: tensors laid out as llama.cpp requires --------------------------------------------------


def _offset_field(path: Path, name: str) -> int:
    """Where tensor `name`'s data offset (u64, relative to the data section) is stored in the file."""
    header = read_gguf_header(path)
    blob = path.read_bytes()
    at = header.infos_offset
    for _ in header.tensors:
        (length,) = struct.unpack_from("<Q", blob, at)
        found = blob[at + 8 : at + 8 + length].decode()
        (n_dims,) = struct.unpack_from("<I", blob, at + 8 + length)
        at += 8 + length + 4 + 8 * n_dims + 4
        if found == name:
            return at
        at += 8
    raise KeyError(name)


def _patched(path: Path, at: int, value: bytes, slack: int = 0) -> Path:
    """`path` with `value` written at byte `at` and `slack` zero bytes appended (room to move into)."""
    blob = bytearray(path.read_bytes())
    blob[at : at + len(value)] = value
    path.write_bytes(bytes(blob) + bytes(slack))
    return path


def _gguf_with_output(tmp_path: Path) -> tuple[Path, Path]:
    """A valid tiny GGUF and an existing edgeemb output compressed from it (which --force must keep)."""
    good = tmp_path / "good.gguf"
    write_gguf(good)
    out = tmp_path / "out"
    assert run("compress", good, "-o", out).exit_code == 0
    return good, out


def test_gguf_tensors_sharing_bytes_are_refused(tmp_path):
    good, out = _gguf_with_output(tmp_path)
    bad = tmp_path / "overlap.gguf"
    shutil.copy(good, bad)
    _patched(bad, _offset_field(bad, "blk.0.attn_q.weight"), struct.pack("<Q", 0))  # onto token_embd's bytes
    fragment = "tensor 'blk.0.attn_q.weight' (bytes"
    for args in (("inspect", bad), ("compress", bad, "-o", out, "--force")):
        refused(*args, fragment=fragment, watch=tmp_path)
    refused("inspect", bad, fragment=f"overlaps tensor '{TOKEN_EMBD}'", watch=tmp_path)


def test_gguf_tensor_offsets_off_the_alignment_are_refused(tmp_path):
    good, out = _gguf_with_output(tmp_path)
    header = read_gguf_header(good)
    misaligned = tmp_path / "misaligned.gguf"
    shutil.copy(good, misaligned)
    offset = header.tensor("blk.0.attn_q.weight").offset - header.data_offset + 16
    _patched(misaligned, _offset_field(misaligned, "blk.0.attn_q.weight"), struct.pack("<Q", offset), slack=32)
    refused(
        "inspect",
        misaligned,
        fragment=f"starts at data offset {offset}, not a multiple of general.alignment 32",
        watch=tmp_path,
    )
    refused(
        "compress", misaligned, "-o", out, "--force", fragment="not a multiple of general.alignment", watch=tmp_path
    )

    odd = tmp_path / "alignment-48.gguf"
    write_gguf(odd, alignment=32)
    span = read_gguf_header(odd).spans["general.alignment"]
    _patched(odd, span.end - 4, struct.pack("<I", 48), slack=256)  # llama.cpp wants a power of two
    refused("inspect", odd, fragment="general.alignment is 48, not a power of two", watch=tmp_path)


def test_a_truncated_gguf_is_refused(tmp_path):
    good, out = _gguf_with_output(tmp_path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-100])
    refused("compress", cut, "-o", out, "--force", fragment="truncated GGUF file", watch=tmp_path)


# --- anything but a regular file is refused before it is opened ----------------------------------


def _model_with_fifo(name: str):
    def build(tmp_path: Path, tiny_model: Path, tiny_out: Path) -> tuple:
        model = _copy(tiny_model, tmp_path / "model")
        _fifo(model / name)
        return ("inspect", model)

    return build


def _out_with_fifo(name: str):
    def build(tmp_path: Path, tiny_model: Path, tiny_out: Path) -> tuple:
        out = _copy(tiny_out, tmp_path / "out")
        _fifo(out / name)
        return ("evaluate", out)

    return build


def _data_fifo(option: str):
    def build(tmp_path: Path, tiny_model: Path, tiny_out: Path) -> tuple:
        out = _copy(tiny_out, tmp_path / "out")
        return ("compress", tiny_model, "-o", out, "--force", option, _fifo(tmp_path / "data"))

    return build


def _beir_fifo(tmp_path: Path, tiny_model: Path, tiny_out: Path) -> tuple:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "queries.jsonl").write_text('{"_id": "q", "text": "the"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    _fifo(beir / "corpus.jsonl")
    return ("compress", tiny_model, "-o", tmp_path / "new", "--beir", beir)


def _corpus_fifo(step: str):
    def build(tmp_path: Path, tiny_model: Path, tiny_out: Path) -> tuple:
        corpus = _fifo(tmp_path / "corpus.txt")
        option = f"[{corpus}]" if step == "trim_vocab" else str(corpus)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"steps:\n  - {step}: {{corpus: {option}}}\n")
        return ("compress", tiny_model, "-r", recipe, "-o", tmp_path / "new")

    return build


FIFOS = {
    "gguf model": (lambda tmp_path, *_: ("inspect", _fifo(tmp_path / "model.gguf")), "model file is a FIFO"),
    "config.json": (_model_with_fifo("config.json"), "config.json is a FIFO"),
    "tokenizer.json": (_model_with_fifo("tokenizer.json"), "tokenizer.json is a FIFO"),
    "modules.json": (_model_with_fifo("modules.json"), "modules.json is a FIFO"),
    "model.safetensors": (_model_with_fifo("model.safetensors"), "safetensors file is a FIFO"),
    "a module's config.json": (_model_with_fifo("1_Pooling/config.json"), "config.json is a FIFO"),
    "table": (_out_with_fifo("table.safetensors"), "table file is a FIFO"),
    "manifest": (_out_with_fifo("manifest.json"), "manifest.json is a FIFO"),
    "sts": (_data_fifo("--sts"), "STS file is a FIFO"),
    "texts": (_data_fifo("--texts"), "text file is a FIFO"),
    "beir": (_beir_fifo, "BEIR corpus.jsonl is a FIFO"),
    "recipe": (_data_fifo("-r"), "not a regular file"),
    "trim_vocab corpus": (_corpus_fifo("trim_vocab"), "trim_vocab corpus is a FIFO"),
    "mixed_precision corpus": (_corpus_fifo("mixed_precision"), "mixed_precision corpus is a FIFO"),
}


@pytest.mark.parametrize("case", FIFOS)
def test_a_fifo_is_refused_at_once(case, tiny_model, tiny_out, tmp_path):
    build, fragment = FIFOS[case]
    refused_in_child(*build(tmp_path, tiny_model, tiny_out), fragment=fragment, watch=tmp_path)


def test_a_device_is_refused(tiny_model, tiny_out, tmp_path):
    out = _copy(tiny_out, tmp_path / "out")
    refused(
        "compress",
        tiny_model,
        "-o",
        out,
        "--force",
        "--sts",
        "/dev/zero",
        fragment="/dev/zero: the STS file is a character device, not a regular file",
        watch=tmp_path,
    )


# --- malformed model folders -----------------------------------------------------------------------


MALFORMED = {
    "tokenizer.json cut short": ("tokenizer.json", '{"model": ', "not a tokenizer.json the tokenizers library reads"),
    "tokenizer.json without a vocab": ("tokenizer.json", '{"model": {"type": "WordPiece"}}', "missing field"),
    "modules.json not JSON": ("modules.json", "modules", "modules.json: unreadable JSON"),
    "modules.json an object": ("modules.json", '{"0": {}}', "modules.json: holds a JSON object, not a JSON list"),
    "modules.json of numbers": ("modules.json", "[1, 2]", "modules.json: module 0 is not a JSON object"),
    "a module outside the folder": (
        "modules.json",
        '[{"type": "Transformer", "path": "../elsewhere"}]',
        "module path '../elsewhere' leaves the model folder",
    ),
    "config.json a list": ("config.json", "[1, 2]", "config.json: holds a JSON list, not a JSON object"),
    "config.json not JSON": ("config.json", "{vocab_size: 5", "config.json: unreadable JSON"),
    "config.json a string vocab_size": (
        "config.json",
        '{"vocab_size": "192", "hidden_size": 64}',
        "no vocab_size/hidden_size",
    ),
    "a module's config a list": ("1_Pooling/config.json", "[64]", "1_Pooling/config.json: holds a JSON list"),
    "sentence_bert_config.json a list": ("sentence_bert_config.json", "[]", "sentence_bert_config.json: holds a JSON"),
    "tokenizer_config.json a string": ("tokenizer_config.json", '"x"', "tokenizer_config.json: holds a JSON string"),
    "a weight map that is a list": (
        "model.safetensors.index.json",
        '{"weight_map": ["model.safetensors"]}',
        "no weight_map object",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_model_folder_names_the_file(case, tiny_model, tiny_out, tmp_path):
    name, text, fragment = MALFORMED[case]
    model = _copy(tiny_model, tmp_path / "model")
    (model / name).write_text(text)
    out = _copy(tiny_out, tmp_path / "out")
    refused("inspect", model, fragment=fragment, watch=tmp_path)
    refused("compress", model, "-o", out, "--force", fragment=fragment, watch=tmp_path)


# --- no pickle, ever ---------------------------------------------------------------------------------


def _with_pickled_dense(tiny_model: Path, folder: Path) -> Path:
    """The tiny model with a Dense module saved as sentence-transformers saves without safetensors:
    2_Dense/config.json and 2_Dense/pytorch_model.bin (a pickle)."""
    from sentence_transformers.sentence_transformer.modules import Dense

    model = _copy(tiny_model, folder)
    (model / "2_Dense").mkdir()
    Dense(64, 32).save(str(model / "2_Dense"), safe_serialization=False)
    modules = json.loads((model / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"})
    (model / "modules.json").write_text(json.dumps(modules))
    return model


def test_edgeemb_never_unpickles(tiny_model, tiny_sts, tiny_out, tmp_path, monkeypatch):
    """With torch.load and pickle's loaders made to fail, every path through the tiny model works
    (so none reaches them), and a folder whose Dense module ships only pytorch_model.bin is refused
    in one line before anything loads it (sentence-transformers would torch.load it)."""
    import torch

    pickled = _with_pickled_dense(tiny_model, tmp_path / "pickled")
    out = _copy(tiny_out, tmp_path / "out")
    unpickled: list[str] = []

    def forbid(name):
        def load(*args, **kwargs):
            unpickled.append(name)
            raise AssertionError(f"{name} reached")

        return load

    for owner, name in ((torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(owner, name, forbid(f"{owner.__name__}.{name}"))

    fragment = "2_Dense: weights only as pickles (pytorch_model.bin), no model.safetensors; edgeemb never unpickles"
    refused("inspect", pickled, fragment=fragment, watch=tmp_path)
    refused("compress", pickled, "-o", out, "--force", "--sts", tiny_sts, fragment=fragment, watch=tmp_path)
    assert (pickled / "2_Dense" / "pytorch_model.bin").is_file()  # refused, not because it was missing

    assert run("inspect", tiny_model).exit_code == 0
    new = tmp_path / "new"
    result = run("compress", tiny_model, "-r", "int8", "-o", new, "--sts", tiny_sts)
    assert result.exit_code == 0, result.stderr
    assert run("evaluate", new, "--sts", tiny_sts).exit_code == 0
    assert run("export", new, "--format", "st").exit_code == 0  # loads the model and its export back
    assert unpickled == []


# --- evaluation data ---------------------------------------------------------------------------------


def test_an_sts_field_over_128_kib_names_the_file_and_line(tiny_model, tiny_out, tmp_path):
    sts = tmp_path / "long.tsv"
    sts.write_text(f"sentence1\tsentence2\tscore\nthe a\tthe of\t1\n{'x' * (128 << 10 | 1)}\tthe\t2\n")
    out = _copy(tiny_out, tmp_path / "out")
    refused("compress", tiny_model, "-o", out, "--force", "--sts", sts, fragment=f"{sts} line 3:", watch=tmp_path)
    refused("evaluate", out, "--sts", sts, fragment="field larger than field limit (131072)", watch=tmp_path)


def _beir(folder: Path, corpus: str, qrels: str) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus)
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "the a"}\n')
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


_CORPUS = '{"_id": "d1", "text": "the of"}\n'
_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"
DATA = {
    "sts without a column": ("--sts", "sentence1\tscore\nthe\t1\n", "lacks column(s) sentence2"),
    "sts score not a number": ("--sts", "sentence1\tsentence2\tscore\nthe\ta\thigh\n", "line 2: score 'high' is not"),
    "sts row too short": ("--sts", "sentence1\tsentence2\tscore\nthe\ta\t1\nthe a\n", "line 3: expected at least 3"),
    "sts not utf-8": ("--sts", b"sentence1\tsentence2\tscore\n\xff\xfe\ta\t1\n", "is not UTF-8 text"),
    "beir corpus not JSON": ("--beir", (_CORPUS + "{oops\n", _QRELS), "corpus.jsonl line 2: invalid JSON"),
    "beir qrels score": ("--beir", (_CORPUS, "query-id\tcorpus-id\tscore\nq1\td1\tx\n"), "score 'x' is not an integer"),
    "texts empty": ("--texts", "\n\n", "is empty"),
}


@pytest.mark.parametrize("case", DATA)
def test_malformed_evaluation_data_keeps_its_clear_error(case, tiny_model, tiny_out, tmp_path):
    option, content, fragment = DATA[case]
    if option == "--beir":
        path = _beir(tmp_path / "beir", *content)
    else:
        path = tmp_path / "data"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = _copy(tiny_out, tmp_path / "out")
    refused("compress", tiny_model, "-o", out, "--force", option, path, fragment=fragment, watch=tmp_path)


# --- output folders edgeemb did not write, or wrote in another shape ---------------------------------


@pytest.mark.parametrize("manifest", ["list", "no source"])
def test_a_manifest_of_another_shape_is_not_an_output(manifest, tiny_out, tmp_path):
    out = _copy(tiny_out, tmp_path / "out")
    data = json.loads((out / "manifest.json").read_text())
    del data["source"]
    (out / "manifest.json").write_text(json.dumps([data] if manifest == "list" else data))
    for args in (("evaluate", out), ("export", out, "--format", "onnx"), ("compare", out, tiny_out)):
        refused(*args, fragment="rerun `edgeemb compress`", watch=tmp_path)


def test_a_table_spec_that_is_not_json_is_refused(tiny_out, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    out = _copy(tiny_out, tmp_path / "out")
    table = out / "table.safetensors"
    with safe_open(str(table), framework="numpy") as handle:
        metadata = handle.metadata()
    arrays = load_file(str(table))
    save_file(arrays, str(table), metadata={**metadata, "edgeemb.table": "{not json"})
    refused("evaluate", out, fragment="table spec does not describe its arrays", watch=tmp_path)


# --- classes fixed elsewhere, kept in the corpus ------------------------------------------------------


RECIPES = {
    "format option of the wrong type": (
        'steps:\n  - quantize: {format: int4, block_size: "32"}\n',
        "block_size: Input should be a valid integer",
    ),
    "a string for a boolean": (
        'steps:\n  - quantize: {format: int4, zero_point: "no"}\n',
        "zero_point: Input should be a valid boolean",
    ),
    "an export step that fails": (
        "steps:\n  - quantize: {format: int4}\nexport: {format: gguf, type: Q8_0}\n",
        "sentence-transformers model: llama.cpp runs causal LMs here",
    ),
}


@pytest.mark.parametrize("case", RECIPES)
def test_a_bad_recipe_leaves_the_previous_output(case, tiny_model, tiny_out, tmp_path):
    text, fragment = RECIPES[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    out = _copy(tiny_out, tmp_path / "out")
    refused("compress", tiny_model, "-r", recipe, "-o", out, "--force", fragment=fragment, watch=tmp_path)


def test_a_yaml_alias_bomb_is_refused_in_bounded_memory(tiny_model, tmp_path):
    rows = ["[&l0 [" + ", ".join(["lol"] * 9) + "]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]  # 9**9 strings once expanded
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"steps:\n  - quantize: {{format: int4, block_size: {', '.join(rows)}]}}\n")
    refused_in_child(
        "compress",
        tiny_model,
        "-r",
        recipe,
        "-o",
        tmp_path / "out",
        fragment="YAML anchors and aliases",
        watch=tmp_path,
    )


def test_onnx_external_data_outside_its_folder_is_refused(tiny_out, tmp_path):
    source = onnx_with_data_outside(tmp_path)
    out = _copy(tiny_out, tmp_path / "out")
    refused(
        "export", out, "--format", "onnx", "--from", source, fragment="points outside the directory", watch=tmp_path
    )
