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
