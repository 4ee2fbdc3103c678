"""The command line: help texts, override parsing, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmlab.cli import build_parser, main, split_overrides

COMMANDS = [
    ["demo"],
    ["run"],
    ["tokenizer", "train"],
    ["tokenizer", "stats"],
    ["data", "prepare"],
    ["train"],
    ["eval"],
    ["sample"],
    ["chat"],
    ["sft"],
    ["export"],
    ["sweep"],
    ["compare"],
    ["account"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_example(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "lmlab " + " ".join(cmd) in out


def test_split_overrides():
    rest, ov = split_overrides(["train", "c.toml", "--train.lr=1e-3", "--out", "r", "--resume"])
    assert rest == ["train", "c.toml", "--out", "r", "--resume"]
    assert ov == ["train.lr=1e-3"]


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", str(tmp_path / "missing.toml")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("lmlab: error:") and "missing.toml" in err
    assert len(err.splitlines()) == 1


def test_bad_override_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nn_layer = 2\n")
    code = main(["train", str(cfg), "--model.norm=batchnorm"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "model.norm" in err and len(err.splitlines()) == 1


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "lmlab", "--help"], capture_output=True, text=True, check=True
    )
    assert "lmlab" in out.stdout and "demo" in out.stdout


def test_a_closed_output_pipe_is_not_reported_as_an_error():
    """`lmlab config-keys | head -1`: the reader closes the pipe early; lmlab stops quietly
    (status 141, as a process stopped by SIGPIPE) instead of printing "error: Broken pipe".
    The read end is closed before lmlab writes anything, so its first write fails, every time."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the writer starts
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmlab", "config-keys"], stdout=write_end, stderr=subprocess.PIPE
    )
    os.close(write_end)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err
