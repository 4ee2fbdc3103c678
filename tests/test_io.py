"""Shared file helpers: input expansion, atomic folders and writes."""

from __future__ import annotations

import pytest

from lmlab.errors import DataError
from lmlab.io import atomic_write_text, expand_inputs, read_json, stdlib_path
from lmlab.outputs import atomic_dir


def test_expand_files_folders_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("x")
    (tmp_path / "a" / "y.txt").write_text("y")
    (tmp_path / "b.py").write_text("b")
    got = expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.py"), str(tmp_path / "b.py")])
    assert [p.name for p in got] == ["x.py", "y.txt", "b.py"]  # de-duplicated, order kept
    only_py = expand_inputs([str(tmp_path / "a")], suffixes=(".py",))
    assert [p.name for p in only_py] == ["x.py"]


def test_expand_missing_names_the_input(tmp_path):
    with pytest.raises(DataError, match="nope"):
        expand_inputs([str(tmp_path / "nope")])
    with pytest.raises(DataError, match="no input"):
        expand_inputs([])


def test_stdlib_alias():
    files = expand_inputs(["@stdlib"])
    assert len(files) > 500
    assert all(str(f).startswith(str(stdlib_path())) for f in files)
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_its_own_output_only(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final, "export") as tmp:
        (tmp / "old").write_text("old")
    with atomic_dir(final, "export") as tmp:  # an lmlab export: replaced whole
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["meta.json", "new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (final / "notes.md").write_text("mine")  # a user's file inside: the swap would lose it
    with pytest.raises(DataError, match="notes.md"), atomic_dir(final, "export"):
        pass
    assert (final / "notes.md").read_text() == "mine" and (final / "new").is_file()


def test_atomic_write_and_read_json(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_text(p, '{"a": 1}')
    assert read_json(p) == {"a": 1}
    p.write_text("{broken")
    with pytest.raises(DataError, match="m.json"):
        read_json(p)


def test_folders_leave_out_hidden_cache_and_package_folders(tmp_path):
    for rel in [
        "a.py",
        "pkg/b.py",
        "pkg/__pycache__/b.cpython-311.pyc",
        ".git/config",
        "pkg/.hidden.py",
        "venv/lib/site-packages/dep.py",
        "web/node_modules/x.js",
        ".venv/lib/y.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    got = [p.relative_to(tmp_path).as_posix() for p in expand_inputs([str(tmp_path)])]
    assert got == ["a.py", "pkg/b.py"]
    # named explicitly, such a folder or file is read
    assert [p.name for p in expand_inputs([str(tmp_path / "venv/lib/site-packages")])] == ["dep.py"]
    assert [p.name for p in expand_inputs([str(tmp_path / "pkg/.hidden.py")])] == [".hidden.py"]
