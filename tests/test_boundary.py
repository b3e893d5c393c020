"""The command line's edge (edgeemb.boundary): a full disk, a path through a file, a signal, an
impossible option value and an unexpected bug each end in one line and a non-zero exit, and leave
nothing written and the previous output intact."""

import errno
import os
import signal

import pytest

from edgeemb.boundary import DEBUG
from tests.test_cli import assert_one_line_error, folder_bytes, run


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_full_disk_is_one_line_and_leaves_the_old_output(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    before = folder_bytes(out)

    def full(table, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("edgeemb.artifact.save_table", full)
    result = run("compress", tiny_model, "-r", "int8", "-o", out, "--force")
    assert_one_line_error(result, "table.safetensors: the disk is full: free some space or write elsewhere")
    assert result.exit_code == 1 and folder_bytes(out) == before and _names(tmp_path) == ["out"]


def test_an_output_below_a_file_is_one_line(tiny_model, tmp_path):
    (tmp_path / "afile").write_text("mine")
    assert_one_line_error(
        run("compress", tiny_model, "-o", tmp_path / "afile" / "out"), "a file is where a folder is needed"
    )
    assert _names(tmp_path) == ["afile"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_write_removes_what_was_being_written(tiny_model, tmp_path, monkeypatch, signum):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-o", out).exit_code == 0
    before = folder_bytes(out)
    real_save = __import__("edgeemb.artifact", fromlist=["save_table"]).save_table

    def killed_while_saving(table, path):
        real_save(table, path)  # half the folder is written when the signal comes
        os.kill(os.getpid(), signum)

    monkeypatch.setattr("edgeemb.artifact.save_table", killed_while_saving)
    result = run("compress", tiny_model, "-r", "int8", "-o", out, "--force")
    assert_one_line_error(result, f"interrupted by {signal.Signals(signum).name}")
    assert result.exit_code == 128 + signum
    assert folder_bytes(out) == before and _names(tmp_path) == ["out"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI's handlers are gone after the run


def test_impossible_option_values_are_one_line(tiny_model, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text to decode\n")
    assert_one_line_error(
        run("offload", tiny_model, "--text", text, "--cache-mb", "-1"), "'--cache-mb': -1.0 is not in the range x>=0"
    )
    assert_one_line_error(run("compress", tiny_model, "--calibration-tokens", "0"), "0 is not in the range x>=1")
    assert_one_line_error(run("compress", tiny_model, "--no-such-option"), "No such option '--no-such-option'")
    assert _names(tmp_path) == ["t.txt"]


def test_an_unexpected_error_is_one_line_and_debug_shows_it(tiny_model, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("edgeemb.cli.tables.run_compress", bug)
    assert_one_line_error(
        run("compress", tiny_model, "-o", tmp_path / "o"), "this is a bug: rerun with EDGEEMB_DEBUG=1"
    )
    monkeypatch.setenv(DEBUG, "1")
    with pytest.raises(ZeroDivisionError):
        run("compress", tiny_model, "-o", tmp_path / "o")
    assert _names(tmp_path) == []


def test_a_table_holding_nan_is_refused_naming_its_rows(tiny_model, tmp_path):
    import numpy as np
    from safetensors.numpy import load_file, save_file

    model = tmp_path / "nan-model"
    import shutil

    shutil.copytree(tiny_model, model)
    weights = next(model.rglob("model.safetensors"))
    arrays = load_file(weights)
    name = next(key for key in arrays if key.endswith("word_embeddings.weight"))
    arrays[name][[5, 17]] = np.array([np.nan, np.inf], np.float32)[:, None]
    save_file(arrays, weights)
    assert_one_line_error(run("compress", model, "-o", tmp_path / "out"), "holds NaN or Inf values in 2 row(s): 5, 17")
    assert_one_line_error(run("inspect", model), "holds NaN or Inf values in 2 row(s): 5, 17")
    assert _names(tmp_path) == ["nan-model"]
