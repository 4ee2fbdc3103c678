"""Small file helpers shared by every stage: atomic writes, hashing, JSON, path expansion."""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import itertools
import json
import os
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from lmlab.errors import DataError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename, so readers never see half."""
    path = Path(path)
    if path.is_symlink():  # replacing it would drop the link's target; writing would follow it
        raise DataError(
            f"{path}: is a symbolic link; lmlab does not write through links (remove it)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # write()/fsync() name no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file raises DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def open_append(path: Path):
    """Open ``path`` for appending text, never through a symbolic link (DataError naming it)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if path.is_symlink():
            raise DataError(
                f"{path}: is a symbolic link; lmlab does not write through links (remove it)"
            ) from None
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


STDLIB_ALIAS = "@stdlib"


def stdlib_path() -> Path:
    """The running interpreter's standard library folder (the embedded default corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, without installed packages (site-packages)."""
    root = stdlib_path()
    return sorted(
        f
        for f in root.rglob("*.py")
        if f.is_file()
        and not {"site-packages", "dist-packages", "__pycache__"} & set(f.relative_to(root).parts)
    )


SKIPPED_DIRS = {"__pycache__", "site-packages", "node_modules"}


def folder_files(folder: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    """A folder's files, recursively and sorted, ending in one of ``suffixes`` (all when empty).

    Hidden entries (``.git``, ``.venv``, ...) and build or package folders (``__pycache__``,
    ``site-packages``, ``node_modules``) below it are left out: they are never corpus text.
    """
    out = []
    for q in folder.rglob("*"):
        rel = q.relative_to(folder).parts
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in rel[:-1]) or rel[
            -1
        ].startswith("."):
            continue
        if q.is_file() and (not suffixes or q.name.endswith(suffixes)):
            out.append(q)
    return sorted(out)


def input_root(item: str) -> Path:
    """The folder an input's files are named below: the folder itself, a file's folder, the
    part of a glob before its first wildcard, the standard library's folder for ``@stdlib``."""
    if item == STDLIB_ALIAS or item.startswith(STDLIB_ALIAS + "/"):
        item = str(stdlib_path() / item[len(STDLIB_ALIAS) + 1 :])
    p = Path(item)
    if p.is_dir():
        return p
    if p.is_file():
        return p.parent
    plain = list(itertools.takewhile(lambda s: not glob.has_magic(s), p.parts))
    return Path(*plain) if plain else Path(".")


def excluded(path: Path, root: Path, patterns: tuple[str, ...]) -> bool:
    """True when ``path`` matches one of the globs ``patterns``.

    Matched (fnmatch) against the path below the input's ``root`` with a leading ``/``, so
    ``*`` crosses folders and nothing above the input folder counts: ``*/tests/*`` is any file
    in a folder named tests, ``*/test_*.py`` any file named test_*.py."""
    if not patterns:
        return False
    try:
        name = "/" + path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # not below the root (a symbolic link out of it): its own path
        name = path.as_posix()
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _item_files(item: str, suffixes: tuple[str, ...]) -> list[Path]:
    """One input's files, in order: a file, a folder's (:func:`folder_files`), a glob's matches,
    ``@stdlib`` or a part of it."""
    if item == STDLIB_ALIAS:
        return stdlib_files()
    if item.startswith(STDLIB_ALIAS + "/"):  # @stdlib/json, @stdlib/email/*.py: a part of it
        item = str(stdlib_path() / item[len(STDLIB_ALIAS) + 1 :])
    p = Path(item)
    if p.is_file():
        return [p]
    if p.is_dir():
        return folder_files(p, suffixes)
    matches = sorted(glob.glob(item, recursive=True))
    if not matches:
        raise DataError(f"{item}: no such file, folder or glob match")
    files: list[Path] = []
    for m in matches:
        mp = Path(m)
        if mp.is_file():
            files.append(mp)
        elif mp.is_dir():
            files.extend(folder_files(mp, suffixes))
    return files


def drop_excluded(files: list[Path], item: str, patterns: tuple[str, ...]) -> list[Path]:
    """``files`` (expanded from the input ``item``) less those :func:`excluded` by ``patterns``;
    an input whose every file is excluded is a DataError naming it."""
    if not patterns:
        return files
    root = input_root(item)
    kept = [f for f in files if not excluded(f, root, patterns)]
    if files and not kept:
        raise DataError(
            f"{item}: all {len(files)} files match an exclude pattern ({', '.join(patterns)})"
        )
    return kept


def expand_inputs(
    inputs: list[str], suffixes: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> list[Path]:
    """Files, folders (recursive) and globs to a sorted, de-duplicated list of files.

    A folder contributes files ending in one of ``suffixes`` (all files when empty), without
    hidden, cache and package folders (:func:`folder_files`). The
    input ``@stdlib`` names this interpreter's standard library (its ``.py`` files, without
    site-packages); ``@stdlib/SUBPATH`` a file, folder or glob inside it. An input that matches nothing raises DataError naming it.
    Files matching an ``exclude`` glob are left out (:func:`excluded`).
    """
    if not inputs:
        raise DataError("no input given: pass files, folders or globs")
    seen: set[Path] = set()
    files: list[Path] = []

    def add(p: Path) -> None:
        rp = p.resolve()
        if rp not in seen:
            seen.add(rp)
            files.append(p)

    for item in inputs:
        for f in drop_excluded(_item_files(item, suffixes), item, exclude):
            add(f)
    return files
