"""Edit tracking, pure: a document, an offer, edits and time in; feedback events out."""

import random

import pytest

from editloop.feedback.events import EditedEvent, RejectedEvent, RetainedEvent
from editloop.lsp.document import Document, TextEdit
from editloop.lsp.tracking import EditTracker, follow, similarity, written

URI = "file:///p/m.py"
BEFORE = "def total(xs):\n    return \n\nprint(total([1]))\n"
CURSOR = (1, 11)  # after "return "
SUGGESTION = "sum(xs)"


def setup(horizons=(1.0, 5.0), settle_s=2.0, candidates=(SUGGESTION,), mode="line"):
    doc = Document(URI, "python", 1, BEFORE)
    tracker = EditTracker(horizons, settle_s)
    offset = doc.offset_at(*CURSOR)
    events = tracker.offer(doc, "c1", list(candidates), mode, offset)
    return doc, tracker, events


def type_at(doc: Document, tracker: EditTracker, position, text: str, now: float):
    line, character = position
    edits = doc.apply(doc.version + 1, [((line, character), (line, character), text)])
    return tracker.edit(doc, edits, now)


def kinds(events) -> list[str]:
    return [e.type for e in events]


def test_offer_is_shown_once_even_if_the_client_reports_it_again() -> None:
    _, tracker, events = setup()
    assert [(e.type, e.event_id, e.choice) for e in events] == [("shown", "c1.0.shown", 0)]
    assert tracker.shown("c1", 0) == []
    assert kinds(tracker.shown("c1", 1)) == ["shown"]  # the user cycled to the second candidate


@pytest.mark.parametrize("accept_first", [True, False])
def test_accepted_text_is_retained_at_each_horizon_with_its_similarity(accept_first) -> None:
    """Editors send the accept command before or after the didChange that inserts the text."""
    doc, tracker, _ = setup()
    if accept_first:
        assert kinds(tracker.accept("c1", 0, now=10.0)) == ["accepted"]
        assert type_at(doc, tracker, CURSOR, SUGGESTION, now=10.1) == []
    else:
        assert type_at(doc, tracker, CURSOR, SUGGESTION, now=10.0) == []  # agrees: no rejection
        assert kinds(tracker.accept("c1", 0, now=10.1)) == ["accepted"]

    # typing after the accepted text (the closing newline and the next line) is not part of it
    type_at(doc, tracker, (1, 18), "  # total", now=10.5)
    assert tracker.tick({URI: doc}, now=10.9) == []
    (first,) = tracker.tick({URI: doc}, now=11.2)
    assert isinstance(first, RetainedEvent)
    assert (first.horizon_s, first.text, first.similarity) == (1.0, SUGGESTION, 1.0)

    # the user edits inside the accepted region: sum(xs) -> sum(xs or [])
    inside = doc.text.index("xs)", doc.text.index("sum")) + 2
    edits = doc.apply(doc.version + 1, [(doc.position_at(inside), doc.position_at(inside), " or []")])
    tracker.edit(doc, edits, now=12.0)
    last, edited = tracker.tick({URI: doc}, now=16.0)
    assert (last.horizon_s, last.text) == (5.0, "sum(xs or [])")
    assert last.similarity == pytest.approx(similarity(SUGGESTION, "sum(xs or [])"))
    assert 0 < last.similarity < 1
    assert isinstance(edited, EditedEvent) and (edited.after, edited.text) == ("accepted", "sum(xs or [])")
    assert tracker.offers == {}  # nothing left to follow
    assert tracker.tick({URI: doc}, now=100.0) == []


def test_edits_before_the_accepted_region_move_it() -> None:
    doc, tracker, _ = setup(horizons=(1.0,))
    tracker.accept("c1", 0, now=0.0)
    type_at(doc, tracker, CURSOR, SUGGESTION, now=0.0)
    type_at(doc, tracker, (0, 0), "import math\n\n", now=0.2)  # two lines above
    type_at(doc, tracker, (3, 0), "    ", now=0.3)  # re-indent its own line, before it
    assert "        return sum(xs)" in doc.text
    (retained,) = tracker.tick({URI: doc}, now=1.0)
    assert retained.text == SUGGESTION


def test_accepted_text_deleted_is_retained_as_nothing() -> None:
    doc, tracker, _ = setup(horizons=(1.0,))
    type_at(doc, tracker, CURSOR, SUGGESTION, now=0.0)
    tracker.accept("c1", 0, now=0.0)
    start = doc.offset_at(*CURSOR)
    tracker.edit(doc, doc.apply(9, [(CURSOR, doc.position_at(start + len(SUGGESTION)), "")]), now=0.5)
    retained, edited = tracker.tick({URI: doc}, now=1.0)
    assert (retained.text, retained.similarity) == ("", 0.0)
    assert (edited.after, edited.text) == ("accepted", "")


def test_typing_something_else_rejects_then_reports_what_was_written() -> None:
    doc, tracker, _ = setup(settle_s=2.0)
    assert type_at(doc, tracker, CURSOR, "s", now=1.0) == []  # agrees with "sum(xs)" so far
    (rejected,) = type_at(doc, tracker, (1, 12), "orted(", now=1.2)
    assert isinstance(rejected, RejectedEvent)
    assert (rejected.completion_id, rejected.choice, rejected.reason) == ("c1", 0, "dismissed")
    type_at(doc, tracker, (1, 18), "xs)[0]", now=2.0)
    assert tracker.tick({URI: doc}, now=3.5) == []  # still within settle_s of the last keystroke
    (edited,) = tracker.tick({URI: doc}, now=4.1)
    assert (edited.type, edited.after, edited.text, edited.choice) == (
        "edited",
        "rejected",
        "sorted(xs)[0]",
        0,
    )


def test_written_line_stops_at_the_line_break_and_a_block_keeps_its_lines() -> None:
    assert written("sorted(xs)\n    y = 1", "line") == "sorted(xs)"
    assert written("if x:\n        y()\n", "block") == "if x:\n        y()"
    assert written("", "line") == ""


def test_rejected_then_an_edit_elsewhere_settles_at_once() -> None:
    doc, tracker, _ = setup()
    type_at(doc, tracker, CURSOR, "0", now=1.0)
    type_at(doc, tracker, (1, 12), " + 1", now=1.1)
    (edited,) = type_at(doc, tracker, (0, 0), "# moved on\n", now=1.3)
    assert (edited.after, edited.text) == ("rejected", "0 + 1")


def test_a_newer_completion_supersedes_an_untouched_one() -> None:
    doc, tracker, _ = setup()
    events = tracker.offer(doc, "c2", ["len(xs)"], "line", doc.offset_at(*CURSOR))
    assert [(e.type, e.completion_id) for e in events] == [("rejected", "c1"), ("shown", "c2")]
    assert events[0].reason == "superseded"


def test_typing_through_then_a_newer_completion_drops_the_old_one_silently() -> None:
    doc, tracker, _ = setup()
    type_at(doc, tracker, CURSOR, "sum(", now=1.0)
    events = tracker.offer(doc, "c2", ["xs)"], "line", doc.offset_at(1, 15))
    assert [(e.type, e.completion_id) for e in events] == [("shown", "c2")]
    assert set(tracker.offers) == {"c2"}


def test_a_pending_offer_is_dismissed_by_an_edit_elsewhere_or_closing() -> None:
    doc, tracker, _ = setup()
    (rejected,) = type_at(doc, tracker, (3, 0), "\n", now=1.0)
    assert (rejected.type, rejected.reason) == ("rejected", "dismissed")
    doc, tracker, _ = setup()
    assert kinds(tracker.close(doc)) == ["rejected"]


def test_partial_accepts_grow_the_accepted_text() -> None:
    doc, tracker, _ = setup(horizons=(1.0,))
    (first,) = tracker.accept("c1", 0, now=0.0, length=4)
    assert (first.accepted_length, first.event_id) == (4, "c1.0.accepted.4")
    type_at(doc, tracker, CURSOR, "sum(", now=0.1)
    tracker.accept("c1", 0, now=0.5)
    type_at(doc, tracker, (1, 15), "xs)", now=0.6)  # the rest lands at the region's end
    (retained,) = tracker.tick({URI: doc}, now=1.0)  # the horizon counts from the first accept
    assert (retained.text, retained.similarity) == (SUGGESTION, 1.0)


def test_accepting_an_unknown_completion_still_reports_it() -> None:
    tracker = EditTracker((1.0,), 1.0)
    (accepted,) = tracker.accept("from-another-session", 2, now=0.0)
    assert (accepted.completion_id, accepted.choice) == ("from-another-session", 2)


def test_event_ids_are_deterministic_and_fit_the_schema() -> None:
    doc = Document(URI, "python", 1, BEFORE)
    tracker = EditTracker((1.0,), 1.0)
    long_id = "c" * 120
    (shown,) = tracker.offer(doc, long_id, ["x"], "line", 0)
    assert len(shown.event_id) <= 128
    (again,) = EditTracker((1.0,), 1.0).offer(doc, long_id, ["x"], "line", 0)
    assert again.event_id == shown.event_id


@pytest.mark.parametrize(
    ("region", "edit", "grow", "expected"),
    [
        ((10, 10), TextEdit(10, 10, "abc"), False, (10, 13, True)),  # writing at an empty spot
        ((10, 20), TextEdit(10, 10, "ab"), True, (12, 22, False)),  # at a region's start: before it
        ((10, 20), TextEdit(20, 20, "ab"), False, (10, 20, False)),  # at its end: after it...
        ((10, 20), TextEdit(20, 20, "ab"), True, (10, 22, True)),  # ...unless it grows there
        ((10, 20), TextEdit(12, 15, ""), False, (10, 17, True)),
        ((10, 20), TextEdit(5, 25, "z"), False, (5, 6, True)),  # replaced wholesale
        ((10, 20), TextEdit(0, 10, ""), False, (0, 10, False)),  # deletion ending at its start
        ((10, 10), TextEdit(8, 10, ""), False, (8, 8, False)),  # backspace before an empty spot
        ((10, 20), TextEdit(25, 30, "x"), False, (10, 20, False)),
    ],
)
def test_follow(region, edit, grow, expected) -> None:
    assert follow(*region, edit, grow) == expected


def test_region_text_survives_random_edits_outside_it() -> None:
    rng = random.Random(3)
    for _ in range(200):
        text = "".join(rng.choice("ab \n") for _ in range(40))
        start = rng.randint(1, 30)
        end = start + rng.randint(1, 8)
        kept = text[start:end]
        for _ in range(10):
            if rng.random() < 0.5:  # strictly before
                es = rng.randint(0, start - 1)
                ee = rng.randint(es, start - 1)
            else:  # strictly after
                es = rng.randint(end + 1, len(text))
                ee = rng.randint(es, len(text))
            new = "".join(rng.choice("xy\n") for _ in range(rng.randint(0, 4)))
            edit = TextEdit(es, ee, new)
            text = text[:es] + new + text[ee:]
            start, end, touched = follow(start, end, edit, grow_at_end=False)
            assert not touched
            assert text[start:end] == kept


def test_an_abstention_reports_what_the_user_wrote_there() -> None:
    tracker = EditTracker(horizons=(30.0,), settle_s=2.0)
    doc = Document("file:///a.py", "python", 1, "def f():\n    \n")
    assert tracker.abstain(doc, "c9", "line", 13, now=0.0) == []
    assert tracker.edit(doc, doc.apply(2, [((1, 4), (1, 4), "return 1")]), now=0.5) == []
    (event,) = tracker.tick({doc.uri: doc}, now=3.0)
    assert (event.type, event.after, event.text) == ("edited", "abstained", "return 1")
    # Nothing written at an abstained spot: nothing reported.
    tracker.abstain(doc, "c10", "line", 0, now=4.0)
    assert tracker.tick({doc.uri: doc}, now=10.0) == []
