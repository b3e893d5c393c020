"""Every output appears whole or not at all, and --force replaces only what edgeemb wrote: a
folder holding the user's files, a file edgeemb did not export, and the previous good output of
a run that then fails are all left exactly as they were."""

import os

import pytest

from edgeemb.errors import EdgeembError
from edgeemb.outputs import owned, staged
from tests.test_cli import assert_one_line_error, folder_bytes, run


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_force_never_replaces_a_folder_edgeemb_did_not_write(tiny_model, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert_one_line_error(run("compress", tiny_model, "-o", mine, "--force"), "edgeemb did not write this folder")
    assert folder_bytes(mine) == {"notes.txt": b"my notes"}
    # A manifest that is not edgeemb's does not make the folder edgeemb's either.
    (mine / "manifest.json").write_text('{"name": "my project"}')
    assert_one_line_error(run("compress", tiny_model, "-o", mine, "--force"), "edgeemb did not write this folder")
    assert _names(tmp_path) == ["mine"] and _names(mine) == ["manifest.json", "notes.txt"]


def test_force_never_replaces_a_file_edgeemb_did_not_write(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    for name, command in (
        ("mine.onnx", ("export", out, "--format", "onnx", "-o")),
        ("mine.png", ("inspect", tiny_model, "--plot")),
    ):
        (tmp_path / name).write_bytes(b"the user's own file")
        assert_one_line_error(run(*command, tmp_path / name, "--force"), "edgeemb did not write this file")
        assert (tmp_path / name).read_bytes() == b"the user's own file"
    assert _names(tmp_path) == ["mine.onnx", "mine.png", "out"]


def test_force_replaces_what_edgeemb_wrote(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    assert run("export", out, "--format", "onnx", "-o", tmp_path / "m.onnx").exit_code == 0
    assert run("inspect", tiny_model, "--plot", tmp_path / "m.png").exit_code == 0
    assert all(owned(tmp_path / name) for name in ("out", "m.onnx", "m.png"))
    assert run("compress", tiny_model, "-r", "int8", "-o", out, "--force").exit_code == 0
    assert run("export", out, "--format", "onnx", "-o", tmp_path / "m.onnx", "--force").exit_code == 0
    assert run("inspect", tiny_model, "--plot", tmp_path / "m.png", "--force").exit_code == 0
    assert _names(tmp_path) == ["m.onnx", "m.png", "m.tokenizer.json", "out"]  # the ONNX's tokenizer beside it


def test_a_failing_compress_with_force_keeps_the_previous_output(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-r", "int8", "-o", out).exit_code == 0
    before = folder_bytes(out)
    recipe = tmp_path / "r.yaml"  # its export step fails: a sentence-transformers model does not export to GGUF
    recipe.write_text("steps:\n  - quantize: {format: int4}\nexport: {format: gguf, type: Q8_0}\n")
    assert_one_line_error(
        run("compress", tiny_model, "-r", recipe, "-o", out, "--force"), "llama.cpp runs causal LMs here"
    )
    assert folder_bytes(out) == before
    assert _names(tmp_path) == ["out", "r.yaml"]  # nothing of the failed run is left
    assert_one_line_error(
        run("compress", tiny_model, "-r", recipe, "-o", tmp_path / "new"), "llama.cpp runs causal LMs here"
    )
    assert _names(tmp_path) == ["out", "r.yaml"]


def test_a_failing_export_with_force_keeps_the_previous_file(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    assert run("export", out, "--format", "onnx").exit_code == 0
    before = folder_bytes(out)

    def fail(*args, **kwargs):
        raise EdgeembError("verification failed")

    monkeypatch.setattr("edgeemb.export.onnx.verify_onnx", fail)
    assert_one_line_error(run("export", out, "--format", "onnx", "--force"), "verification failed")
    assert folder_bytes(out) == before


def test_staged_leaves_nothing_on_error_and_removes_dead_runs_temporaries(tmp_path):
    target = tmp_path / "a.md"
    target.write_text("<!-- written by edgeemb 0 -->\nold\n")
    with pytest.raises(KeyboardInterrupt), staged(target, force=True) as temporary:
        temporary.write_text("half")
        (temporary.parent / (temporary.name.removesuffix(".md") + ".extra.json")).write_text("{}")
        raise KeyboardInterrupt  # a signal mid-write
    assert _names(tmp_path) == ["a.md"] and target.read_text().endswith("old\n")
    dead = tmp_path / f".a.edgeemb-tmp-{2**22 + 1}.md"  # above any pid the kernel hands out
    dead.write_text("left by a killed run")
    alive = tmp_path / f".a.edgeemb-tmp-{os.getppid()}.md"
    alive.write_text("another run, still writing")
    with staged(target, force=True) as temporary:
        temporary.write_text("<!-- written by edgeemb 0 -->\nnew\n")
        (temporary.parent / (temporary.name.removesuffix(".md") + ".extra.json")).write_text("{}")
    assert _names(tmp_path) == [alive.name, "a.extra.json", "a.md"] and target.read_text().endswith("new\n")


def test_the_working_folder_is_never_replaced(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    before = folder_bytes(out)
    monkeypatch.chdir(out)
    for target in (".", "..", str(out)):
        assert_one_line_error(run("compress", tiny_model, "-o", target, "--force"), "is the working folder or holds it")
    assert folder_bytes(out) == before
