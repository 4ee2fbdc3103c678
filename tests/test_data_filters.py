"""The code filter: each reason on a tiny document, and the syntax check never executes code."""

from __future__ import annotations

import pytest

from lmlab.data.filters import (
    REASONS,
    CodeFilter,
    alnum_fraction,
    code_reject_reason,
    digest,
    literal_line_fraction,
    syntax_ok,
)

GOOD = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
# A codec's map, as the standard library's encodings/cp*.py lay out 256 entries.
CODEC_TABLE = (
    "decoding_table = (\n"
    + "".join(f"    '\\x{i:02x}'     #  0x{i:02X} -> CONTROL {i}\n" for i in range(40))
    + ")\n"
)


def reason(text: str, **kw) -> str | None:
    return code_reject_reason(text, text.encode("utf-8"), "x.py", CodeFilter(**kw))


def test_good_code_passes():
    assert reason(GOOD) is None


@pytest.mark.parametrize(
    "text, kw, expected",
    [
        ("", {}, "empty"),
        ("  \n\t\n", {}, "empty"),
        ("x = 1\ny = 2\n", {"min_chars": 20}, "too_short"),
        (GOOD, {"max_chars": 10}, "too_long"),
        ("x_value_long_enough = 12345\n", {}, "too_few_lines"),
        (GOOD, {"max_lines": 3}, "too_many_lines"),
        (GOOD + "s = '" + "a" * 1200 + "'\n", {}, "long_line"),
        (GOOD, {"max_mean_line_length": 5}, "long_mean_line"),
        ("x = [\n" + "  (), {}, [], (), {},\n" * 20 + "]\n", {}, "low_alnum"),
        ("def broken(:\n    pass\n    pass\n", {}, "syntax"),
        ("x = 1\nreturn x  # compiler error\n", {}, "syntax"),
        ("x = 1\ny = 2\0\nz = 3 + 4\n", {}, "syntax"),
        (GOOD + CODEC_TABLE, {}, "literal_data"),
    ],
)
def test_each_reason(text, kw, expected):
    assert expected in REASONS
    assert reason(text, **kw) == expected


def test_syntax_check_is_off_when_disabled():
    assert reason("def broken(:\n    pass\n    pass\n", syntax=False) is None


def test_compile_never_executes(tmp_path):
    marker = tmp_path / "ran"
    src = f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n"
    assert syntax_ok(src, "evil.py")
    assert not marker.exists()


def test_pathological_nesting_is_a_syntax_failure_not_a_crash():
    assert not syntax_ok("x = " + "(" * 5000 + ")" * 5000 + "\n", "deep.py")
    assert not syntax_ok("x = " + "-" * 200_000 + "1\n", "unary.py")


def test_alnum_fraction_matches_isalnum():
    for text in ["ab_12 !!", "héllo wörld ☃ 42", "___", "日本語 code = 1"]:
        want = sum(c.isalnum() for c in text) / len(text)
        assert alnum_fraction(text, text.encode()) == pytest.approx(want)


def test_digest_is_content_only():
    assert digest(b"a") == digest(b"a") != digest(b"b")
    assert len(digest(b"")) == 16


def fraction(text: str) -> float:
    return literal_line_fraction(text, len(text.splitlines()))


def test_the_literal_fraction_counts_lines_of_literals_only():
    text = GOOD + CODEC_TABLE
    assert fraction(text) == 40 / 47  # the table's 40 entries of 47 lines
    assert fraction(text.replace("\n", "\r\n")) == 40 / 47
    entities = "html5 = {\n" + "".join(f"    'E{i};': '\\xc{i % 10}',\n" for i in range(9)) + "}\n"
    assert fraction(entities) == 9 / 11
    numbers = "T = [\n    (0x0131,), -1.5e3, 2j, True, None,  # case\n    b'\\x00' + r'\\d',\n]\n"
    assert fraction(numbers) == 2 / 4
    # lines that name or call anything are code, as are f-strings
    for line in ("print(1, 2)", "x = 1", "'k': handler,", "f'{x}',", "return 'a'", "# 'a', 'b'"):
        assert fraction(line + "\n") == 0.0, line


def test_docstrings_and_displays_of_names_are_code_not_data():
    doc = '"""' + "A module's documentation.\n" * 60 + '"""\n'
    func_doc = 'def f():\n    """' + "Details.\n" * 60 + '    """\n    return 1\n'
    names = "handlers = {\n" + "".join(f"    'k{i}': handler_{i},\n" for i in range(60)) + "}\n"
    for text in (doc + GOOD, GOOD + func_doc, GOOD + names):
        assert reason(text) is None, text[:40]


def test_the_threshold_is_kept_to():
    text = (
        GOOD + "TOPICS = {'assert': 'The assert statement\\n'\n" + "    'says so.\\n'\n" * 9 + "}\n"
    )
    frac = fraction(text)
    assert frac == 9 / 16
    assert reason(text, max_literal_fraction=frac) is None
    assert reason(text, max_literal_fraction=frac - 0.01) == "literal_data"
    assert reason(GOOD + CODEC_TABLE, max_literal_fraction=1.0) is None  # 1.0: the check is off


def test_long_lines_that_fail_at_their_end_are_code():
    # literals all the way, then a name at the very end: the match fails there, without
    # backtracking into the alternatives (it would not end on 8 MB of them)
    line = "'a', 1, " * 20_000 + "x\n"
    assert fraction(line * 50) == 0.0
    assert fraction(line[:-2] + "\n") == 1.0
