"""The output-folder guard: lmlab writes only into folders that are absent, empty, or its own.

Every folder lmlab writes as a whole (tokenizer, dataset, run, export, demo, compare,
curriculum) carries a marker in its ``meta.json``: ``"lmlab_output": KIND`` and, for folders
replaced whole, ``"files"``, the names lmlab put there. :func:`check_output` is the one guard
every writer calls before it writes:

1. the working directory, an ancestor of it, the home directory and a filesystem root are
   refused, whatever they hold (replacing them would take the user's files with them);
2. a path that is a file (or anything but a folder) is refused;
3. an absent or empty folder is fine;
4. an lmlab output of the same kind is fine; when it is to be replaced whole, only if every
   name in it is one lmlab wrote (a user's ``notes.md`` dropped into a tokenizer folder
   would be lost by the swap, so it is refused and named);
5. anything else is refused with one line naming the folder and its first few entries.

Folders written before the marker existed are recognised by their files (a tokenizer's or a
dataset's ``meta.json`` format, a run's ``config.toml`` beside ``checkpoints/``).

Stale temporary folders (``.NAME.tmp-PID-XXXX`` and ``.NAME.old-PID-XXXX`` of a killed
writer, and the older ``.NAME.tmp-XXXXXXXX``) are removed by :func:`remove_stale_temps`
only when their name is lmlab's and their owning process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from lmlab.errors import DataError
from lmlab.io import write_json

MARKER = "meta.json"
KIND_KEY = "lmlab_output"
# names lmlab may add to any of its folders after writing it (pipeline stage records)
ALWAYS_OURS = {MARKER, "stage.json"}
# what lmlab writes in each kind of folder, for folders that predate the marker's file list
LEGACY_NAMES: dict[str, tuple[str, ...]] = {
    "tokenizer": ("tokenizer.json", "char_vocab.json", "symbolic.json"),
    "dataset": ("train_*.bin", "val_*.bin"),
    "export": (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "lmlab_export.json",
    ),
    "checkpoint": ("model.safetensors", "optimizer.pt", "state.json", "config.toml"),
}
SHOWN_NAMES = 4  # entries named in a refusal


def read_marker(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def output_kind(folder: Path) -> str | None:
    """The kind of lmlab output ``folder`` is (its marker, else its files), or None."""
    folder = Path(folder)
    meta = read_marker(folder)
    if isinstance(meta.get(KIND_KEY), str):
        return meta[KIND_KEY]
    fmt = meta.get("format")
    if fmt == "lmlab-tokenizer-v1":
        return "tokenizer"
    if fmt == "lmlab-tokens-v1":
        return "dataset"
    if (folder / "config.toml").is_file() and (
        (folder / "checkpoints").is_dir() or (folder / "metrics.jsonl").is_file()
    ):
        return "run"
    if (folder / "lmlab_export.json").is_file():
        return "export"
    if (folder / "curriculum.json").is_file() or (folder / "phase_1" / "config.toml").is_file():
        return "curriculum"
    if (folder / "runs").is_dir() and (
        (folder / "results.md").is_file()
        or any(output_kind(p) == "run" for p in (folder / "runs").iterdir() if p.is_dir())
    ):
        return "sweep"
    if (folder / "run" / "config.toml").is_file() and (folder / "tokenizer" / MARKER).is_file():
        return "demo"
    if (folder / "results.md").is_file() and (folder / "results.csv").is_file():
        return "compare"
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if names and all(any(fnmatch(n, pat) for pat in LEGACY_NAMES["checkpoint"]) for n in names):
        return "checkpoint"
    return None


def _ours(folder: Path, kind: str) -> set[str]:
    """The names in ``folder`` that lmlab wrote there as a ``kind`` output."""
    names = {p.name for p in folder.iterdir()}
    listed = read_marker(folder).get("files")
    if isinstance(listed, list):
        mine = set(listed) | ALWAYS_OURS
        return {n for n in names if n in mine}
    pats = LEGACY_NAMES.get(kind, ())
    return {n for n in names if n in ALWAYS_OURS or any(fnmatch(n, p) for p in pats)}


def _shown(names: list[str]) -> str:
    names = sorted(names)
    more = f", ... ({len(names)} entries)" if len(names) > SHOWN_NAMES else ""
    return ", ".join(names[:SHOWN_NAMES]) + more


def protected_reason(path: Path) -> str | None:
    """Why ``path`` (absolute) may never be an output folder, or None."""
    cwd = Path(os.path.abspath(os.getcwd()))
    home = Path(os.path.abspath(os.path.expanduser("~")))
    if path.parent == path:
        return "is a filesystem root"
    if path == cwd:
        return "is the working directory"
    if cwd.is_relative_to(path):
        return "holds the working directory"
    if home.is_relative_to(path):
        return "is the home directory" if home == path else "holds the home directory"
    return None


def refuse_protected(folder: str | Path, flag: str | None = None) -> Path:
    """``folder`` as an absolute path, unless :func:`protected_reason` forbids it as an output:
    then DataError naming the folder, and the command-line ``flag`` (``--out``) when given.

    The one guard of both the library (:func:`check_output`) and the CLI, which calls it with
    the flag before any work starts."""
    given = str(folder)
    path = Path(os.path.abspath(os.path.expanduser(given)))
    if path.is_symlink() and path.is_dir():  # a link the user made to put the output elsewhere
        path = path.resolve()
    why = protected_reason(path)
    if why:
        shown = given if given == str(path) else f"{given} ({path})"
        if flag is None:
            raise DataError(
                f"{shown}: {why}; lmlab writes its output only into a folder of its own "
                "(name a new folder, e.g. out/)"
            )
        raise DataError(
            f"{flag} {shown}: {why}; lmlab writes its output only into a folder of its own "
            f"(name a new folder, e.g. {flag} {given.rstrip('/')}/out)"
        )
    return path


def check_output(folder: str | Path, kind: str | None, *, whole: bool = True) -> Path:
    """Check lmlab may write the ``kind`` output ``folder``; return it as an absolute path.

    ``whole``: the folder is to be replaced as a whole (every name in it must be lmlab's);
    otherwise lmlab writes named files into it and leaves the rest alone (a run folder).
    ``kind`` None accepts only an absent or empty folder. Raises DataError naming the folder.
    """
    given = str(folder)
    path = refuse_protected(given)
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_dir():
        what = "a symbolic link" if path.is_symlink() else "a file"
        raise DataError(
            f"{given}: is {what}, not a folder; name a new folder (lmlab does not replace it)"
        )
    names = [p.name for p in path.iterdir()]
    if not names:
        return path
    found = output_kind(path)
    if kind is None or found != kind:
        what = f"an lmlab {found} folder" if found else "not an lmlab folder"
        own = f"its own {kind} folder" if kind else "nothing else"
        raise DataError(
            f"{given}: not empty and {what} (holds {_shown(names)}); lmlab writes only into an "
            f"absent or empty folder or {own}; name another folder"
        )
    if whole:
        foreign = sorted(set(names) - _ours(path, kind))
        if foreign:
            raise DataError(
                f"{given}: an lmlab {kind} folder that also holds {_shown(foreign)}, not written by lmlab; "
                "move those out or name another folder"
            )
    return path


def write_marker(folder: Path, kind: str, files: list[str] | None = None, **extra: Any) -> None:
    """Record in ``folder/meta.json`` that it is a ``kind`` output (kept: the file's other keys)."""
    folder = Path(folder)
    meta = read_marker(folder)
    meta[KIND_KEY] = kind
    if files is not None:
        meta["files"] = sorted(set(files) | {MARKER})
    meta.update(extra)
    write_json(folder / MARKER, meta)


def lmlab_files(folder: Path, kind: str) -> set[str]:
    """Names in an existing ``kind`` folder that lmlab wrote (what a replace may delete)."""
    return _ours(Path(folder), kind)


# --- links and stale temporaries ------------------------------------------------------------


def refuse_links(folder: Path, names: tuple[str, ...] | list[str]) -> None:
    """DataError when one of ``folder/name`` is a symbolic link: lmlab never writes through one."""
    for name in names:
        p = Path(folder) / name
        if p.is_symlink():
            raise DataError(
                f"{p}: is a symbolic link; lmlab does not write through links (remove it)"
            )


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_prefix(name: str, what: str = "tmp") -> str:
    """``.NAME.tmp-PID-``: a temporary sibling's name says which process owns it."""
    return f".{name}.{what}-{os.getpid()}-"


def remove_stale_temps(parent: Path, name: str) -> list[Path]:
    """Remove ``parent/.NAME.tmp-*`` / ``.NAME.old-*`` folders of writers that are gone.

    ``name`` is a folder name or a regular expression for one (``step_\\d+``). Only lmlab's
    own naming matches: ``.NAME.(tmp|old)-PID-XXXX`` with PID dead, and the older forms
    ``.NAME.tmp-XXXXXXXX`` (mkdtemp's 8 characters) and ``.NAME.old-PID`` with PID dead.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    pat = re.compile(
        r"^\.(?:" + name + r")\.(?:(?:tmp|old)-(\d+)-[A-Za-z0-9_]+|tmp-[a-z0-9_]{8}|old-(\d+))$"
    )
    removed = []
    for p in parent.iterdir():
        m = pat.match(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        pid = m.group(1) or m.group(2)
        if pid is not None and pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folders themselves (before a rename makes
    them visible, so a power cut cannot leave a complete-looking folder of empty files)."""
    for root, _dirs, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


# --- writing an output whole ------------------------------------------------------------------


@contextlib.contextmanager
def atomic_dir(final: Path, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename.

    ``final`` must be absent, empty, or an lmlab ``kind`` output holding only lmlab's files
    (:func:`check_output`, checked before and again just before the swap);
    ``kind`` None accepts only an absent or empty folder. The new folder gets the marker
    (``meta.json``: kind and file list; not for checkpoints) and every file in it is fsynced
    before the rename. On any error the temporary folder is removed and ``final`` is left as
    it was, so an interrupted stage never leaves a folder that looks complete. Temporary
    folders of killed writers into the same place are removed first.
    """
    final = check_output(final, kind)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent, re.escape(final.name))
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(final.name)))
    try:
        yield tmp
        if kind is not None and kind != "checkpoint":
            write_marker(tmp, kind, files=[p.name for p in tmp.iterdir()])
        fsync_tree(tmp)
        check_output(final, kind)  # nothing of the user's arrived while we wrote
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=temp_prefix(final.name, "old")))
            os.replace(final, old)  # (an empty folder is replaced by a rename onto it)
            os.replace(tmp, final)
            if kind is None or {p.name for p in old.iterdir()} <= lmlab_files(old, kind):
                shutil.rmtree(old, ignore_errors=True)
            else:  # a file appeared between the check and the swap: keep it, say where
                print(
                    f"lmlab: warning: kept {old}: it holds files lmlab did not write",
                    file=sys.stderr,
                )
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
