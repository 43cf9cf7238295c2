"""A simulated developer: types real code through an editor path, takes or leaves suggestions.

The developer types each task's text in order. Where an editor would ask (the start of a
line, after its indentation; after a word, when the developer pauses — seeded) the editor
path is asked for a suggestion. The developer takes all of it when it is a prefix of what they
were about to type (a *full accept*); with partial accept, they take its longest correct run of
whole tokens when that holds at least one token that is not blank (a *partial accept*: what
Copilot's word-by-word accept does); otherwise they keep typing the true text. The editor
path — HTTP (:mod:`editloop.eval.replay_http`) or LSP (:mod:`editloop.eval.replay_lsp`) — turns
that into exactly the feedback an editor session would send.

>>> report = replay(tasks, editor, ReplayConfig(seed=1))  # doctest: +SKIP
"""

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

from editloop.eval.replay_tasks import TypingTask
from editloop.metrics import edit_similarity


@dataclass(frozen=True)
class ReplayConfig:
    seed: int = 0
    partial_accept: bool = True
    pause_after_word: float = 0.25  # chance a developer pauses (and the editor asks) after a word
    typing_cps: float = 6.0  # simulated typing speed: the clock retention horizons run on
    max_requests: int | None = None  # stop asking after this many suggestion requests (whole run)
    max_requests_per_file: int | None = None  # ... and after this many in one file (a sampled replay)


@dataclass(frozen=True)
class Suggestion:
    completion_id: str
    text: str  # empty: the server abstained or had nothing
    latency_ms: float
    model_version: str
    ranker: str = ""  # what ranked it, when the editor path says
    rank_ms: float | None = None  # the ranker's own cost on the server, when the editor path says
    source: str = "model"  # who proposed it: the model, or the codebase (a copied continuation)


class Editor(Protocol):
    """One editor session: a document, a cursor, and the feedback it reports."""

    def open(self, task: TypingTask) -> None: ...
    def replace(self, offset: int, removed: int, text: str) -> None:
        """Jump the cursor to ``offset``, delete ``removed`` characters, type ``text``."""
        ...

    def type(self, text: str) -> None: ...
    def suggest(self) -> Suggestion | None: ...
    def accept(self, suggestion: Suggestion, length: int) -> None: ...
    def advance(self, seconds: float) -> None:
        """Simulated time passes (typing, thinking): retention horizons come due."""
        ...

    def close(self) -> None: ...


@dataclass
class ReplayStats:
    files: int = 0
    requests: int = 0
    shown: int = 0
    full: int = 0  # the whole suggestion taken
    partial: int = 0  # a run of whole tokens taken, not the whole suggestion
    any_take: int = 0  # the old measure: at least one non-blank character matched
    abstained: int = 0
    exact: int = 0
    chars_typed: int = 0
    chars_inserted: int = 0
    chars_retained: int = 0  # inserted characters still there when the file is closed
    latencies_ms: list[float] = field(default_factory=list)
    rank_ms: list[float] = field(default_factory=list)
    model_versions: set[str] = field(default_factory=set)
    rankers: set[str] = field(default_factory=set)
    shown_by_source: dict[str, int] = field(default_factory=dict)
    full_by_source: dict[str, int] = field(default_factory=dict)  # full accepts, by who proposed them
    chars_by_source: dict[str, int] = field(default_factory=dict)  # characters inserted, by the same

    def add(self, other: "ReplayStats") -> None:
        for name in ("files", "requests", "shown", "full", "partial", "any_take", "abstained", "exact"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.chars_typed += other.chars_typed
        self.chars_inserted += other.chars_inserted
        self.chars_retained += other.chars_retained
        self.latencies_ms += other.latencies_ms
        self.rank_ms += other.rank_ms
        self.model_versions |= other.model_versions
        self.rankers |= other.rankers
        for mine, theirs in (
            (self.shown_by_source, other.shown_by_source),
            (self.full_by_source, other.full_by_source),
            (self.chars_by_source, other.chars_by_source),
        ):
            for source, count in theirs.items():
                mine[source] = mine.get(source, 0) + count

    def summary(self) -> dict:
        """What users feel first: characters saved and full accepts; the old any-accept rate last."""
        lat = sorted(self.latencies_ms)
        total = self.chars_typed + self.chars_inserted
        return {
            "chars_saved": _ratio(self.chars_inserted, total),
            "full_accept_rate": _ratio(self.full, self.shown),
            "partial_accept_rate": _ratio(self.partial, self.shown),
            "any_accept_rate": _ratio(self.any_take, self.shown),
            "acceptance_rate": _ratio(self.full, self.shown),  # = full_accept_rate
            "files": self.files,
            "requests": self.requests,
            "shown": self.shown,
            "full_accepts": self.full,
            "partial_accepts": self.partial,
            "chars_typed": self.chars_typed,
            "chars_inserted": self.chars_inserted,
            "chars_retained": self.chars_retained,
            "retained_rate": _ratio(self.chars_retained, self.chars_inserted),
            "exact_match": _ratio(self.exact, self.shown),
            "abstain_rate": _ratio(self.abstained, self.requests),
            "latency_p50_ms": _percentile(lat, 0.50),
            "latency_p95_ms": _percentile(lat, 0.95),
            "rank_p50_ms": _percentile(sorted(self.rank_ms), 0.50),
            "shown_by_source": dict(sorted(self.shown_by_source.items())),
            "full_accepts_by_source": dict(sorted(self.full_by_source.items())),
            "chars_inserted_by_source": dict(sorted(self.chars_by_source.items())),
            "model_version": ",".join(sorted(self.model_versions)) or None,
            "ranker": ",".join(sorted(self.rankers)) or None,
        }


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)


@dataclass
class Followed:
    """Text inserted by an accept, followed through later edits: where it is now."""

    start: int
    end: int
    text: str


def shift(regions: list, offset: int, removed: int, inserted: int) -> None:
    """Move followed regions (anything with ``start``/``end``) past an edit at ``offset``."""
    delta = inserted - removed
    for region in regions:
        if region.start >= offset + removed:
            region.start += delta
            region.end += delta
        elif region.end > offset:  # an edit inside the region: follow its end
            region.end = max(region.start, region.end + delta)


@dataclass
class _Document:
    """The replay's own view of the document, to measure what accepted text survives."""

    text: str
    cursor: int = 0
    accepted: list[Followed] = field(default_factory=list)

    def replace(self, offset: int, removed: int, text: str) -> None:
        self.text = self.text[:offset] + text + self.text[offset + removed :]
        self.cursor = offset + len(text)
        shift(self.accepted, offset, removed, len(text))

    def retained_chars(self) -> int:
        return sum(
            round(edit_similarity(self.text[r.start : r.end], r.text) * len(r.text)) for r in self.accepted
        )


def replay(tasks: list[TypingTask], editor: Editor, config: ReplayConfig, progress=None) -> ReplayStats:
    """Type every task through ``editor``; ``progress(done, total)`` is called after each task."""
    stats = ReplayStats()
    rng = random.Random(config.seed)
    for done, task in enumerate(tasks, 1):
        if config.max_requests is not None and stats.requests >= config.max_requests:
            break
        editor.open(task)
        doc = _Document(task.before)
        file_stats = ReplayStats()
        for hunk in task.hunks:
            editor.replace(hunk.offset, hunk.removed, "")
            doc.replace(hunk.offset, hunk.removed, "")
            _type_hunk(hunk.added, editor, doc, config, rng, file_stats, stats.requests)
        file_stats.chars_retained = doc.retained_chars()
        stats.add(file_stats)
        editor.close()
        stats.files += 1
        if progress is not None:
            progress(done, len(tasks))
    return stats


def _budget_left(config: ReplayConfig, file_requests: int, before: int) -> bool:
    if config.max_requests_per_file is not None and file_requests >= config.max_requests_per_file:
        return False
    return config.max_requests is None or before + file_requests < config.max_requests


def _type_hunk(
    text: str,
    editor: Editor,
    doc: _Document,
    config: ReplayConfig,
    rng: random.Random,
    stats: ReplayStats,
    before: int,
) -> None:
    """Type ``text`` at the cursor; ``stats`` counts this file, ``before`` the requests of earlier files."""
    pos, asked = 0, -1
    while pos < len(text):
        budget_left = _budget_left(config, stats.requests, before)
        if pos != asked and budget_left and _asks_here(text, pos, rng, config.pause_after_word):
            asked = pos
            pos += _ask(text[pos:], editor, doc, config, stats)
            continue
        stop = _next_stop(text, pos)
        editor.type(text[pos:stop])
        doc.replace(doc.cursor, 0, text[pos:stop])
        editor.advance((stop - pos) / config.typing_cps)
        stats.chars_typed += stop - pos
        pos = stop


def _ask(truth: str, editor: Editor, doc: _Document, config: ReplayConfig, stats: ReplayStats) -> int:
    """One suggestion request at the cursor; returns how many characters it inserted."""
    started = time.perf_counter()
    suggestion = editor.suggest()
    stats.requests += 1
    stats.latencies_ms.append((time.perf_counter() - started) * 1000)
    if suggestion is not None and suggestion.rank_ms is not None:
        stats.rank_ms.append(suggestion.rank_ms)
    if suggestion is None or not suggestion.text:
        stats.abstained += suggestion is not None
        return 0
    stats.model_versions.add(suggestion.model_version)
    if suggestion.ranker:
        stats.rankers.add(suggestion.ranker)
    stats.shown += 1
    _count(stats.shown_by_source, suggestion.source, 1)
    stats.exact += exact_match(suggestion.text, truth)
    stats.any_take += any_take(suggestion.text, truth)
    taken = accepted_length(suggestion.text, truth, config.partial_accept)
    if taken == 0:
        return 0
    editor.accept(suggestion, taken)
    start = doc.cursor
    doc.replace(start, 0, suggestion.text[:taken])
    doc.accepted.append(Followed(start, start + taken, suggestion.text[:taken]))
    editor.advance(0.5)  # a glance and a keystroke
    stats.full += taken == len(suggestion.text)
    stats.partial += taken < len(suggestion.text)
    stats.chars_inserted += taken
    _count(stats.full_by_source, suggestion.source, int(taken == len(suggestion.text)))
    _count(stats.chars_by_source, suggestion.source, taken)
    return taken


def _count(counts: dict[str, int], source: str, n: int) -> None:
    counts[source] = counts.get(source, 0) + n


def accepted_length(suggestion: str, truth: str, partial: bool) -> int:
    """All of it when it is a prefix of the truth (a full accept); else, with ``partial``, the longest
    correct run of whole tokens, when it holds a token that is not blank; else nothing.

    A token ends where the truth does not go on with the same identifier or number: taking
    ``self.fo`` of ``self.foo`` would leave the developer mid-word, so the take stops at ``self.``.
    """
    if truth.startswith(suggestion):
        return len(suggestion)
    if not partial:
        return 0
    common = _common_prefix(suggestion, truth)
    while common > 0 and _inside_word(truth, common):
        common -= 1
    return common if suggestion[:common].strip() else 0


def any_take(suggestion: str, truth: str) -> bool:
    """The old replay's "accepted": the suggestion's first non-blank character matched."""
    common = _common_prefix(suggestion, truth)
    return bool(suggestion[:common].strip())


def _common_prefix(a: str, b: str) -> int:
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _inside_word(text: str, i: int) -> bool:
    """Cutting ``text`` at ``i`` splits an identifier or number."""
    return 0 < i < len(text) and _word(text[i - 1]) and _word(text[i])


def exact_match(suggestion: str, truth: str) -> bool:
    """The suggestion is exactly the true text of the lines it spans (trailing blanks aside)."""
    lines = suggestion.count("\n") + 1
    span = "\n".join(truth.split("\n")[:lines])
    return suggestion.rstrip() == span.rstrip()


def span_of(text: str, start: int, lines: int) -> str:
    """``lines`` lines of ``text`` from ``start`` (the first one possibly partial), no final newline."""
    return "\n".join(text[start:].split("\n")[:lines])


def similarity(a: str, b: str) -> float:
    """:func:`editloop.metrics.edit_similarity`, rounded for the event."""
    return round(edit_similarity(a, b), 4)


def _line_start(text: str, i: int) -> bool:
    """``i`` is where a fresh line's code begins: after a newline and the indentation auto-indent typed."""
    line_begin = text.rfind("\n", 0, i) + 1
    return not text[line_begin:i].strip() and (i == len(text) or text[i] not in " \t")


def _word_end(text: str, i: int) -> bool:
    return i < len(text) and _word(text[i - 1]) and not _word(text[i])


def _asks_here(text: str, i: int, rng: random.Random, pause: float) -> bool:
    """The editor asks at every fresh line, and after a word when the developer pauses there."""
    if _line_start(text, i):
        return True
    return i > 0 and _word_end(text, i) and rng.random() < pause


def _next_stop(text: str, pos: int) -> int:
    """The next place after ``pos`` where the editor might ask: a fresh line's code, or a word's end."""
    i = pos + 1
    while i < len(text):
        if text[i - 1] == "\n":
            while i < len(text) and text[i] in " \t":
                i += 1
            return i
        if _word_end(text, i):
            return i
        i += 1
    return len(text)


def report_dict(stats: ReplayStats, config: ReplayConfig, via: str, split: str) -> dict:
    return {"via": via, "split": split, "config": asdict(config), **stats.summary()}
