"""Every shipped recipe loads and validates (habit 10 of DESIGN.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmlab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"demo-python", "shakespeare-char", "tinystories", "gpt2-small"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(path):
    cfg = load_config(path)
    assert cfg.train.out, "a recipe names its run folder"
    assert cfg.prepare.out or cfg.data.path or cfg.phase or cfg.encdec.data, (
        "a recipe names its data (or its phases do)"
    )


def test_recipes_folder_is_the_shipped_one():
    """recipes/ at the root and the package's recipes are one set of files (a symlink), so
    `lmlab run shakespeare-char` and `lmlab run recipes/shakespeare-char.toml` run the same."""
    from lmlab.config import builtin_recipes

    shipped = builtin_recipes()
    assert {p.stem for p in RECIPES} == set(shipped)
    for p in RECIPES:
        assert p.read_bytes() == shipped[p.stem].read_bytes(), p.name


def test_shakespeare_char_keeps_the_standard_split(tmp_path):
    """The recipe's val split is the last 10% of the text (nanoGPT's and char-rnn's), whatever
    its model or schedule: its figures are compared with nanoGPT's on that split."""
    from lmlab.data.loader import TokenSplit
    from lmlab.data.shards import read_meta
    from lmlab.pipeline.stages import ensure_dataset, ensure_tokenizer
    from lmlab.tokenizer import load_tokenizer

    text = "".join(f"{chr(97 + i % 26) * (1 + i % 7)}\n" for i in range(400))
    corpus = tmp_path / "input.txt"
    corpus.write_text(text, encoding="utf-8")
    cfg = load_config("shakespeare-char")
    assert (cfg.prepare.split, cfg.prepare.val_fraction) == ("tail", 0.1)
    cfg = load_config(
        "shakespeare-char",
        [
            f"tokenizer.input={corpus}",
            f"tokenizer.out={tmp_path / 'tok'}",
            f"prepare.input={corpus}",
            f"prepare.out={tmp_path / 'data'}",
            "prepare.workers=1",
            "log.progress=false",
        ],
    )
    data = ensure_dataset(cfg, ensure_tokenizer(cfg, log=lambda _: None), log=lambda _: None)
    meta = read_meta(data)
    tok = load_tokenizer(tmp_path / "tok")
    val = TokenSplit(data, "val", meta)
    ids = [int(t) for t in val.read(0, val.n_tokens) if t != tok.eot_id]
    n = len(text) + 1  # one char per token, plus the document's end-of-text
    assert val.n_tokens == n - int(n * 0.9)
    assert tok.decode(ids) == text[int(n * 0.9) :]


def test_demo_python_decays_its_matrices_to_a_tenth():
    """Muon's matrices follow train.lr's schedule scaled to optim.muon_lr, so raising the AdamW
    side's train.lr without min_lr would also change how far the matrices decay. The demo's
    AdamW lr was measured with the matrices' schedule unchanged: peak muon_lr, end a tenth of
    it (bench/RESULTS.md "Issue 12, stop 32")."""
    import torch

    from lmlab.model import build_model
    from lmlab.train.optim import build_optimizer, lr_at, set_lr

    cfg = load_config("demo-python", ["model.n_layer=1", "model.d_model=32", "model.vocab_size=64"])
    cfg.validate()
    opt = build_optimizer(build_model(cfg.model), cfg.optim, cfg.train.lr, torch.device("cpu"))
    t = cfg.train
    for step, adamw_lr, muon_lr in (
        (t.warmup_steps, t.lr, cfg.optim.muon_lr),
        (t.max_steps, t.min_lr, cfg.optim.muon_lr / 10),
    ):
        set_lr(opt, lr_at(step, t))
        kinds = {g.get("kind", "adamw"): g["lr"] for g in opt.param_groups}
        assert kinds["muon"] == pytest.approx(muon_lr, rel=1e-12)
        assert kinds["adamw"] == pytest.approx(adamw_lr, rel=1e-12)


def test_the_stages_keys_follow_the_filters(tmp_path, monkeypatch):
    """A tokenizer trained without a filter stays up to date (its key is the one lmlab wrote
    before tokenizer.filter existed); turning the filter on retrains it, and data filtered under
    other code-filter thresholds (an older lmlab's) is prepared again."""
    import dataclasses

    from lmlab.data import filters
    from lmlab.pipeline import stages

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"m{i}.py").write_text(f"def f{i}(a, b):\n    return a * {i} + b\n")
    base = [
        f"tokenizer.input={src}",
        f"tokenizer.out={tmp_path / 'tok'}",
        "tokenizer.vocab_size=300",
        f"prepare.input={src}",
        f"prepare.out={tmp_path / 'data'}",
        "prepare.filter=code",
        "prepare.workers=1",
        "log.progress=false",
    ]
    logs: list[str] = []
    cfg = load_config("demo-python", [*base, "tokenizer.filter=none"])
    tok = stages.ensure_tokenizer(cfg, log=logs.append)
    t = cfg.tokenizer
    old = {k: v for k, v in dataclasses.asdict(t).items() if k not in ("out", "path", "filter")}
    assert stages.is_up_to_date(tok, stages.stage_key(old, t.input))
    stages.ensure_dataset(cfg, tok, log=logs.append)
    stages.ensure_dataset(cfg, tok, log=logs.append)
    assert logs[0].startswith("[tokenizer] training") and logs[1].startswith("[data] preparing")
    assert logs[-1].startswith("[data] up to date") and len(logs) == 4  # the third: its report

    @dataclasses.dataclass(frozen=True)
    class Stricter(filters.CodeFilter):
        max_literal_fraction: float = 0.25

    monkeypatch.setattr(stages, "CodeFilter", Stricter)
    logs.clear()
    stages.ensure_dataset(cfg, tok, log=logs.append)
    assert logs[0].startswith("[data] preparing")

    cfg = load_config("demo-python", [*base, "tokenizer.filter=code"])
    logs.clear()
    stages.ensure_tokenizer(cfg, log=logs.append)
    assert logs[0].startswith("[tokenizer] training")
    assert logs[1] == "[tokenizer] code filter: kept 6 files, left out nothing"
