"""#19 problem 9 on the sentence-transformers export: the folder loaded back is held to its
tolerance against the compressed model; a folder outside it is removed and the command fails."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from edgeemb.cli import main
from edgeemb.export import verify_st
from edgeemb.export.tolerance import DEFAULTS
from edgeemb.table import DenseTable


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_a_folder_that_does_not_hold_the_table_fails_and_is_removed(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run("compress", tiny_model, "-r", "int8", "-o", out).exit_code == 0
    result = run("export", out, "--format", "st", "-o", tmp_path / "st", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verify"]["tolerances"] == DEFAULTS["st"]

    write = verify_st.export_sentence_transformers

    def wrong_rows(source, table, path):  # every id reads its neighbour's row
        return write(source, DenseTable(np.roll(table.to_dense(), 1, axis=0)), path)

    monkeypatch.setattr(verify_st, "export_sentence_transformers", wrong_rows)
    result = run("export", out, "--format", "st", "-o", tmp_path / "broken")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "verification failed: the max abs difference to the compressed model is" in result.stderr
    assert "the tolerance at most 0.0001 (max_abs_diff)" in result.stderr
    assert not (tmp_path / "broken").exists() and not [p for p in tmp_path.iterdir() if "edgeemb-tmp" in p.name]
    result = run("export", out, "--format", "st", "-o", tmp_path / "broken", "--no-verify", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["verify"] is None
    assert (tmp_path / "broken" / "modules.json").exists()
