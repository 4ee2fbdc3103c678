"""Symbolic code tokenizer: abstraction rules, AST round trips, ids, overflow, files."""

from __future__ import annotations

import pickle
import random
import sys
import sysconfig
import textwrap
import tokenize
import warnings
from pathlib import Path

import pytest

from lmlab.errors import ConfigError, DataError
from lmlab.eval.code import parse_rate
from lmlab.tokenizer.symbolic import SymbolicTokenizer, abstract, restore, same_ast, train_symbolic
from lmlab.tokenizer.symbolic.abstract import (
    COMMENT,
    DEDENT,
    EOT,
    INDENT,
    NEWLINE,
    NL,
    NUM,
    OVERFLOW,
    RAW,
    SYMBOL,
    TEXT,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])

TRICKY = {
    "fstrings": '''
        name, width = "x", 10
        a = f"{name!r:>{width}} {'nested'} {{literal}} {name + 'q'=}"
        b = rf"\\d{name}" f'{a}' "plain" F"""multi
        {name}
        line"""
        c = f"{f'{name}'}"
    ''',
    "decorators": """
        import functools
        @functools.lru_cache(maxsize=None)
        @staticmethod
        def g(x, /, y=1, *args, z, **kw) -> int:
            return x
        @property
        def h(self): ...
    """,
    "async": """
        import asyncio
        async def main(xs):
            async with lock as l:
                async for item in aiter(xs):
                    await asyncio.sleep(0)
            return [await y async for y in xs]
    """,
    "walrus": """
        if (n := len(data)) > 10:
            print(f"{n=}")
        while chunk := f.read(8):
            pass
        ys = [y for x in xs if (y := x * 2)]
    """,
    "match": """
        match command.split():
            case [action]:
                pass
            case ["go", direction] | ["move", direction] if direction:
                go(direction)
            case Point(x=0, y=_) as p:
                print(p)
            case {"key": value, **rest}:
                pass
            case [1, 2, *others]:
                pass
            case _:
                match = case = 1
    """,
    "continuations": """
        total = 1 + \\
            2 + \\
            3
        assert total, \\
            "message"
        with open("a") as f, \\
             open("b") as g:
            pass
    """,
    "nested_brackets": """
        x = {k: [(a, {b: (c,)}) for a, b, c in v] for k, v in d.items()}
        y = f(g(h(i[j[k[0]]]), *[1, 2], **{"a": (1, [2, {3}])}))[::-1][1:2, ...]
        z = lambda a=(1, (2, 3)): [a][0]
    """,
    "unicode": """
        café = 1
        naïve_π = café * 2
        ﬁle = 3
        print(file, naïve_π, 名前 := 4)
    """,
    "misc": """
        from __future__ import annotations
        from .. import sibling
        from ...pkg.mod import (a as b,
                                c)
        x = 1 .real + 0x_FF + 1_000 + 1e-3j + 0o17 + .5 + 1if x else 2
        def outer():
            v = 1
            def inner():
                nonlocal v
                global G
                v += 1; G = v
            return inner
        class C(Base, metaclass=Meta):
            __slots__ = ()
            def m(self):
                return super().m(), __class__
        try:
            pass
        except* (ValueError, TypeError) as eg:
            raise RuntimeError("x") from eg
        else:
            pass
        finally:
            del x
        s = b"bytes" b'more' + bytes(1)
        t: dict[str, "Forward"] = {}
        print(*a, sep="")
        gen = (x for x in [1] if (y := x))
    """,
}


def _src(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def _compiles(code: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(code, "<test>", "exec", dont_inherit=True)
        return True
    except SyntaxError:
        return False


@pytest.fixture(scope="module")
def tok() -> SymbolicTokenizer:
    texts = [_src(s) for s in TRICKY.values()]
    texts += [p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("*.py"))[:15]]
    return train_symbolic(texts, vocab_size=1024)


# --- abstraction rules -------------------------------------------------------------------------


def test_identifiers_numbered_by_first_appearance_same_name_same_index() -> None:
    tokens, table = abstract("b = a + b\nc = a(b)\n")
    assert table.names == ["b", "a", "c"]
    assert tokens == [
        SYMBOL, "<|0|>", "=", SYMBOL, "<|1|>", "+", SYMBOL, "<|0|>", NEWLINE,
        SYMBOL, "<|2|>", "=", SYMBOL, "<|1|>", "(", SYMBOL, "<|0|>", ")", NEWLINE,
    ]  # fmt: skip


def test_keywords_operators_and_builtins_stay_as_they_are() -> None:
    tokens, table = abstract("for i in range(len(xs)):\n    print(i ** 2, self)\n")
    assert tokens[:2] == ["for", SYMBOL] and "in" in tokens
    for kept in ("range", "len", "print", "self", "**", ":", "("):
        assert kept in tokens
    assert table.names == ["i", "xs"]
    tokens, table = abstract("print(len(x))\n", fixed_tokens=["(", ")"])  # builtins off
    assert table.names == ["print", "len", "x"]


def test_unicode_names_compare_after_nfkc_like_python() -> None:
    tokens, table = abstract("ﬁle = 1\nprint(file)\n")  # U+FB01 ligature normalises to "fi"
    assert table.names == ["ﬁle"]
    assert tokens.count("<|0|>") == 2
    assert same_ast("ﬁle = 1\nprint(file)\n", restore(tokens, table))


def test_strings_docstrings_and_comments_become_text() -> None:
    code = _src('''
        """Module doc."""
        def f():  # trailing
            """Doc."""
            # own line
            return "s" + f"{x}" + b'b'
    ''')
    tokens, table = abstract(code)
    assert tokens.count(TEXT) == 5 and tokens.count(COMMENT) == 2
    assert table.strings == ['"""Module doc."""', '"""Doc."""', '"s"', 'f"{x}"', "b'b'"]
    assert table.comments == ["# trailing", "# own line"]
    assert not any(t.startswith(('"', "'", "#", "f'", 'f"')) for t in tokens)


def test_indentation_is_kept_as_tokens_and_restored() -> None:
    code = "if a:\n\tif b:\n\t\tx = 1\n\ty = 2\nz = 3\n"  # tabs in, 4 spaces out
    tokens, table = abstract(code)
    assert tokens.count(INDENT) == 2 and tokens.count(DEDENT) == 2
    out = restore(tokens, table)
    assert out == "if a:\n    if b:\n        x = 1\n    y = 2\nz = 3\n"
    assert tokens.count(NL) == 0
    assert abstract("x = 1\n\n# c\ny = 2\n")[0].count(NL) == 2  # blank and comment-only lines


def test_trailing_dedents_and_missing_final_newline_are_not_emitted() -> None:
    assert abstract("if x:\n    y = 1\n")[0][-1] == NEWLINE
    assert abstract("x = f")[0][-1] == "<|1|>"  # a prompt ends where it ends


def test_overflow_rule_spells_later_names_every_time() -> None:
    code = "a = b = c = 1\nd = e + a\nprint(d, e, c)\n"
    tokens, table = abstract(code, max_symbols=3)
    assert table.names == ["a", "b", "c"]
    assert tokens.count(OVERFLOW) == 4
    assert [tokens[i + 1] for i, t in enumerate(tokens) if t == OVERFLOW] == ["d", "e", "d", "e"]
    assert same_ast(code, restore(tokens, table))
    bare = restore(tokens)  # without a table the overflowing names are still exact
    assert same_ast(bare, "v0 = v1 = v2 = 1\nd = e + v0\nprint(d, e, v2)\n")


def test_overflow_through_ids(tok: SymbolicTokenizer) -> None:
    small = SymbolicTokenizer(tok.merges, max_symbols=3)
    code = _src(TRICKY["decorators"])
    ids, table = small.encode_with_table(code)
    assert small._id[OVERFLOW] in ids and len(table.names) == 3
    assert same_ast(code, small.decode(ids, table)) and _compiles(small.decode(ids))
    assert table.names == ["functools", "lru_cache", "maxsize"]
    assert "def g(x, /, y=1, *args, z, **kw) -> int:" in small.decode(ids)  # spelled, exact


def test_generated_names_avoid_spelled_overflow_names() -> None:
    code = "def f(a, v0):\n    return a, v0\n"
    tokens, _ = abstract(code, max_symbols=2)  # f, a get indices; v0 overflows
    assert _compiles(restore(tokens))  # f -> v0 would clash with the spelled v0
    assert "v0_" in restore(tokens)


def test_names_tokenize_splits_are_kept_whole_as_raw() -> None:
    code = "℘x = 1\nprint(℘x, y℘)\n"  # U+2118 starts identifiers; tokenize's regex misses it
    tokens, table = abstract(code)
    if sys.version_info < (3, 12):  # 3.12's tokenize (the C one) gets it right: plain names
        assert [tokens[i + 1] for i, t in enumerate(tokens) if t == RAW] == ["℘x", "℘x", "y℘"]
    assert same_ast(code, restore(tokens, table)) and same_ast(code, restore(tokens))


def test_soft_keywords_used_as_names_keep_working_without_table() -> None:
    code = "match = [1]\nmatch match:\n    case [_]:\n        case = 2\n"
    tokens, table = abstract(code)
    assert table.names == []
    assert same_ast(code, restore(tokens))


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_tricky_syntax_round_trips_to_same_ast(name: str) -> None:
    code = _src(TRICKY[name])
    assert _compiles(code), "the test case itself must be valid"
    tokens, table = abstract(code)
    assert same_ast(code, restore(tokens, table))
    assert _compiles(restore(tokens)), restore(tokens)


@pytest.mark.parametrize(
    "code",
    [
        "",
        "x = 1",  # no final newline
        "x = 1  # comment at end of file",
        "if x:\r\n    y = 'a'\r\nz = 2\r\n",  # CRLF
        "\x0cimport os\n",  # form feed
        "def f():\n    pass\n\n\n\n",
        "x = [\n    1,  # one\n    # alone\n    2,\n]\n",
        "class A:\n    def f(self): return 1; pass\n",
        's = """a\n  b\n"""  \\\n  "c"\n',
        "@ decorator\nclass A: pass\n",
    ],
)
def test_edge_layouts_round_trip(code: str) -> None:
    tokens, table = abstract(code)
    assert same_ast(code, restore(tokens, table))
    assert _compiles(restore(tokens))


def test_placeholders_without_table_are_distinct_strings() -> None:
    code = 'match x:\n    case {"a": 1, "b": 2}:\n        pass\n'
    out = restore(abstract(code)[0])
    assert '"s0"' in out and '"s1"' in out and _compiles(out)


def test_partial_code_never_raises() -> None:
    for prompt in ("def f(x,", 'x = """unterminated\nmore', "if x:\n    y\n  z\n", "$ ? `", "é'\n"):
        tokens, table = abstract(prompt)
        restore(tokens, table)
        restore(tokens)
    tokens, table = abstract('x = """doc\nmore')
    assert tokens[-1] == TEXT and table.strings == ['"""doc\nmore']
    assert abstract("def f(x,")[0][-2:] == ["<|1|>", ","]


def test_restore_tolerates_any_token_sequence() -> None:
    rng = random.Random(0)
    pool = [
        SYMBOL,
        TEXT,
        COMMENT,
        OVERFLOW,
        RAW,
        NUM,
        NEWLINE,
        NL,
        INDENT,
        DEDENT,
        "<|3|>",
        "(",
        ")",
        "def",
        "x",
        "12",
    ]
    for _ in range(200):
        restore([rng.choice(pool) for _ in range(rng.randrange(30))])


# --- ids -----------------------------------------------------------------------------------------


def test_vocabulary_is_at_most_1024(tok: SymbolicTokenizer) -> None:
    assert tok.vocab_size <= 1024
    assert len(tok.vocab) == tok.vocab_size and max(tok.vocab) == tok.vocab_size - 1
    assert tok.kind == "symbolic" and tok.eot_id == tok.special_tokens[EOT]
    assert len(tok.merges) > 0


def test_too_small_vocab_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="vocab_size: 600 is too small"):
        train_symbolic(["x = 1\n"], vocab_size=600)


def test_ids_round_trip(tok: SymbolicTokenizer) -> None:
    for code in [_src(s) for s in TRICKY.values()]:
        ids, table = tok.encode_with_table(code)
        assert ids == tok.encode(code) == tok.encode_ordinary(code)
        assert all(0 <= i < tok.vocab_size for i in ids)
        tokens = tok.ids_to_tokens(ids)
        assert tokens == tok.abstract(code)[0]
        assert tok.tokens_to_ids(tokens) == ids
        assert same_ast(code, tok.decode(ids, table))
        assert _compiles(tok.decode(ids))
    assert tok.encode_ordinary_batch(["a = 1\n", "b = 2\n"]) == [
        tok.encode("a = 1\n"),
        tok.encode("b = 2\n"),
    ]


def test_adjacent_spellings_get_a_separator(tok: SymbolicTokenizer) -> None:
    tokens = ["1", "2", RAW, "$", "3"]  # what `1 2 $3` lexes to
    ids = tok.tokens_to_ids(tokens)
    assert ids.count(tok._id[NUM]) == 2
    assert tok.ids_to_tokens(ids) == tokens


def test_bpe_spelling_matches_hf_tokenizers(tok: SymbolicTokenizer) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lmlab.tokenizer.bytelevel import bytes_to_token_str

    vocab = {bytes_to_token_str(tok.vocab[i]): i for i in range(tok._first_piece, tok.vocab_size)}
    merges = [(bytes_to_token_str(a), bytes_to_token_str(b)) for a, b in tok.merges]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for word in [
        "0",
        "1024",
        "0xFFFF",
        "1e-3j",
        "__init_subclass__",
        "naïve_π",
        "some_long_name2",
        "名前",
    ]:
        assert tok._spell(word) == hf.encode(word).ids, word


def test_special_tokens_split_files_and_decode_as_text(tok: SymbolicTokenizer) -> None:
    ids = tok.encode(f"a = b\n{EOT}c = a\n")
    assert ids.count(tok.eot_id) == 1
    assert ids[: ids.index(tok.eot_id)].count(tok._id["<|0|>"]) == 1  # numbering restarts
    assert tok.decode(ids) == f"v0 = v1\n{EOT}v0 = v1\n"
    assert tok.eot_id not in tok.encode_ordinary(f"x = 1\n{EOT}")


def test_decode_never_raises(tok: SymbolicTokenizer) -> None:
    rng = random.Random(1)
    for _ in range(100):
        tok.decode([rng.randrange(-5, tok.vocab_size + 50) for _ in range(rng.randrange(40))])
    assert tok.decode([]) == "" and tok.decode_bytes([tok._id["def"]]) == b"def"


def test_parse_rate(tok: SymbolicTokenizer) -> None:
    good = tok.encode("def f(x):\n    return x + 1\n") + [tok.eot_id, tok._id["("]]  # cut at eot
    bad = tok.encode("def f(x):\n    return x + 1\n")[:6]
    report = parse_rate([good, bad, []], tok)
    assert (
        report["samples"] == 3 and report["parsed"] == 1 and report["empty"] == 1
    )  # empty is no program
    assert report["parse_rate"] == pytest.approx(1 / 3)
    assert sum(report["errors"].values()) == 1
    assert parse_rate([], tok)["parse_rate"] == 0.0


# --- files ---------------------------------------------------------------------------------------


def test_save_load_pickle_and_fingerprint(tok: SymbolicTokenizer, tmp_path: Path) -> None:
    from lmlab.tokenizer import load_tokenizer

    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "symbolic.json").is_file() and (
        tmp_path / "tok" / "meta.json"
    ).is_file()
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, SymbolicTokenizer)
    code = _src(TRICKY["match"])
    assert loaded.encode(code) == tok.encode(code)
    assert loaded.fingerprint() == tok.fingerprint()
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(code) == tok.encode(code) and clone.vocab == tok.vocab


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "symbolic.json"
    bad.write_text('{"format": "lmlab-symbolic-v1", "merges": [["zz"]]}')
    with pytest.raises(DataError, match="symbolic.json: malformed"):
        SymbolicTokenizer.from_file(bad)
    bad.write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not an lmlab symbolic tokenizer"):
        SymbolicTokenizer.from_file(tmp_path)


def test_special_token_clash_is_rejected() -> None:
    with pytest.raises(ConfigError, match="special_tokens"):
        SymbolicTokenizer(special_tokens=[SYMBOL])


# --- the standard library (the whole of it: bench/bench_symbolic.py) ------------------------------


def _stdlib_sample(n: int = 100) -> list[Path]:
    files = sorted(p for p in STDLIB.rglob("*.py") if "site-packages" not in p.parts)
    step = max(1, len(files) // n)
    return files[::step][:n]


def _read_source(path: Path) -> str | None:
    """The file's text if ``compile()`` accepts it, else None."""
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(data, str(path), "exec", dont_inherit=True)
        encoding, _ = tokenize.detect_encoding(iter(data.splitlines(True)).__next__)
        return data.decode(encoding)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None


def test_stdlib_sample_round_trips_to_same_ast() -> None:
    sample = _stdlib_sample()
    assert len(sample) >= 90
    failures, checked = [], 0
    for path in sample:
        code = _read_source(path)
        if code is None:
            continue
        checked += 1
        tokens, table = abstract(code)
        if not same_ast(code, restore(tokens, table)) or not _compiles(restore(tokens)):
            failures.append(str(path))
    assert checked >= 80
    assert failures == []


def test_cli_trains_a_symbolic_tokenizer_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from lmlab.cli import main
    from lmlab.tokenizer import load_tokenizer

    src = tmp_path / "src"
    src.mkdir()
    for name, code in TRICKY.items():
        (src / f"{name}.py").write_text(_src(code), encoding="utf-8")
    (src / "notes.txt").write_text("not code: a folder gives only its .py files\n")
    out = tmp_path / "tok"
    args = [
        "tokenizer",
        "train",
        "--kind",
        "symbolic",
        "--input",
        str(src),
        "--vocab-size",
        "1024",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    tok = load_tokenizer(out)
    assert tok.kind == "symbolic" and tok.vocab_size <= 1024 and tok.eot_id is not None
    assert len(tok.meta["inputs"]) == len(TRICKY)
    code = _src(TRICKY["async"])
    ids, table = tok.encode_with_table(code)
    assert same_ast(code, tok.decode(ids, table))
    capsys.readouterr()
    assert main([*args[:-4], "--vocab-size", "700", "--out", str(tmp_path / "small")]) == 2
    assert "too small for the symbolic tokenizer" in capsys.readouterr().err
