"""Dashboard figures from hand-made feedback events in a real redis-server."""

from datetime import UTC, datetime, timedelta

import pytest

from editloop.feedback.events import (
    AcceptedEvent,
    Candidate,
    CompletionEvent,
    EditedEvent,
    RejectedEvent,
    RetainedEvent,
    ShownEvent,
)
from editloop.feedback.stats import JOIN_WINDOW_S, FeedbackStats, bin_value, latency_bin
from editloop.feedback.store import FeedbackStore

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def completion(
    cid: str,
    version: str,
    texts: list[str],
    *,
    at: datetime = T0,
    abstained: bool = False,
    latency_ms: float = 50.0,
    project: str = "default",
    code_free: bool = False,
) -> CompletionEvent:
    candidates = [
        Candidate(index=i, text="" if code_free else t, text_chars=len(t) if code_free else None, shown=True)
        for i, t in enumerate(texts)
    ]
    return CompletionEvent(
        event_id=f"{cid}.completion",
        completion_id=cid,
        model_version=version,
        candidates=[] if abstained else candidates,
        abstained=abstained,
        latency_ms=latency_ms,
        timestamp=at,
        project=project,
        code_free=code_free,
    )


def shown(cid: str, choice: int = 0) -> ShownEvent:
    return ShownEvent(event_id=f"{cid}.{choice}.shown", completion_id=cid, choice=choice)


def accepted(cid: str, choice: int = 0, **extra) -> AcceptedEvent:
    kind = f"{extra.get('accepted_length')}{extra.get('partial')}"
    return AcceptedEvent(event_id=f"{cid}.{choice}.acc{kind}", completion_id=cid, choice=choice, **extra)


def rejected(cid: str) -> RejectedEvent:
    return RejectedEvent(event_id=f"{cid}.rejected", completion_id=cid)


def edited(cid: str, text: str, after: str = "rejected") -> EditedEvent:
    return EditedEvent(event_id=f"{cid}.edited.{after}", completion_id=cid, text=text, after=after)


def retained(cid: str, text: str, horizon: float = 30) -> RetainedEvent:
    return RetainedEvent(
        event_id=f"{cid}.ret{horizon}", completion_id=cid, horizon_s=horizon, text=text, similarity=0.5
    )


@pytest.fixture
def store(redis_url) -> FeedbackStore:
    return FeedbackStore.from_url(redis_url)


def by_version(report: dict) -> dict[str, dict]:
    return {v["version"]: v for v in report["versions"]}


def test_rates_and_characters_per_version(store: FeedbackStore) -> None:
    store.record(
        [
            completion("a", "v1", ["return x\n", "pass\n"], latency_ms=40),
            shown("a"),
            accepted("a"),  # whole candidate: 9 chars, nothing edited afterwards → 9 written
            completion("b", "v1", ["foo()"], latency_ms=60),
            shown("b"),
            rejected("b"),
            edited("b", "bar(1)"),  # the user wrote 6 chars instead
            completion("c", "v1", [], abstained=True, latency_ms=80),
            edited("c", "xyz", after="abstained"),  # 3 chars written where the model abstained
            completion("d", "v2", ["value = compute()"], latency_ms=100),
            shown("d"),
            accepted("d", accepted_length=5),  # a partial accept, then more of it
            accepted("d", accepted_length=8),
            retained("d", "value = 1 + 2"),  # what is at the spot now: 13 chars
            completion("e", "v2", ["zzz"], latency_ms=120),  # never seen: no outcome
        ]
    )
    stats = FeedbackStats(bucket_s=60)
    assert stats.refresh(store) == 15
    report = stats.report()
    v1, v2 = by_version(report)["v1"], by_version(report)["v2"]

    assert (v1["completions"], v1["abstained"], v1["served"], v1["seen"]) == (3, 1, 2, 2)
    assert (v1["accepted"], v1["rejected"]) == (1, 1)
    assert v1["abstain_rate"] == round(1 / 3, 4) and v1["acceptance_rate"] == 0.5
    assert (v1["chars_accepted"], v1["chars_written"], v1["chars_saved"]) == (9, 9 + 6 + 3, 9)
    assert v1["chars_saved_share"] == round(9 / 18, 4)
    assert v1["latency_ms"]["mean"] == 60.0

    assert (v2["completions"], v2["seen"], v2["accepted"], v2["acceptance_rate"]) == (2, 1, 1, 1.0)
    assert (v2["chars_accepted"], v2["chars_written"], v2["chars_saved"]) == (8, 13, 8)
    assert v2["chars_saved_share"] == round(8 / 13, 4)
    assert v2["latency_ms"]["mean"] == 110.0

    totals = report["totals"]
    assert (totals["completions"], totals["accepted"], totals["chars_accepted"]) == (5, 2, 17)
    assert [v["version"] for v in report["versions"]] == ["v1", "v2"]  # in order of first use


def test_refresh_reads_only_new_entries_and_joins_across_refreshes(store: FeedbackStore) -> None:
    stats = FeedbackStats(bucket_s=60)
    store.record([shown("x"), accepted("x")])  # outcomes written before their completion
    assert stats.refresh(store) == 2
    assert stats.report()["totals"]["completions"] == 0  # nothing to attribute them to yet

    store.record([completion("x", "v1", ["abcd"]), completion("y", "v1", ["efgh"])])
    assert stats.refresh(store) == 2
    figures = stats.report()["totals"]
    assert (figures["completions"], figures["seen"], figures["accepted"], figures["chars_accepted"]) == (
        2,
        1,
        1,
        4,
    )

    assert stats.refresh(store) == 0  # nothing new: nothing read
    store.record([shown("y"), accepted("y", partial="line")])
    assert stats.refresh(store) == 2
    figures = stats.report()["totals"]
    assert (figures["accepted"], figures["acceptance_rate"], figures["chars_accepted"]) == (2, 1.0, 8)
    # the figures equal a fresh read of the whole log
    fresh = FeedbackStats(bucket_s=60)
    fresh.refresh(store)
    assert fresh.report()["totals"] == figures


def test_series_per_time_bucket_and_version(store: FeedbackStore) -> None:
    events = []
    for hour in range(6):
        version = "v1" if hour < 3 else "v2"
        for k in range(2):
            cid = f"h{hour}k{k}"
            at = T0 + timedelta(hours=hour, minutes=10 * k)
            events += [completion(cid, version, ["ab"], at=at, latency_ms=10 * (hour + 1)), shown(cid)]
            if k == 0:
                events.append(accepted(cid))
    store.record(events)
    stats = FeedbackStats(bucket_s=3600)
    stats.refresh(store)
    series = stats.report()["series"]
    assert [(p["t"] - int(T0.timestamp())) // 3600 for p in series] == [0, 1, 2, 3, 4, 5]
    assert [p["version"] for p in series] == ["v1"] * 3 + ["v2"] * 3
    assert all(p["completions"] == 2 and p["acceptance_rate"] == 0.5 for p in series)
    assert [p["latency_ms"]["mean"] for p in series] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]

    coarse = stats.report(max_points=3)["series"]  # 6 hours in at most 3 points: 2-hour buckets
    assert stats.report(max_points=3)["bucket_s"] == 7200
    assert [(p["version"], p["completions"]) for p in coarse] == [("v1", 4), ("v1", 2), ("v2", 2), ("v2", 4)]
    later = stats.report(since=T0 + timedelta(hours=4))
    assert later["totals"]["completions"] == 4


def test_projects_are_kept_apart(store: FeedbackStore) -> None:
    store.record(
        [
            completion("p1", "v1", ["a"], project="alpha"),
            completion("p2", "v1", ["b"], project="beta"),
            completion("p3", "v1", ["c"], project="beta"),
        ]
    )
    stats = FeedbackStats()
    stats.refresh(store)
    assert stats.report()["projects"] == ["alpha", "beta"]
    assert stats.report(project="beta")["totals"]["completions"] == 2
    assert stats.report()["totals"]["completions"] == 3


def test_code_free_events_count_lengths(store: FeedbackStore) -> None:
    store.record(
        [
            completion("cf", "v1", ["hidden text"], code_free=True),
            accepted("cf"),
            EditedEvent(
                event_id="cf.edit",
                completion_id="cf",
                text="",
                text_chars=20,
                after="accepted",
                code_free=True,
            ),
        ]
    )
    stats = FeedbackStats()
    stats.refresh(store)
    totals = stats.report()["totals"]
    assert (totals["chars_accepted"], totals["chars_written"], totals["chars_saved"]) == (11, 20, 11)


def test_partial_accepts_take_a_line_or_a_word() -> None:
    stats = FeedbackStats()
    text = "  first_word(x)\n  second line\n"
    stats.add("p", completion("w", "v1", [text, text]), 1000)
    stats.add("p", accepted("w", choice=0, partial="word"), 1001)
    assert stats.report()["totals"]["chars_accepted"] == len("  first_word(x)")
    stats.add("p", completion("l", "v1", ["\n    body()\n    more()\n"]), 1002)
    stats.add("p", accepted("l", partial="line"), 1003)
    assert stats.report()["totals"]["chars_accepted"] == len("  first_word(x)") + len("\n    body()")


def test_outcomes_after_the_join_window_do_not_count() -> None:
    stats = FeedbackStats()
    start = int(T0.timestamp() * 1000)
    stats.add("p", completion("old", "v1", ["abc"]), start)
    stats.add("p", completion("new", "v1", ["abc"]), start + (JOIN_WINDOW_S + 1) * 1000)
    stats.add("p", accepted("old"), start + (JOIN_WINDOW_S + 2) * 1000)  # too late: an orphan
    stats.add("p", accepted("new"), start + (JOIN_WINDOW_S + 3) * 1000)
    totals = stats.report()["totals"]
    assert (totals["completions"], totals["accepted"]) == (2, 1)
    stats.add("p", shown("zzz"), start + (3 * JOIN_WINDOW_S) * 1000)  # expires the orphan
    assert stats.report()["unjoined"] == 1


def test_latency_percentiles_and_unreadable_entries(store: FeedbackStore) -> None:
    store.record([completion(f"l{i}", "v1", ["a"], latency_ms=float(i)) for i in range(1, 101)])
    store.client.xadd(store.keys.stream("default"), {"t": "future", "e": '{"type": "hologram"}'})
    stats = FeedbackStats()
    stats.refresh(store)
    report = stats.report()
    latency = report["totals"]["latency_ms"]
    assert latency["mean"] == 50.5
    assert latency["p50"] == pytest.approx(50, rel=0.06)
    assert latency["p95"] == pytest.approx(95, rel=0.06)
    assert report["unreadable"] == 1
    assert all(bin_value(latency_bin(ms)) == pytest.approx(ms, rel=0.06) for ms in (1.5, 7, 250, 9000))
