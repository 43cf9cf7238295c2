"""Feedback events → SFT samples, value rows and a split that never shares a file."""

from datetime import UTC, datetime, timedelta

from editloop.feedback.events import parse_event
from editloop.training.dataset import DatasetConfig, FeedbackArchive, build_dataset, file_bucket
from editloop.training.value import show_outcome, top_choices

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _story(cid: str, path: str, minute: int, candidate: str, *after: dict) -> list:
    base = {"completion_id": cid, "timestamp": (T0 + timedelta(minutes=minute)).isoformat()}
    events = [
        {
            **base,
            "type": "completion",
            "event_id": f"{cid}-c",
            "prefix": "def f(x):\n    ",
            "suffix": "\n",
            "language": "python",
            "filepath": path,
            "candidates": [
                {"index": 0, "text": candidate, "score": 0.4, "shown": True, "logprobs": [-0.5, -1.0]}
            ],
        },
        {**base, "type": "shown", "event_id": f"{cid}-s"},
    ]
    events += [{**base, "event_id": f"{cid}-{i}", **a} for i, a in enumerate(after)]
    return [parse_event(e) for e in events]


def test_targets_follow_what_the_developer_kept() -> None:
    events = [
        *_story(
            "kept",
            "a.py",
            0,
            "return x",
            {"type": "accepted"},
            {"type": "retained", "horizon_s": 30, "text": "return x", "similarity": 1.0},
            {"type": "retained", "horizon_s": 600, "text": "return x + 1", "similarity": 0.8},
        ),
        *_story(
            "fixed",
            "b.py",
            1,
            "return y",
            {"type": "accepted"},
            {"type": "edited", "after": "accepted", "text": "return x * 2"},
        ),
        *_story(
            "wrote",
            "c.py",
            2,
            "pass",
            {"type": "rejected"},
            {"type": "edited", "after": "rejected", "text": "return -x"},
        ),
        *_story(
            "lost",
            "d.py",
            3,
            "return 0",
            {"type": "accepted"},
            {"type": "retained", "horizon_s": 600, "text": "", "similarity": 0.1},
        ),
        *_story("ignored", "e.py", 4, "x", {"type": "rejected"}),
        *_story("partial", "f.py", 5, "return abc", {"type": "accepted", "accepted_length": 6}),
    ]
    data = build_dataset(events, DatasetConfig(heldout_files=0.0, heldout_recent=0.0))
    targets = {s.completion_id: (s.reference, s.source) for s in data.sft_train + data.sft_heldout}
    assert targets == {
        "kept": ("return x + 1", "retained"),
        "fixed": ("return x * 2", "corrected"),
        "wrote": ("return -x", "written"),
        "partial": ("return", "retained"),
    }
    labels = {r.input.candidate: r.label for r in data.value_rows}
    # A partial take is not a full accept: the value model learns what the full-accept rate counts.
    assert labels == {"return x": 1, "return y": 1, "pass": 0, "return 0": 0, "x": 0, "return abc": 0}
    # What each shown candidate gave the developer: all of a whole take, the measured part of a
    # partial one, nothing of a rejected one (whatever happened to the text afterwards).
    kept = {r.input.candidate: r.kept_chars for r in data.value_rows}
    assert kept == {"return x": 8, "return y": 8, "pass": 0, "return 0": 8, "x": 0, "return abc": 6}
    assert data.stats["samples"] == 4


def _passed_over(texts: list[str], dropped: dict[int, str], written: str) -> list:
    """A completion whose first candidate was shown and rejected, and what the developer then wrote."""
    base = {"completion_id": "c1", "timestamp": T0.isoformat()}
    candidates = [
        {"index": i, "text": t, "score": 0.5, "shown": i == 0, "logprobs": [-0.5], "dropped": dropped.get(i)}
        for i, t in enumerate(texts)
    ]
    events = (
        {
            **base,
            "type": "completion",
            "event_id": "c",
            "prefix": "def f(x):\n    ",
            "suffix": "\n",
            "filepath": "a.py",
            "candidates": candidates,
        },
        {**base, "type": "rejected", "event_id": "r"},
        {**base, "type": "edited", "event_id": "e", "after": "rejected", "text": written},
    )
    return [parse_event(e) for e in events]


def test_candidates_not_shown_are_labelled_by_what_the_developer_wrote() -> None:
    texts = ["pass", "return -x", "return x", "return -x + 1 if x else 0", "return -", "retur(("]
    events = _passed_over(texts, {4: "duplicate", 5: "syntax"}, "return -x + 1  \n")
    rows = build_dataset(events, DatasetConfig(heldout_files=0.0, heldout_recent=0.0)).value_rows
    labels = {r.input.candidate: (r.label, r.shown) for r in rows}
    # "return -x" is a prefix of what was written: taken whole. The longer one agrees as far as the
    # written text goes, so whether it would have been taken is unknown: no row. Dropped ones: no row.
    assert labels == {"pass": (0, True), "return -x": (1, False), "return x": (0, False)}
    assert {r.request for r in rows} == {"c1"}
    # Not shown: as much as the replay's developer would have taken. "return x" departs from what was
    # written after "return ", a whole token, which a partial take would have kept.
    kept = {r.input.candidate: r.kept_chars for r in rows}
    assert kept == {"pass": 0, "return -x": 9, "return x": 7}
    # The A/B counts those characters for whatever a ranker shows first: "return x", a partial take.
    decoded = [r for r in rows if r.view == 0]
    _, [choice] = top_choices(decoded, [1.0 if r.input.candidate == "return x" else 0.0 for r in decoded])
    outcome = show_outcome([choice], 0.5)
    assert (outcome["shown"], outcome["full_accepts"], outcome["chars_kept"]) == (1, 0, 7)


def test_a_request_is_also_seen_with_its_first_candidates_only() -> None:
    """Candidate i's text does not depend on how many were decoded, so a request decoded with six
    also shows what one and three would have given: rows per view, their peers from that view."""
    texts = ["pass", "return -x", "return x", "return -x", "return 1", "return 2"]
    events = _passed_over(texts, {3: "duplicate"}, "return -x\n")
    data = build_dataset(events, DatasetConfig(heldout_files=0.0, heldout_recent=0.0))
    by_view: dict[int, dict[str, tuple]] = {}
    for row in data.value_rows:
        by_view.setdefault(row.view, {})[row.input.candidate] = (row.label, row.input.others)
    assert sorted(by_view) == [0, 1, 3]
    assert by_view[1] == {"pass": (0, ())}
    assert by_view[3] == {
        "pass": (0, ("return -x", "return x")),
        "return -x": (1, ("pass", "return x")),
        "return x": (0, ("pass", "return -x")),
    }
    assert by_view[0]["return -x"] == (1, ("pass", "return x", "return -x", "return 1", "return 2"))
    assert data.stats["value_rows_as_decoded"] == len(by_view[0]) == 5  # the duplicate is a peer, not a row
    _, choices = top_choices(data.value_rows, [r.label for r in data.value_rows])
    assert len(choices) == 3  # one decision per view


def test_duplicates_dropped_and_split_by_file_and_time() -> None:
    events = []
    for i in range(60):
        events += _story(f"c{i}", f"pkg/m{i % 20}.py", i, f"return {i % 20}", {"type": "accepted"})
    data = build_dataset(events, DatasetConfig(heldout_files=0.3, heldout_recent=0.1))
    assert data.stats["duplicates_dropped"] == 40  # same file, context and target
    held_by_file = {s.filepath for s in data.sft_heldout if file_bucket(s.filepath) < 0.3}
    assert held_by_file and not held_by_file & {s.filepath for s in data.sft_train}
    newest_train = max(s.timestamp for s in data.sft_train)
    recent = [s for s in data.sft_heldout if file_bucket(s.filepath) >= 0.3]
    assert recent and all(s.timestamp > newest_train for s in recent)


def test_archive_is_idempotent_and_survives_a_torn_line(tmp_path) -> None:
    archive = FeedbackArchive(tmp_path / "archive.jsonl")
    events = _story("a", "a.py", 0, "x", {"type": "accepted"})
    assert archive.append(events) == 3
    assert archive.append(events) == 0
    with archive.path.open("a") as out:
        out.write('{"type": "accep')  # a crash mid-write
    assert [e.event_id for e in archive.events()] == [e.event_id for e in events]
    more = _story("b", "b.py", 1, "y", {"type": "rejected"})
    assert archive.append(more) == 3
    assert [e.event_id for e in archive.events()] == [e.event_id for e in events + more]
