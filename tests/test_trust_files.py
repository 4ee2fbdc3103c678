"""Nothing of the user's is ever lost (issue 11, section 1): output guard, run folders, recipes
that skip and resume, no writes through links, fsync, stale temporaries, relocatable runs, and
datasets trained only with their own tokenizer."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.cli import build_parser, main
from lmlab.errors import CheckpointError, DataError, LmlabError
from lmlab.train.loop import train
from lmlab_train_fixtures import losses, make_text, tiny_config, write_dataset

SRC = Path(__file__).resolve().parents[1] / "src" / "lmlab"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", make_text())


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fin") / "run"
    train(tiny_config(dataset, run, train__max_steps=4, eval__samples=0))
    return run


def user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True, exist_ok=True)
    files = {"raw.txt": "my corpus\n", "notes.md": "# my notes\n"}
    for name, text in files.items():
        (path / name).write_text(text)
    return files


def assert_intact(path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert (path / name).read_text() == text, name
    assert not [p.name for p in path.parent.iterdir() if ".old-" in p.name or ".tmp-" in p.name]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmlab: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def corpus(tmp_path: Path) -> Path:
    c = tmp_path / "corpus.txt"
    if not c.exists():  # written once: a stage's key follows its inputs' modification times
        c.write_text("\n".join(make_text(40)))
    return c


# --- 1. the output guard ------------------------------------------------------------------------


def test_tokenizer_prepare_export_refuse_a_folder_of_user_files(
    tmp_path, capsys, finished_run, dataset
):
    c = corpus(tmp_path)
    tok = tmp_path / "tok"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--input",
                str(c),
                "--vocab-size",
                "64",
                "--kind",
                "char",
                "--special-token",
                "<|endoftext|>",
                "--out",
                str(tok),
            ]
        )
        == 0
    )
    capsys.readouterr()
    for argv in (
        ["tokenizer", "train", "--input", str(c), "--vocab-size", "64", "--kind", "char", "--out"],
        [
            "data",
            "prepare",
            "--input",
            str(c),
            "--tokenizer",
            str(tok),
            "--workers",
            "1",
            "--no-progress",
            "--out",
        ],
        ["export", str(finished_run), "--format", "hf", "--out"],
    ):
        mine = tmp_path / f"mine_{argv[0]}"
        files = user_folder(mine)
        assert main([*argv, str(mine)]) == 2
        err = one_line_error(capsys)
        assert str(mine) in err and "raw.txt" in err and "notes.md" in err
        assert_intact(mine, files)
        assert sorted(p.name for p in mine.iterdir()) == ["notes.md", "raw.txt"]


def test_same_kind_is_replaced_but_never_with_a_user_file_inside(tmp_path, capsys):
    c = corpus(tmp_path)
    tok = tmp_path / "tok"
    argv = [
        "tokenizer",
        "train",
        "--input",
        str(c),
        "--vocab-size",
        "64",
        "--kind",
        "char",
        "--out",
        str(tok),
    ]
    assert main(argv) == 0 and main(argv) == 0  # an lmlab tokenizer folder is replaced
    (tok / "notes.md").write_text("mine")
    capsys.readouterr()
    assert main(argv) == 2
    assert "notes.md" in one_line_error(capsys)
    assert (tok / "notes.md").read_text() == "mine"
    # a dataset folder is not a tokenizer folder
    ds = write_dataset(tmp_path / "ds", make_text(20))
    assert main([*argv[:-1], str(ds)]) == 2
    assert "dataset" in one_line_error(capsys)


@pytest.mark.parametrize("out", [".", "$PWD", ".."])
def test_out_naming_the_working_directory_is_one_line(tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "project"
    files = user_folder(work)
    c = corpus(tmp_path)
    monkeypatch.chdir(work)
    out = str(work) if out == "$PWD" else out
    for argv in (
        [
            "tokenizer",
            "train",
            "--input",
            str(c),
            "--vocab-size",
            "64",
            "--kind",
            "char",
            "--out",
            out,
        ],
        ["data", "prepare", "--input", str(c), "--tokenizer", str(c), "--out", out],
    ):
        assert main(argv) == 2
        assert "working directory" in one_line_error(capsys)
    assert_intact(work, files)
    assert sorted(p.name for p in work.iterdir()) == ["notes.md", "raw.txt"]


def test_home_and_root_are_never_outputs(tmp_path, capsys, monkeypatch):
    from lmlab.outputs import check_output

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(DataError, match="home directory"):
        check_output(home, "tokenizer")
    with pytest.raises(DataError, match="filesystem root"):
        check_output("/", "run", whole=False)


@pytest.mark.parametrize("command", ["tokenizer", "prepare", "train", "demo", "compare"])
def test_the_cli_and_the_library_refuse_the_same_folders_and_the_cli_names_the_flag(
    tmp_path, capsys, monkeypatch, dataset, finished_run, command
):
    # one guard (lmlab.outputs.refuse_protected): the home directory, which the CLI's own check
    # by name (., .., /) let through to the library, is refused by the CLI naming --out
    from lmlab.outputs import refuse_protected

    home = tmp_path / "home"
    files = user_folder(home)
    monkeypatch.setenv("HOME", str(home))
    c = corpus(tmp_path)
    argv = {
        "tokenizer": ["tokenizer", "train", "--input", str(c), "--vocab-size", "64", "--out"],
        "prepare": ["data", "prepare", "--input", str(c), "--tokenizer", str(c), "--out"],
        "train": ["train", str(finished_run / "config.toml"), "--out"],
        "demo": ["demo", "--minutes", "0.01", "--out"],
        "compare": ["compare", str(finished_run), "--out"],
    }[command]
    assert main([*argv, str(home)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"lmlab: error: --out {home}: is the home directory;"), err
    assert err.endswith(f"(name a new folder, e.g. --out {home}/out)")
    assert_intact(home, files)
    with pytest.raises(DataError) as e:  # the library's wording: the same reason, no flag
        refuse_protected(home)
    assert str(e.value).startswith(f"{home}: is the home directory;")
    assert refuse_protected(home / "out", "--out") == home / "out"


def test_out_naming_a_file_is_refused_not_renamed(tmp_path, capsys, finished_run):
    target = tmp_path / "model.bin"
    target.write_text("precious")
    assert main(["export", str(finished_run), "--format", "hf", "--out", str(target)]) == 2
    assert "is a file" in one_line_error(capsys)
    assert target.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_recipe_stage_outputs_train_demo_and_compare_are_guarded(
    tmp_path, dataset, finished_run, monkeypatch
):
    from lmlab.demo import run_demo
    from lmlab.experiments.compare import compare_runs
    from lmlab.experiments.sweep import run_sweep
    from lmlab.pipeline import run_recipe

    c = corpus(tmp_path)
    mine = tmp_path / "mine"
    files = user_folder(mine)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'[tokenizer]\nkind = "char"\nvocab_size = 64\ninput = ["{c}"]\nout = "{mine}"\n'
        f'[train]\nout = "{tmp_path / "run"}"\n'
    )
    with pytest.raises(DataError, match="raw.txt"):
        run_recipe(recipe)
    with pytest.raises(
        DataError, match="raw.txt"
    ):  # --force is no licence to delete a user's folder
        train(tiny_config(dataset, mine), force=True)
    with pytest.raises(DataError, match="raw.txt"):
        run_demo(out=mine)
    with pytest.raises(DataError, match="raw.txt"):
        compare_runs([finished_run], out=mine, log=lambda *_: None)
    base = tmp_path / "base.toml"
    base.write_text(f'[data]\npath = "{dataset}"\n[train]\nmax_steps = 1\ndevice = "cpu"\n')
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'name = "s"\nbase = "{base}"\nout = "{mine}"\n[grid]\n"train.lr" = [1e-3]\n')
    with pytest.raises(DataError, match="raw.txt"):
        run_sweep(sweep, log=lambda *_: None)
    curriculum = tmp_path / "cur.toml"
    curriculum.write_text(f'[train]\nout = "{mine}"\n[[phase]]\ndata = "{dataset}"\n')
    with pytest.raises(DataError, match="raw.txt"):
        run_recipe(curriculum, log=lambda *_: None)
    assert_intact(mine, files)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.md", "raw.txt"]


# --- 2. train on a folder holding a run -----------------------------------------------------------


def test_train_over_a_run_needs_resume_or_force(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(dataset, run, train__max_steps=4, eval__samples=0)
    train(cfg)
    (run / "notes.md").write_text("mine")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=r"--resume.*--force"):
        train(cfg)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    from lmlab.config import to_toml

    toml = tmp_path / "cfg.toml"
    toml.write_text(to_toml(cfg))
    capsys.readouterr()
    assert main(["train", str(toml)]) == 2
    err = one_line_error(capsys)
    assert "--resume" in err and "--force" in err
    result = train(cfg, force=True)  # starts over: lmlab's files replaced, the user's kept
    assert result.steps == 4 and (run / "notes.md").read_text() == "mine"
    assert sorted(losses(run)) == [1, 2, 3, 4]


# --- 3. lmlab run: up to date, and resumed after SIGKILL with the same losses ----------------------


def _recipe(tmp_path: Path, out: str, max_steps: int = 30) -> Path:
    c = corpus(tmp_path)
    r = tmp_path / f"{out.replace('/', '_')}.toml"
    r.write_text(
        f'[tokenizer]\nkind = "char"\nvocab_size = 64\ninput = ["{c}"]\nout = "tok"\n'
        f'[prepare]\ninput = ["{c}"]\nout = "ds"\nseparator = "\\n"\nval_fraction = 0.2\nworkers = 1\n'
        "[model]\nn_layer = 1\nn_head = 2\nd_model = 32\ncontext_length = 16\n"
        f"[train]\nmax_steps = {max_steps}\nbatch_size = 4\ncheckpoint_every = 3\neval_every = 0\nlog_every = 1\n"
        # fp32 pinned: the killed run and its reference must not each time the dtype probe (a
        # loaded machine can tip `auto` one way for one run and the other way for the next)
        f'device = "cpu"\ndtype = "float32"\nseed = 3\nout = "{out}"\n'
        "[eval]\nbatches = 2\nsamples = 0\n[log]\nprogress = false\n"
    )
    return r


def test_run_twice_is_a_no_op(tmp_path, monkeypatch):
    from lmlab.pipeline import run_recipe

    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, "runs/a", max_steps=6)
    first = run_recipe(recipe, log=lambda *_: None)
    latest = tmp_path / "runs/a/checkpoints/latest"
    stamp = latest.stat().st_mtime_ns
    lines: list[str] = []
    t0 = time.monotonic()
    again = run_recipe(recipe, log=lines.append)
    took = time.monotonic() - t0
    assert [ln.split(":")[0] for ln in lines[:3]] == [
        "[tokenizer] up to date",
        "[data] up to date",
        "[train] up to date",
    ]
    assert lines[3].startswith("[eval] up to date")
    assert not any("training" in ln or "resuming" in ln for ln in lines)
    assert latest.stat().st_mtime_ns == stamp and again == first
    assert took < 30  # a no-op (seconds; generous for a loaded machine)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}


def _start_run(recipe: Path, cwd: Path) -> subprocess.Popen:
    """`lmlab run RECIPE` in a child process (to be killed or interrupted)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lmlab", "run", str(recipe)],
        env=_env(),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(ready, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``ready()`` while the child runs; fail with its stderr if it ends first."""
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


def test_run_killed_then_rerun_resumes_with_the_same_losses(tmp_path, monkeypatch):
    from lmlab.pipeline import run_recipe

    monkeypatch.chdir(tmp_path)
    recipe = _recipe(
        tmp_path, "runs/k", max_steps=60
    )  # long enough to be killed mid-run on a fast CPU
    proc = _start_run(recipe, tmp_path)
    latest = tmp_path / "runs/k/checkpoints/latest"
    _wait_for(latest.exists, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (tmp_path / "runs/k/result.json").exists()
    lines: list[str] = []
    run_recipe(recipe, log=lines.append)
    assert "[train] resuming -> runs/k" in lines
    run_recipe(_recipe(tmp_path, "runs/ref", max_steps=60), log=lambda *_: None)
    got, want = losses(tmp_path / "runs/k"), losses(tmp_path / "runs/ref")
    assert sorted(got) == list(range(1, 61)) and got == want


def _options(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if hasattr(a, "_name_parser_map"))
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


def test_ctrl_c_of_lmlab_run_names_only_flags_that_exist_and_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, "runs/i", max_steps=100000)
    proc = _start_run(recipe, tmp_path)
    metrics = tmp_path / "runs/i/metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, proc)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    said = [ln for ln in (out + err).splitlines() if "interrupted" in ln]
    assert said
    for line in said:
        # a flag inside `lmlab CMD ...` belongs to CMD; any other one to the command that ran
        for cmd, body in re.findall(r"`lmlab (\w+)([^`]*)`", line):
            assert set(re.findall(r"--[a-z][a-z-]*", body)) <= _options(cmd), line
        rest = re.sub(r"`lmlab [^`]*`", "", line)
        assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest)) <= _options("run"), line
    step = int((tmp_path / "runs/i/checkpoints/latest").read_text().strip()[5:])
    assert step >= 3  # Ctrl-C saved the last step
    # the same command again resumes it: check the decision (not 100000 steps of training)
    lines: list[str] = []
    from lmlab.config import load_config
    from lmlab.pipeline import resolve_training_inputs, run_status
    from lmlab.runs import same_run_config

    cfg = resolve_training_inputs(load_config(recipe), log=lines.append)
    assert (
        same_run_config(tmp_path / "runs/i", cfg)
        and run_status(tmp_path / "runs/i")["step"] == step
    )


def test_run_refuses_a_run_of_another_config_without_force(tmp_path, monkeypatch):
    from lmlab.pipeline import run_recipe

    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, "runs/c", max_steps=3)
    run_recipe(recipe, log=lambda *_: None)
    with pytest.raises(CheckpointError, match=r"train\.max_steps: run 3, now 4.*--force"):
        run_recipe(recipe, overrides=["train.max_steps=4"], log=lambda *_: None)
    run_recipe(recipe, overrides=["train.max_steps=4"], force=True, log=lambda *_: None)
    assert max(losses(tmp_path / "runs/c")) == 4


def test_every_flag_a_message_names_exists():
    parser = build_parser()
    flags: set[str] = set()

    def walk(p) -> None:
        for a in p._actions:
            flags.update(s for s in a.option_strings if s.startswith("--"))
            for sub in (
                (getattr(a, "choices", None) or {}).values()
                if hasattr(a, "_name_parser_map")
                else ()
            ):
                walk(sub)

    walk(parser)
    # flags of other programs named in messages (torchrun, pip)
    foreign = {"--nproc_per_node", "--nnodes", "--index-url", "--extra-index-url", "--upgrade"}
    named: dict[str, str] = {}
    for f in SRC.rglob("*.py"):
        for lit in re.findall(r"\"[^\"\n]*\"|'[^'\n]*'", f.read_text(encoding="utf-8")):
            # --name, not a --section.key=value override
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w.-])", lit):
                named.setdefault(flag, f.name)
    missing = sorted(
        f"{flag} ({where})" for flag, where in named.items() if flag not in flags | foreign
    )
    assert not missing, missing


# --- 4. links, fsync, stale temporaries --------------------------------------------------------------


@pytest.mark.parametrize("name", ["samples.md", "metrics.jsonl", "report.md", "checkpoints"])
def test_no_write_through_a_link_in_a_run(dataset, tmp_path, name):
    from lmlab.outputs import write_marker

    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "run")  # an lmlab run folder, with a link placed in it
    outside = tmp_path / "outside"
    outside.mkdir() if name == "checkpoints" else outside.write_text("precious")
    (run / name).symlink_to(outside)
    with pytest.raises(DataError, match=f"{name}: is a symbolic link"):
        train(tiny_config(dataset, run, train__max_steps=2))
    if name == "checkpoints":
        assert list(outside.iterdir()) == []
    else:
        assert outside.read_text() == "precious"


def test_append_never_follows_a_link(tmp_path):
    from lmlab.io import atomic_write_text, open_append

    target = tmp_path / "target"
    target.write_text("precious")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(DataError, match="symbolic link"):
        open_append(tmp_path / "link")
    with pytest.raises(DataError, match="symbolic link"):
        atomic_write_text(tmp_path / "link", "x")
    assert target.read_text() == "precious" and (tmp_path / "link").is_symlink()


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    from lmlab.config import Config, ModelConfig
    from lmlab.model import build_model
    from lmlab.train import checkpoint as ck

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    cfg = Config()
    cfg.model = ModelConfig(vocab_size=16, n_layer=1, n_head=1, d_model=8, context_length=4)
    ck.save_checkpoint(
        tmp_path / "checkpoints", 1, build_model(cfg.model), None, None, {"rng": []}, cfg
    )
    final = str(tmp_path / "checkpoints" / "step_000001")
    rename = events.index(("replace", final))
    synced = {Path(p).name for kind, p in events[:rename] if kind == "fsync"}
    assert set(ck.FILES) <= synced, synced


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path, dataset):
    from lmlab.config import PrepareConfig
    from lmlab.data.prepare import prepare_dataset

    c = corpus(tmp_path)
    tok = Path(__import__("json").loads((dataset / "meta.json").read_text())["tokenizer"])
    dead = tmp_path / ".ds.tmp-99999999-abc123"  # lmlab's naming, pid gone
    legacy = tmp_path / ".ds.tmp-k2j4h5g6"  # the older mkdtemp naming
    alive = tmp_path / f".ds.tmp-{os.getpid()}-zzz"  # a writer still running: kept
    for d in (dead, legacy, alive):
        d.mkdir()
        (d / "train_000000.bin").write_bytes(b"\0\0")
    mine = tmp_path / ".ds.tmp-notes"  # not lmlab's naming: kept
    mine.write_text("mine")
    prepare_dataset(
        PrepareConfig(input=[str(c)], out=str(tmp_path / "ds"), separator="\\n", workers=1),
        tokenizer_path=str(tok),
        progress=False,
    )
    assert (
        not dead.exists() and not legacy.exists() and alive.is_dir() and mine.read_text() == "mine"
    )


# --- 5. a run folder works from anywhere --------------------------------------------------------------


def test_run_folder_works_from_another_directory_and_after_a_move(tmp_path, monkeypatch):
    from lmlab.eval.metrics import evaluate_path
    from lmlab.export import export_hf
    from lmlab.train.checkpoint import load_model_for_inference

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    write_dataset(project / "data", make_text(40))
    train(tiny_config(Path("data"), Path("runs/x"), train__max_steps=3, eval__samples=0))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ref = evaluate_path(project / "runs/x", batches=2)
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    got = evaluate_path(moved / "runs/x", batches=2)
    assert got["val_loss"] == ref["val_loss"]
    _, cfg, tok = load_model_for_inference(moved / "runs/x")
    assert cfg.data.path == str(moved / "data") and tok.decode(tok.encode("the cat")) == "the cat"
    export_hf(moved / "runs/x", elsewhere / "hf")
    assert (elsewhere / "hf" / "model.safetensors").is_file()
    # --resume from another directory, with the run's own config.toml
    assert (
        main(["train", str(moved / "runs/x/config.toml"), "--train.max_steps=4", "--resume"]) == 0
    )
    assert max(losses(moved / "runs/x")) == 4 and not (project / "runs").exists()


# --- 6. a dataset is trained only with its own tokenizer ------------------------------------------------


def test_another_tokenizer_for_a_dataset_is_refused(dataset, tmp_path):
    from lmlab.tokenizer import load_tokenizer, train_tokenizer

    c = tmp_path / "other.txt"
    c.write_text("zyxwvu tsrq 0123456789 completely different characters")
    other = train_tokenizer(
        [str(c)],
        vocab_size=64,
        out=tmp_path / "other_tok",
        kind="char",
        special_tokens=["<|endoftext|>"],
    )
    own = load_tokenizer(
        Path(__import__("json").loads((dataset / "meta.json").read_text())["tokenizer"])
    )
    cfg = tiny_config(dataset, tmp_path / "run", data__tokenizer=str(tmp_path / "other_tok"))
    with pytest.raises(LmlabError) as e:
        train(cfg)
    msg = str(e.value)
    assert other.fingerprint()[:12] in msg and own.fingerprint()[:12] in msg
    assert not (tmp_path / "run").exists()


def test_a_run_folder_is_refused_before_any_model_is_built(dataset, finished_run, monkeypatch):
    """The refusal comes first: no model built, no precision probe measured, nothing printed."""
    import lmlab.train.setup

    def no_model(*a, **k):
        raise AssertionError("a model was built before the run folder was checked")

    # where the trainer looks it up (patching lmlab.model's name would not reach it)
    monkeypatch.setattr(lmlab.train.setup, "build_model", no_model)
    with pytest.raises(CheckpointError, match="--resume.*--force"):
        train(tiny_config(dataset, finished_run, train__max_steps=4, eval__samples=0))
