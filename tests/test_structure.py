"""The layering of src/lmlab: no import cycle, nothing outside lmlab.train imports the trainer
except the drivers that run training, and no file over 600 lines nor function over 80.

The import graph is built with ``ast`` from every module: imports at module level and inside
functions, relative imports resolved. ``from lmlab.x import y`` is an edge to ``lmlab.x.y`` when
that is a module, else to ``lmlab.x``; importing a submodule is not an edge to its package's
``__init__`` (re-exports there would otherwise make every package a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# modules outside lmlab.train that may import it, each because it runs training
TRAIN_IMPORTERS = {
    "lmlab.cli": "the `train` and `sft` commands",
    "lmlab.demo": "`lmlab demo` trains a model (and times an optimizer step to size the run)",
    "lmlab.pipeline.recipe": "the train stage of `lmlab run` (decoder and encoder-decoder)",
    "lmlab.pipeline.curriculum": "trains each phase of a curriculum",
    "lmlab.experiments.sweep": "trains sweep points in this process",
    "lmlab.experiments.worker": "trains one sweep point in a worker process",
}


MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
# the long files and functions allowed, each with its reason; one no longer long fails the test
# too, so the list cannot rot
EXCEPTIONS: dict[str, str] = {}


def module_files(root: Path) -> dict[str, Path]:
    mods = {}
    for f in sorted((root / "lmlab").rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement anywhere in ``tree`` may refer to."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = module_files(root)
    graph: dict[str, set[str]] = {}
    for m, f in mods.items():
        names = imported_names(ast.parse(f.read_text(encoding="utf-8")), m, f.name == "__init__.py")
        graph[m] = {n for n in names if n in mods and n != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _in_train(module: str) -> bool:
    return module == "lmlab.train" or module.startswith("lmlab.train.")


def test_no_import_cycle_in_lmlab():
    found = cycles(import_graph(SRC))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_only_training_drivers_import_the_trainer():
    graph = import_graph(SRC)
    bad = sorted(
        f"{m} imports {', '.join(sorted(t for t in deps if _in_train(t)))}"
        for m, deps in graph.items()
        if not _in_train(m) and m not in TRAIN_IMPORTERS and any(_in_train(t) for t in deps)
    )
    assert not bad, "outside lmlab.train, reading a run goes through lmlab.runs: " + "; ".join(bad)
    missing = sorted(set(TRAIN_IMPORTERS) - set(graph))
    assert not missing, f"allowed importers that no longer exist: {missing}"


def private_imports(root: Path) -> list[str]:
    """``module: from X import _name`` for every import of another lmlab module's private name."""
    found = []
    for m, f in module_files(root).items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("lmlab")
            ):
                found += [
                    f"{m}: from {'.' * node.level}{node.module or ''} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_no_module_imports_another_modules_private_name():
    found = private_imports(SRC)
    assert not found, "make shared names public: " + "; ".join(found)


def test_library_functions_take_typed_arguments_not_argparse_namespaces():
    # the CLI parses; every other module takes what it needs as typed arguments
    found = [
        m
        for m, f in module_files(SRC).items()
        if m != "lmlab.cli" and "Namespace" in f.read_text(encoding="utf-8")
    ]
    assert not found, f"argparse.Namespace outside lmlab.cli: {found}"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / "lmlab" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def test_the_checks_see_function_level_and_relative_imports(tmp_path):
    # a cycle made of a relative import at module level and an absolute one inside a function
    _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .b import f\n",
            "b.py": "def f():\n    from lmlab import a\n    return a\n",
            "c.py": "from . import b\n",
            "pkg/__init__.py": "from lmlab.pkg.x import y\n",
            "pkg/x.py": "from .. import c\ny = 1\n",
            "train/__init__.py": "",
            "train/loop.py": "",
            "reader.py": "def load():\n    from lmlab.train.loop import x\n",
            "peek.py": "def f():\n    from .a import _hidden, __version__\n",
        },
    )
    graph = import_graph(tmp_path)
    assert graph["lmlab.a"] == {"lmlab.b"}
    assert graph["lmlab.b"] == {"lmlab", "lmlab.a"}
    assert graph["lmlab.c"] == {"lmlab", "lmlab.b"}
    assert graph["lmlab.pkg"] == {"lmlab.pkg.x"}
    assert graph["lmlab.pkg.x"] == {"lmlab", "lmlab.c"}
    assert cycles(graph) == [["lmlab.a", "lmlab.b"]]
    assert "lmlab.train.loop" in graph["lmlab.reader"]
    assert private_imports(tmp_path) == ["lmlab.peek: from .a import _hidden"]


@pytest.mark.parametrize("size", [2, 3, 40])
def test_cycles_finds_a_ring_of_any_length(size):
    ring = {f"m{i}": {f"m{(i + 1) % size}"} for i in range(size)}
    ring["tail"] = {"m0"}
    assert cycles(ring) == [sorted(f"m{i}" for i in range(size))]
    del ring[f"m{size - 1}"]
    ring[f"m{size - 2}"] = set()
    assert cycles(ring) == []


def long_code(root: Path) -> dict[str, int]:
    """``{name: lines}`` for each module over MAX_FILE_LINES and each function or method over
    MAX_FUNCTION_LINES (from its ``def`` line to its last), named ``module.Class.function``."""
    found: dict[str, int] = {}
    for m, f in module_files(root).items():
        text = f.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            found[m] = len(text.splitlines())
        todo: list[tuple[str, ast.AST]] = [(m, ast.parse(text))]
        while todo:
            prefix, node = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}.{child.name}"
                    size = child.end_lineno - child.lineno + 1
                    if not isinstance(child, ast.ClassDef) and size > MAX_FUNCTION_LINES:
                        found[name] = size
                    todo.append((name, child))
                else:
                    todo.append((prefix, child))
    return found


def test_no_file_over_600_lines_and_no_function_over_80():
    found = long_code(SRC)
    new = sorted(f"{name} ({n} lines)" for name, n in found.items() if name not in EXCEPTIONS)
    assert not new, "split by idea (or list with a reason in EXCEPTIONS): " + "; ".join(new)
    stale = sorted(set(EXCEPTIONS) - set(found))
    assert not stale, f"no longer long (or gone): remove from EXCEPTIONS: {stale}"


def _function(name: str, lines: int, indent: str = "", head: str = "def") -> str:
    """Source of a function ``lines`` long, its def line included."""
    return f"{indent}{head} {name}():\n" + f"{indent}    x = 1\n" * (lines - 1)


def test_long_code_measures_files_functions_methods_and_nested_functions(tmp_path):
    limit = MAX_FUNCTION_LINES
    _write(
        tmp_path,
        {
            "__init__.py": "",
            "short.py": _function("fits", limit),  # exactly the limit is allowed
            "long.py": "\n" * MAX_FILE_LINES + _function("over", limit + 1),
            "cls.py": "class A:\n"
            + _function("method", limit + 1, "    ")
            + _function("other", 2, "    ", "async def")
            + _function("inner", limit + 1, "        "),
        },
    )
    assert long_code(tmp_path) == {
        "lmlab.long": MAX_FILE_LINES + limit + 1,
        "lmlab.long.over": limit + 1,
        "lmlab.cls.A.method": limit + 1,
        "lmlab.cls.A.other": 2 + limit + 1,  # its own two lines and inner
        "lmlab.cls.A.other.inner": limit + 1,
    }
