"""What a user reads while a command runs: no progress-bar frames in a log, the header above the
bar, and each skipped file reported once, in one wording."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lmlab import notices
from lmlab.cli import main
from lmlab.train.progress import Logger
from lmlab_train_fixtures import make_text, tiny_config, write_dataset


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", make_text(30))


def test_no_progress_bar_when_stderr_is_not_a_terminal(dataset, tmp_path, monkeypatch):
    cfg = tiny_config(dataset, tmp_path / "run", log__progress=True)
    (tmp_path / "run").mkdir()
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file
    assert Logger(tmp_path / "run", cfg, 0, resume=False).bar is None
    monkeypatch.setattr("sys.stderr", FakeTTY())  # a terminal
    logger = Logger(tmp_path / "run", cfg, 0, resume=False)
    assert logger.bar is not None
    logger.close()


def test_training_log_has_no_carriage_return_frames(dataset, tmp_path, monkeypatch, capsys):
    from lmlab.train.loop import train

    train(tiny_config(dataset, tmp_path / "run", log__progress=True, train__max_steps=6))
    out = capsys.readouterr()
    assert "\r" not in out.err and "\r" not in out.out
    assert "training " in out.out and "step 6/6" in out.out


def test_header_goes_through_the_bar(dataset, tmp_path, monkeypatch):
    from lmlab.train.loop import train

    monkeypatch.setattr("sys.stderr", FakeTTY())
    printed: list[str] = []
    real = Logger.print
    monkeypatch.setattr(
        Logger, "print", lambda self, line: printed.append(line) or real(self, line)
    )
    train(tiny_config(dataset, tmp_path / "run", log__progress=True, train__max_steps=3))
    assert printed and printed[0].startswith(
        "training "
    )  # written above the bar, not into its line


def test_a_skipped_file_is_reported_once_in_one_wording(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(notices, "_said", set())
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.py").write_text("def f(x):\n    return x + 1\n" * 20, encoding="utf-8")
    (src / "latin1.py").write_bytes(b"# caf\xe9\nx = 1\n")
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(src),
                "--vocab-size",
                "300",
                "--special-token",
                "<|endoftext|>",
                "--out",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "data",
                "prepare",
                "--input",
                str(src),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--out",
                str(tmp_path / "ds"),
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "latin1.py" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("lmlab: warning: ") and "byte 0xe9 at byte offset 5" in lines[0]
    import json

    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())  # still counted and named there
    assert meta["filter"]["files_skipped"] == {"undecodable": 1}
