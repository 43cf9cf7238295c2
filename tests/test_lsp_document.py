"""The LSP document model: positions in UTF-16 (and UTF-8/32) units, incremental and full changes."""

import random

import pytest

from editloop.lsp.document import Document, TextEdit, code_points, diff, units

TEXT = "a = '😀é'\r\nb = 2\n\nlast"


def test_positions_count_utf16_units() -> None:
    doc = Document("file:///t.py", "python", 1, TEXT)
    # "a = '" is 5 units, the emoji 2, "é" 1: character 7 sits between the emoji and é.
    assert doc.text[doc.offset_at(0, 7) :].startswith("é")
    assert doc.position_at(doc.text.index("é")) == (0, 7)
    assert doc.offset_at(1, 0) == TEXT.index("b")  # after \r\n
    assert doc.position_at(TEXT.index("last")) == (3, 0)


@pytest.mark.parametrize(("encoding", "character"), [("utf-8", 9), ("utf-32", 6)])
def test_other_negotiated_encodings(encoding, character) -> None:
    doc = Document("file:///t.py", "python", 1, TEXT, encoding)
    assert doc.offset_at(0, character) == TEXT.index("é")
    assert doc.position_at(TEXT.index("é")) == (0, character)


def test_positions_past_the_end_clamp() -> None:
    doc = Document("file:///t.py", "python", 1, TEXT)
    assert doc.offset_at(0, 999) == TEXT.index("\r")  # end of the line, not into the line break
    assert doc.offset_at(99, 0) == len(TEXT)
    assert doc.offset_at(3, 999) == len(TEXT)


def test_incremental_changes_apply_in_order_and_report_edits() -> None:
    doc = Document("file:///t.py", "python", 1, "x = 1\ny = 2\n")
    edits = doc.apply(
        2,
        [
            ((0, 4), (0, 5), "42"),  # x = 42
            ((1, 0), (1, 0), "# c\n"),  # positions of the second change are in the text after the first
            ((2, 4), (2, 5), "3"),
        ],
    )
    assert doc.text == "x = 42\n# c\ny = 3\n"
    assert doc.version == 2
    assert edits == [TextEdit(4, 5, "42"), TextEdit(7, 7, "# c\n"), TextEdit(15, 16, "3")]


def test_an_edit_inside_a_surrogate_pair_line_lands_after_the_emoji() -> None:
    doc = Document("file:///t.py", "python", 1, "s = '😀'\n")
    doc.apply(2, [((0, 7), (0, 7), "!")])
    assert doc.text == "s = '😀!'\n"


def test_full_text_change_becomes_the_minimal_edit() -> None:
    doc = Document("file:///t.py", "python", 1, "def f():\n    return 1\n")
    (edit,) = doc.apply(2, [(None, None, "def f():\n    return 12\n")])
    assert edit == TextEdit(21, 21, "2")


def test_diff_random_round_trip() -> None:
    rng = random.Random(7)
    alphabet = "ab\n😀"
    for _ in range(300):
        old = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        new = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        edit = diff(old, new)
        assert old[: edit.start] + edit.text + old[edit.end :] == new


def test_unit_conversions_agree() -> None:
    text = "x😀é"
    assert units(text, "utf-16") == 4
    assert units(text, "utf-8") == 1 + 4 + 2
    assert code_points(text, 3, "utf-16") == 2
    assert code_points(text, 5, "utf-8") == 2
