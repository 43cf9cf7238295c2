"""The tree-sitter check: a candidate may not add parse errors to the buffer."""

import threading
import time

import pytest
from tree_sitter import Parser

from editloop.completion.syntax import (
    SyntaxChecker,
    canonical_language,
    count_errors,
    language_for_path,
    load_grammar,
)

PY_PREFIX = "import math\n\n\ndef area(r):\n    "
PY_SUFFIX = "\n\n\ndef main():\n    print(area(2))\n"
RS_PREFIX = "fn area(r: f64) -> f64 {\n    "
RS_SUFFIX = '\n}\n\nfn main() {\n    println!("{}", area(2.0));\n}\n'
JS_PREFIX = "function area(r) {\n  "
JS_SUFFIX = "\n}\n\nconsole.log(area(2));\n"

CASES = [
    ("py-valid", "python", PY_PREFIX, "return math.pi * r ** 2", PY_SUFFIX, True),
    (
        "py-valid-block",
        "python",
        PY_PREFIX,
        "if r < 0:\n        raise ValueError(r)\n    return r * r",
        PY_SUFFIX,
        True,
    ),
    ("py-open-paren", "python", PY_PREFIX, "return math.pi * (r ** 2", PY_SUFFIX, False),
    ("py-dangling-operator", "python", PY_PREFIX, "return math.pi *", PY_SUFFIX, False),
    ("py-bad-def", "python", PY_PREFIX, "def (", PY_SUFFIX, False),
    ("py-closer-from-suffix", "python", "print(max(", "a, b)", ")\n", True),
    ("py-extra-closer", "python", "x = 1\n", "print(max(x, 2)))\n", "y = 2\n", False),
    ("rust-valid", "rust", RS_PREFIX, "std::f64::consts::PI * r * r", RS_SUFFIX, True),
    ("rust-valid-let", "rust", RS_PREFIX, "let r2 = r * r;\n    r2 * 3.14", RS_SUFFIX, True),
    ("rust-extra-brace", "rust", RS_PREFIX, "r * r\n}\n}", RS_SUFFIX, False),
    ("rust-missing-operand", "rust", RS_PREFIX, "let x = ;", RS_SUFFIX, False),
    ("js-valid", "javascript", JS_PREFIX, "return Math.PI * r * r;", JS_SUFFIX, True),
    ("js-broken", "javascript", JS_PREFIX, "return Math.PI * (r * r;", JS_SUFFIX, False),
    ("ts-valid", "typescript", "function f(x: number): number {\n  ", "return x * 2;", "\n}\n", True),
    # a buffer already broken elsewhere is judged only on what the candidate adds
    (
        "py-broken-elsewhere",
        "python",
        "def broken(:\n    pass\n\n" + PY_PREFIX,
        "return r * r",
        PY_SUFFIX,
        True,
    ),
]


@pytest.mark.parametrize(
    ("language", "prefix", "candidate", "suffix", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_check(language: str, prefix: str, candidate: str, suffix: str, expected: bool) -> None:
    assert SyntaxChecker().check(language, prefix, candidate, suffix) is expected


def test_candidates_of_one_request_share_a_checker() -> None:
    checker = SyntaxChecker()
    candidates = ["return r * r", "return (r * r", "return 2 * r", "return r *"]
    assert [checker.check("python", PY_PREFIX, c, PY_SUFFIX) for c in candidates] == [
        True,
        False,
        True,
        False,
    ]
    # the incremental parses agree with full ones
    grammar = load_grammar("python")
    assert grammar is not None
    parser = Parser(grammar)
    expected = [count_errors(parser, PY_PREFIX + c + PY_SUFFIX) == 0 for c in candidates]
    assert expected == [True, False, True, False]


def test_unicode_before_and_in_the_candidate() -> None:
    checker = SyntaxChecker()
    prefix = 'GREETING = "héllo wörld ✓"\n\n\ndef greet(name):\n    '
    assert checker.check("python", prefix, 'return f"{GREETING}, {name} ✓"', "\n") is True
    assert checker.check("python", prefix, 'return f"{GREETING}, ✓" +', "\n") is False


@pytest.mark.parametrize("language", ["text", "markdown-ish", "cobol"])
def test_unsupported_language_is_unknown(language: str) -> None:
    assert SyntaxChecker().check(language, "x = ", "1", "\n") is None
    assert SyntaxChecker().supports(language) is False


@pytest.mark.parametrize(
    "language", ["python", "rust", "javascript", "typescript", "tsx", "go", "java", "c", "cpp"]
)
def test_grammars_of_the_main_languages_load(language: str) -> None:
    assert load_grammar(language) is not None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("python", "python"),
        ("Python", "python"),
        ("typescriptreact", "tsx"),
        ("javascriptreact", "javascript"),
        ("c_sharp", "csharp"),
        ("C#", "csharp"),
        ("c++", "cpp"),
        ("shellscript", "bash"),
        ("golang", "go"),
    ],
)
def test_canonical_language(name: str, expected: str) -> None:
    assert canonical_language(name) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("src/app.py", "python"),
        ("lib.rs", "rust"),
        ("web/index.JS", "javascript"),
        ("web/App.tsx", "tsx"),
        ("api.ts", "typescript"),
        ("main.go", "go"),
        ("Main.java", "java"),
        ("vec.h", "c"),
        ("vec.hpp", "cpp"),
        ("Program.cs", "csharp"),
        ("build.sh", "bash"),
        ("README", None),
        ("notes.txt", None),
        ("", None),
    ],
)
def test_language_for_path(path: str, expected: str | None) -> None:
    assert language_for_path(path) == expected


def test_large_file_costs_one_full_parse_and_cheap_incremental_ones() -> None:
    body = "".join(f"def f{i}(x):\n    y = x * {i}\n    return y + {i}\n\n\n" for i in range(700))
    prefix, suffix = body + "def g(x):\n    ", "\n\n\n" + body
    checker = SyntaxChecker()
    assert checker.check("python", prefix, "return x", suffix) is True  # full parse of ~4,000 lines
    started = time.perf_counter()
    results = [
        checker.check("python", prefix, c, suffix) for c in ["return 1", "return (", "pass", "x = [1, 2]"]
    ]
    per_candidate_ms = (time.perf_counter() - started) / 4 * 1000
    assert results == [True, False, True, True]
    assert per_candidate_ms < 50  # a few ms here; generous for a loaded CI machine


def test_checker_is_safe_to_share_between_threads() -> None:
    checker = SyntaxChecker()
    failures: list[str] = []

    def work(prefix: str, suffix: str) -> None:
        for _ in range(20):
            if checker.check("python", prefix, "return r * r", suffix) is not True:
                failures.append(prefix)
            if checker.check("python", prefix, "return (r", suffix) is not False:
                failures.append(prefix)

    threads = [
        threading.Thread(target=work, args=(PY_PREFIX, PY_SUFFIX)),
        threading.Thread(target=work, args=("def other(r):\n    ", "\n")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
