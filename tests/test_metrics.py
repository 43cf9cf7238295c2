"""The one definition of each text measure, pinned: what rewards, the gate, evals, replay and LSP share."""

import doctest

import pytest

import editloop.metrics as metrics
from editloop.metrics import edit_similarity, exact_match, line_match, normalize


def test_normalize_hides_what_an_editor_does_not_show_and_keeps_indentation() -> None:
    assert normalize("a  \r\nb\t\n\n\n") == "a\nb"
    assert normalize("    return x\n") == "    return x"
    assert normalize("  x") != normalize("x")  # a wrongly indented line is a wrong line


@pytest.mark.parametrize(
    ("candidate", "reference", "expected"),
    [
        ("x = 1  \r\n", "x = 1", True),  # line ends and trailing blanks do not count
        ("x = 1\n\n", "x = 1", True),  # nor do trailing blank lines
        (" x = 1", "x = 1", False),  # leading whitespace does
        ("x = 2", "x = 1", False),
    ],
)
def test_exact_match(candidate: str, reference: str, expected: bool) -> None:
    assert exact_match(candidate, reference) is expected


def test_edit_similarity_is_one_minus_normalised_levenshtein() -> None:
    assert edit_similarity("a + b", "a + c") == pytest.approx(0.8)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    assert edit_similarity("x = 1\r\n", "x = 1") == 1.0


def test_line_match_counts_leading_equal_lines_over_the_longer_text() -> None:
    assert line_match("a\nb\nz", "a\nb\nc") == pytest.approx(2 / 3)
    assert line_match("a\nx\nc", "a\nb\nc") == pytest.approx(1 / 3)  # stops at the first wrong line
    assert line_match("a", "a\nb") == pytest.approx(1 / 2)
    assert line_match("a  \n", "a") == 1.0


def test_the_module_examples_hold() -> None:
    failed, tried = doctest.testmod(metrics)
    assert tried > 0 and failed == 0
