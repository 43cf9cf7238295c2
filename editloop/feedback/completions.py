"""The ``completion`` event of a served completion: its context window, candidates, timing, model.

>>> event = completion_event(request, result, source="complete", latency_ms=52.1)  # doctest: +SKIP
>>> event.completion_id == result.id and event.candidates[0].shown
True

Candidate ``index`` i is ``result.choices[i]`` (the ``choice`` later events name); the engine's other
candidates follow, kept-but-not-returned first, then dropped ones with the reason.
"""

from typing import Any

from editloop.completion.types import CandidateReport, CompletionRequest, CompletionResult, Snippet
from editloop.feedback.events import TEXT_LIMIT, Candidate, CompletionEvent, ContextSnippet, content_hash

MAX_CANDIDATES = 32


def completion_event(
    request: CompletionRequest,
    result: CompletionResult,
    *,
    source: str,
    latency_ms: float | None = None,
    shown: int | None = None,
    user: str | None = None,
    project: str | None = None,
) -> CompletionEvent:
    """``shown``: how many of ``result.choices`` the client displays (default: all it got)."""
    shown = len(result.choices) if shown is None else shown
    chosen = {c.text for c in result.choices}
    reports = {r.text: r for r in result.candidates if r.dropped is None}
    candidates = [
        _candidate(i, c.text, c.score, reports.get(c.text), shown=i < shown)
        for i, c in enumerate(result.choices)
    ]
    rest = [r for r in result.candidates if r.dropped is None and r.text not in chosen]
    rest += [r for r in result.candidates if r.dropped is not None]
    candidates += [
        _candidate(len(candidates) + i, r.text, r.score, r, shown=False) for i, r in enumerate(rest)
    ]
    origin: dict[str, Any] = {k: v for k, v in {"user": user, "project": project}.items() if v}
    return CompletionEvent(
        event_id=f"{result.id}.completion",
        completion_id=result.id,
        prefix=request.prefix,
        suffix=request.suffix,
        language=request.language,
        filepath=request.filepath,
        model_version=result.model_version,
        ranker=result.ranker,
        mode=result.mode,
        candidates=candidates[:MAX_CANDIDATES],
        context=[_snippet(s) for s in result.context[:MAX_CANDIDATES]],
        abstained=result.abstained,
        latency_ms=latency_ms if latency_ms is not None else result.timings.get("total_ms"),
        source=source,
        **origin,
    )


def _candidate(
    index: int, text: str, score: float | None, report: CandidateReport | None, shown: bool
) -> Candidate:
    return Candidate(
        index=index,
        text=text[:TEXT_LIMIT],
        score=score,
        shown=shown,
        dropped=report.dropped if report else None,
        logprobs=report.logprobs[:1024] if report else None,
        parse_valid=report.parse_valid if report else None,
        source=report.source if report else "model",
    )


def _snippet(snippet: Snippet) -> ContextSnippet:
    return ContextSnippet(
        filepath=snippet.filepath,
        text=snippet.text[:TEXT_LIMIT],
        text_hash=content_hash(snippet.text),
        score=snippet.score,
    )
