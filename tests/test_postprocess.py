"""Post-processing of raw candidates: mode, truncation, suffix overlap, drop reasons, dedupe."""

import time
from pathlib import Path

import pytest

from editloop.completion.postprocess import (
    DUPLICATES_SUFFIX,
    EMPTY,
    MAX_BLOCK_LINES,
    REPETITIVE,
    UNBALANCED_BRACKETS,
    WHITESPACE,
    dedupe,
    drop_reason,
    resolve_mode,
    truncate,
)

FACT = "def fact(n):\n"
RUST_FN = "fn sum(xs: &[i32]) -> i32 {\n"
JS_FN = "function add(a, b) {\n"


def truncated(
    name: str,
    text: str,
    prefix: str,
    expected: str,
    mode: str = "block",
    suffix: str = "\n",
    language: str = "python",
) -> object:  # a pytest.param
    """A truncate case: raw text at the end of prefix becomes expected."""
    return pytest.param(text, mode, prefix, suffix, language, expected, id=name)


def dropped(
    name: str, text: str, prefix: str, expected: str | None, suffix: str = "\n", language: str = "python"
) -> object:  # a pytest.param
    """A drop_reason case: expected is the reason, or None for a candidate that must be kept."""
    return pytest.param(text, prefix, suffix, language, expected, id=name)


@pytest.mark.parametrize(
    ("mode", "prefix", "suffix", "language", "expected"),
    [
        ("line", FACT + "    ", "\n", "python", "line"),
        ("block", "x = ", "\n", "python", "block"),
        ("auto", FACT + "    ", "\n", "python", "block"),
        ("auto", FACT, "\n", "python", "block"),
        ("auto", "class A:\n    def f(self):  # the one\n        ", "", "python", "block"),
        ("auto", FACT + "    return ", "\n", "python", "line"),  # mid-statement: the user wants the line
        ("auto", FACT + "    return ", " n\n", "python", "line"),
        ("auto", "x = 1\n", "\n", "python", "line"),
        ("auto", "x = 1\ny = ", "\n", "python", "line"),
        ("auto", "", "", "python", "line"),
        ("auto", RUST_FN + "    ", "\n}\n", "rust", "block"),
        ("auto", JS_FN + "  ", "\n}\n", "javascript", "block"),
        ("auto", "if (x) { // go\n  ", "\n}", "typescript", "block"),
        ("auto", "let x = 1;\n", "\n", "rust", "line"),
        ("auto", "def f():\n    ", "\n", "rust", "line"),  # ":" opens nothing in Rust
    ],
)
def test_resolve_mode(mode: str, prefix: str, suffix: str, language: str, expected: str) -> None:
    assert resolve_mode(mode, prefix, suffix, language) == expected


def test_resolve_mode_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="line, block or auto"):
        resolve_mode("paragraph", "", "", "python")


TRUNCATE_CASES = [
    # line mode: up to the first newline
    truncated(
        "line-cut", "n * fact(n - 1)\n\nprint(fact(5))", FACT + "    return ", "n * fact(n - 1)", mode="line"
    ),
    truncated("line-leading-newline", "\n    return 1", "def f():", "", mode="line"),
    truncated("line-crlf", "x + 1\r\ny", "y = ", "x + 1", mode="line", suffix="\r\n"),
    # block mode, Python: indentation decides
    truncated(
        "py-body-after-def",
        "    if n <= 1:\n        return 1\n    return n * fact(n - 1)\n\n\ndef other():\n    pass",
        FACT,
        "    if n <= 1:\n        return 1\n    return n * fact(n - 1)",
        mode="auto",
    ),
    truncated(
        "py-body-cursor-indented",
        "if n <= 1:\n        return 1\n    return n * fact(n - 1)\ndef other():",
        FACT + "    ",
        "if n <= 1:\n        return 1\n    return n * fact(n - 1)",
        mode="auto",
    ),
    truncated(
        "py-statement-in-body",
        "if x:\n        y()\n    z()",
        "def f(x):\n    a = 1\n    ",
        "if x:\n        y()",
        suffix="",
    ),
    truncated("py-from-opener-line", "\n    return 1\n\ndef g():\n    pass", "def f():", "\n    return 1"),
    truncated(
        "py-call-across-lines",
        "foo(\n        a,\n        b,\n    )\n    bar()",
        "def f():\n    x = 1\n    ",
        "foo(\n        a,\n        b,\n    )",
    ),
    truncated("py-prefix-opened-call", "a,\n    b,\n)\nprint(x)", "x = foo(\n    ", "a,\n    b,\n)"),
    truncated("py-trailing-blank-lines", "    x = 1\n\n   \n", FACT, "    x = 1", suffix=""),
    truncated("py-cap", "    x = 1\n" * 30, FACT, "\n".join(["    x = 1"] * MAX_BLOCK_LINES), suffix=""),
    # block mode, braces: the closing line is kept when the editor has not inserted it yet
    truncated(
        "rust-closing-brace",
        "    let mut total = 0;\n    for x in xs {\n        total += x;\n    }\n    total\n}\n\nfn main() {}",
        RUST_FN,
        "    let mut total = 0;\n    for x in xs {\n        total += x;\n    }\n    total\n}",
        mode="auto",
        language="rust",
    ),
    truncated(
        "rust-brace-already-in-suffix",
        "    let mut total = 0;\n    total\n}\n\nfn main() {}",
        RUST_FN,
        "    let mut total = 0;\n    total",
        mode="auto",
        suffix="\n}\n",
        language="rust",
    ),
    truncated(
        "js-closing-callback",
        "  return a + b;\n});\n\ntest('x', () => {});",
        "describe('add', () => {\n",
        "  return a + b;\n});",
        mode="auto",
        language="javascript",
    ),
    truncated(
        "js-brace-already-in-suffix",
        "  return a + b;\n}\n\nfunction g() {}",
        JS_FN,
        "  return a + b;",
        mode="auto",
        suffix="\n}\n",
        language="javascript",
    ),
    truncated(
        "js-object-literal",
        "const o = {\n  a: 1,\n};\nfoo();",
        "",
        "const o = {\n  a: 1,\n};",
        language="javascript",
    ),
    truncated(
        "js-else-stops",
        "    y();\n  } else {\n    z();\n  }",
        "function f(x) {\n  if (x) {\n",
        "    y();",
        language="javascript",
    ),
    # the block's last lines are the lines the suffix already has
    truncated(
        "py-repeats-suffix-lines",
        "    result = []\n    for x in xs:\n        result.append(x)\n    return result",
        "def f(xs):\n",
        "    result = []\n    for x in xs:\n        result.append(x)",
        suffix="\n    return result\n",
    ),
    truncated(
        "js-repeats-suffix-line",
        "  const y = x * 2;\n  return y;",
        "function f(x) {\n",
        "  const y = x * 2;",
        suffix="\n  return y;\n}\n",
        language="javascript",
    ),
    truncated(
        "rust-keeps-inner-brace",
        "if x {\n        y();\n    }",
        "fn f() {\n    ",
        "if x {\n        y();\n    }",
        suffix="\n}\n",
        language="rust",
    ),
    # suffix overlap on the cursor line
    truncated("overlap-paren", "a, b))", "print(max(", "a, b)", mode="line", suffix=")\n"),
    truncated("overlap-keeps-own-paren", "a, b)", "print(max(", "a, b)", mode="line", suffix=")\n"),
    truncated("overlap-two-parens", "a, b)", "print(max(", "a, b", mode="line", suffix="))\n"),
    truncated("overlap-quote-and-paren", 'hello")', 'print("', "hello", mode="line", suffix='")\n'),
    truncated(
        "overlap-js-condition",
        "x > 0) {",
        "if (",
        "x > 0",
        mode="line",
        suffix=") {\n",
        language="javascript",
    ),
    truncated(
        "overlap-arrow-call",
        "items.map((x) => x * 2));",
        "const ys = ",
        "items.map((x) => x * 2)",
        mode="line",
        suffix=");\n",
        language="javascript",
    ),
    truncated(
        "overlap-whole-rest-of-line",
        "name, value)",
        "setattr(obj, ",
        "name, ",
        mode="line",
        suffix="value)\n",
    ),
    truncated("overlap-not-mid-word", "total", "x = ", "total", mode="line", suffix="al\n"),
    truncated("overlap-all-regenerated", ")", "print(x", "", mode="line", suffix=")\n"),
    truncated("overlap-needed-closer", ")", "print(foo(x", ")", mode="line", suffix=")\n"),
    truncated(
        "overlap-block-end",
        "    return (a +\n            b))",
        "def f(a, b):\n",
        "    return (a +\n            b)",
        suffix=")\n",
    ),
]


@pytest.mark.parametrize(("text", "mode", "prefix", "suffix", "language", "expected"), TRUNCATE_CASES)
def test_truncate(text: str, mode: str, prefix: str, suffix: str, language: str, expected: str) -> None:
    assert truncate(text, mode, prefix, suffix, language) == expected


DROP_CASES = [
    # fine candidates
    dropped("ok-python-line", "total += x", "for x in xs:\n    ", None),
    dropped("ok-balanced-across-prefix", "a, b)", "print(max(", None),
    dropped("ok-closes-multiline-call", "c=3)", "result = compute(\n    a=1,\n    b=2,\n    ", None),
    dropped("ok-string-with-paren", 'print("(")', "", None),
    dropped("ok-string-closing-paren", '")")', "print(", None),
    dropped("ok-inside-string", "world)", 'print("hello (', None, suffix='")\n'),
    dropped("ok-comment-with-paren", "x = 1  # see f(", "", None),
    dropped("ok-opens-call-at-end", "foo(", "x = ", None),
    dropped("ok-trailing-comma", "def f(self, a,", "class A:\n    ", None),
    dropped("ok-needed-closer", ")", "print(foo(x", None, suffix=")\n"),
    dropped("ok-suffix-closes", "foo(x", "print(", None, suffix="))\n"),
    dropped("ok-short-repeat", "i += 1", "i += 1\n", None),
    dropped("ok-zeros", "0, 0, 0, 0, 0, 0, 0, 0, 0]", "zeros = [", None),
    dropped("ok-ruler", "-" * 40, "# ", None),
    dropped("ok-for-var", "i", "for ", None, suffix=" in range(10):\n"),
    dropped(
        "ok-js-block-opener", "if (x) {", "function f(x) {\n  ", None, suffix="\n}", language="javascript"
    ),
    dropped("ok-js-callback-opener", "app.get('/', (req, res) => {", "", None, language="javascript"),
    dropped("ok-js-close-function", "}", JS_FN + "  return a + b;\n", None, language="javascript"),
    dropped("ok-js-template", "`(${a}`", "const s = ", None, suffix=";\n", language="javascript"),
    dropped(
        "ok-rust-lifetime",
        "x.iter().map(|v| v + 1).collect::<Vec<_>>()",
        "fn f<'a>(x: &'a [i32]) -> Vec<i32> {\n    ",
        None,
        suffix="\n}",
        language="rust",
    ),
    dropped(
        "ok-rust-char",
        "c == '(' || c == '['",
        "fn open(c: char) -> bool {\n    ",
        None,
        suffix="\n}",
        language="rust",
    ),
    dropped("ok-rust-closing-line", "}", RUST_FN + "    xs.iter().sum()\n", None, language="rust"),
    dropped("ok-docstring-prose", "the (first", 'def f():\n    """Return ', None, suffix='\n    """\n'),
    dropped("ok-distant-brace", "}", "fn f() {\n" + "    let x = 1;\n" * 400, None, language="rust"),
    # empty and whitespace
    dropped("empty", "", "x = ", EMPTY),
    dropped("whitespace", "  \n\t ", "x = ", WHITESPACE),
    # duplicates the suffix
    dropped("dup-next-line", "return x", "def f(x):\n    ", DUPLICATES_SUFFIX, suffix="\n    return x\n"),
    dropped("dup-rest-of-line", "x + 1", "total = f(", DUPLICATES_SUFFIX, suffix="x + 1)\n"),
    dropped(
        "dup-block",
        "let y = 2;\n    y",
        RUST_FN + "    ",
        DUPLICATES_SUFFIX,
        suffix="let y = 2;\n    y\n}\n",
        language="rust",
    ),
    # repetitive
    dropped("repeat-lines", "x = 0\n    x = 0\n    x = 0", "def f():\n    ", REPETITIVE),
    dropped("repeat-unit", "s = 'abcdabcdabcdabcdabcd'", "", REPETITIVE),
    dropped(
        "repeat-previous-line",
        "self.assertEqual(a, b)",
        "def t(self):\n    self.assertEqual(a, b)\n    ",
        REPETITIVE,
    ),
    # unbalanced
    dropped("unbalanced-open", "foo(a, b", "x = ", UNBALANCED_BRACKETS),
    dropped("unbalanced-extra-closer", "a, b)))", "print(max(", UNBALANCED_BRACKETS),
    dropped("unbalanced-nothing-open", "x)", "y = ", UNBALANCED_BRACKETS),
    dropped("unbalanced-with-suffix", "x)", "print(", UNBALANCED_BRACKETS, suffix=")\n"),
    dropped("unbalanced-suffix-does-not-close", "foo(x", "print(", UNBALANCED_BRACKETS, suffix=")\n"),
    dropped(
        "unbalanced-block-extra-brace",
        "}\n}",
        "fn f() {\n    let x = 1;\n",
        UNBALANCED_BRACKETS,
        language="rust",
    ),
    dropped(
        "unbalanced-js-bracket",
        "items[0",
        "const x = ",
        UNBALANCED_BRACKETS,
        suffix=";\n",
        language="javascript",
    ),
]


@pytest.mark.parametrize(("text", "prefix", "suffix", "language", "expected"), DROP_CASES)
def test_drop_reason(text: str, prefix: str, suffix: str, language: str, expected: str | None) -> None:
    assert drop_reason(text, prefix, suffix, language) == expected


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([], []),
        (["a", "b", "a  ", "c\n"], [0, 1, 3]),
        (["x = 1\n", "x = 1", "x = 2", "x = 1\n\n"], [0, 2]),
        (["  a", "a"], [0, 1]),  # leading whitespace matters
    ],
)
def test_dedupe(texts: list[str], expected: list[int]) -> None:
    assert dedupe(texts) == expected


def test_five_candidates_in_a_large_file_take_milliseconds() -> None:
    source = Path(pytest.__file__).read_text()  # any large real Python file
    source = (source + "\n") * max(1, 2000 // source.count("\n") + 1)
    middle = len(source) // 2
    cut = source.index("\n", middle) + 1
    prefix, suffix = source[:cut] + "    ", "\n" + source[cut:]
    raw = [
        "result = self._helper(args, kwargs)\n    return result\n",
        "return cls(*params)",
        "x = foo(a, b",
        "if isinstance(arg, tuple):\n        arg = arg[0]\n    return arg\n\ndef f():\n  pass",
        "pass",
    ]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        texts = [truncate(t, "auto", prefix, suffix, "python") for t in raw]
        [drop_reason(t, prefix, suffix, "python") for t in texts]
        dedupe(texts)
    per_request_ms = (time.perf_counter() - started) / rounds * 1000
    assert per_request_ms < 20  # ~1 ms here; generous for a loaded CI machine


@pytest.mark.parametrize("text", ["'" * 40, "x = ((((((((((", '""""""""""""'])
def test_stuttering_punctuation_is_repetitive(text: str) -> None:
    assert drop_reason(text, "y = ", "\n", "python") == REPETITIVE


@pytest.mark.parametrize("text", ["# " + "-" * 40, "=" * 30, "#" * 20, "'''", "x = [[1, 2], [3, 4]]"])
def test_separator_lines_are_not_repetitive(text: str) -> None:
    assert drop_reason(text, "", "\n", "python") is None


def test_auto_mode_mid_statement_after_a_block_opener_is_a_line() -> None:
    assert resolve_mode("auto", "def main():\n    path = os.path.", "\n    print(path)\n", "python") == "line"
