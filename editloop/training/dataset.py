"""From feedback events to training data: what the user kept, for SFT, GRPO and the value model.

Events are joined by ``completion_id``. The ``completion`` event gives the context (prefix,
suffix, language, file) and the candidates; what happened next decides the target:

- accepted and still there at the last retention horizon → the retained text;
- accepted and then changed (``edited`` after ``accepted``) → the corrected text;
- rejected (or nothing shown) and then written by hand (``edited`` after ``rejected`` or
  ``abstained``) → the developer's own text.

Every candidate the ranker chose among is also a value-model row: taken whole and kept or not
(one not shown: whether it is a prefix of what the developer wrote there), once as decoded and
once for each smaller candidate count the request also shows (``VIEWS``). Samples are
deduplicated and split by file (a path hash) and by time (the newest slice) so held-out
evaluation never sees a file or a moment the training saw.

>>> data = build_dataset(events, DatasetConfig())  # doctest: +SKIP
>>> len(data.sft_train), len(data.sft_heldout), len(data.value_rows)  # doctest: +SKIP
"""

import dataclasses
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from editloop.completion.value import ValueInput, others_of
from editloop.eval.replay import accepted_length
from editloop.feedback.events import (
    AcceptedEvent,
    Candidate,
    CompletionEvent,
    EditedEvent,
    FeedbackEvent,
    RejectedEvent,
    RetainedEvent,
    event_from_json,
)
from editloop.metrics import normalize
from editloop.training.value import ValueRow


@dataclass(frozen=True)
class DatasetConfig:
    min_retained: float = field(
        default=0.5, metadata={"help": "Accepted text kept below this is not a target."}
    )
    heldout_files: float = field(default=0.2, metadata={"help": "Fraction of files (path hash) held out."})
    heldout_recent: float = field(default=0.1, metadata={"help": "Newest fraction of samples held out."})
    max_reference_chars: int = field(default=400, metadata={"help": "Longer targets are dropped."})


@dataclass(frozen=True)
class Sample:
    """One FIM training target: the context and the text the developer kept there."""

    prefix: str
    suffix: str
    reference: str
    language: str
    filepath: str
    source: str  # retained | corrected | written
    completion_id: str
    timestamp: float
    model_version: str = ""
    shown_text: str = ""  # what the model had suggested there (empty: nothing shown)
    # The other files' snippets that were in the prompt ({filepath, text, score}): the model is
    # trained on the prompt it was served. Code-free events keep no text, so none come from them.
    extra: tuple[dict, ...] = ()

    def key(self) -> str:
        raw = f"{self.filepath}\0{self.prefix[-500:]}\0{self.suffix[:200]}\0{self.reference}"
        return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()


@dataclass
class Dataset:
    sft_train: list[Sample] = field(default_factory=list)
    sft_heldout: list[Sample] = field(default_factory=list)
    value_train: list[ValueRow] = field(default_factory=list)
    value_heldout: list[ValueRow] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def value_rows(self) -> list[ValueRow]:
        return self.value_train + self.value_heldout


@dataclass
class _Story:
    """Everything that happened to one completion."""

    completion: CompletionEvent | None = None
    accepted: dict[int, AcceptedEvent] = field(default_factory=dict)
    rejected: set[int] = field(default_factory=set)
    retained: dict[int, RetainedEvent] = field(default_factory=dict)  # the latest horizon
    edited: dict[tuple[int, str], EditedEvent] = field(default_factory=dict)
    shown: set[int] = field(default_factory=set)


def _stories(events: list[FeedbackEvent]) -> dict[str, _Story]:
    stories: dict[str, _Story] = defaultdict(_Story)
    for event in sorted(events, key=lambda e: e.timestamp):
        story = stories[event.completion_id]
        if isinstance(event, CompletionEvent):
            story.completion = event
            story.shown.update(c.index for c in event.candidates if c.shown)
        elif isinstance(event, AcceptedEvent):
            story.accepted[event.choice] = event
            story.shown.add(event.choice)
        elif isinstance(event, RejectedEvent):
            story.rejected.add(event.choice)
        elif isinstance(event, RetainedEvent):
            latest = story.retained.get(event.choice)
            if latest is None or event.horizon_s >= latest.horizon_s:
                story.retained[event.choice] = event
        elif isinstance(event, EditedEvent):
            story.edited[(event.choice, event.after)] = event
        else:
            story.shown.add(event.choice)
    return stories


def _candidate_text(completion: CompletionEvent, choice: int) -> str:
    return next((c.text for c in completion.candidates if c.index == choice), "")


def _target(story: _Story, choice: int, config: DatasetConfig) -> tuple[str, str] | None:
    """(reference, source) for one shown choice, or None when the developer kept nothing we trust."""
    corrected = story.edited.get((choice, "accepted"))
    if choice in story.accepted:
        if corrected is not None and corrected.text.strip():
            return corrected.text, "corrected"
        retained = story.retained.get(choice)
        if retained is not None:
            if retained.similarity < config.min_retained or not retained.text.strip():
                return None
            return retained.text, "retained"
        accepted = story.accepted[choice]
        text = _candidate_text(story.completion, choice) if story.completion else ""
        taken = text if accepted.accepted_length is None else text[: accepted.accepted_length]
        return (taken, "retained") if taken.strip() else None
    written = story.edited.get((choice, "rejected")) or story.edited.get((choice, "abstained"))
    if written is not None and written.text.strip():
        return written.text, "written"
    return None


def _samples(stories: dict[str, _Story], config: DatasetConfig) -> list[Sample]:
    samples = []
    for cid, story in stories.items():
        completion = story.completion
        if completion is None:
            continue  # the context never arrived (e.g. recorded by an older server): nothing to learn
        for choice in sorted(story.shown | set(story.accepted) | {k[0] for k in story.edited}):
            target = _target(story, choice, config)
            if target is None or len(target[0]) > config.max_reference_chars:
                continue
            samples.append(
                Sample(
                    prefix=completion.prefix,
                    suffix=completion.suffix,
                    reference=target[0],
                    language=completion.language or "text",
                    filepath=completion.filepath or completion.filepath_hash or "",
                    source=target[1],
                    completion_id=cid,
                    timestamp=completion.timestamp.timestamp(),
                    model_version=completion.model_version,
                    shown_text=_candidate_text(completion, choice),
                    extra=_extra(completion),
                )
            )
    return samples


def _extra(completion: CompletionEvent) -> tuple[dict, ...]:
    return tuple(
        {"filepath": s.filepath or s.filepath_hash or "", "text": s.text, "score": s.score}
        for s in completion.context
        if s.text
    )


def _value_rows(stories: dict[str, _Story]) -> list[ValueRow]:
    """Every candidate the ranker chose among, labelled taken-whole-and-kept or not, in each view.

    Shown candidates by what happened to them; the others by what the developer wrote at the
    spot (:func:`would_take`), where that is known. A request decoded with m candidates also
    shows what its first k would have been (:data:`VIEWS`), as rows with ``view`` k.
    """
    rows = []
    for cid, story in stories.items():
        if story.completion is None:
            continue
        labelled = _labelled(cid, story, story.completion)
        rows += [row for _, row in labelled]
        decoded = sum(c.source == "model" for c in story.completion.candidates)
        for view in (k for k in VIEWS if k < decoded):
            rows += _in_view(story.completion.candidates, labelled, view)
    return rows


# Candidate counts a request decoded with more candidates is also seen at. Feedback is recorded at
# one count and served at others (the LSP asks 3, an HTTP client often 1, an operator may change
# it), and the agreement features mean something else at each. Candidate i's text does not depend
# on how many were decoded (each sampler is seeded by its index, and sampled lines are held to the
# greedy one's rounds), so the first k of a recorded request are exactly what k would have given.
VIEWS = (1, 3)


def _ranked_samples(candidates: list) -> tuple[str, ...]:
    """The model's samples as the engine's ranker saw them: every one not dropped as broken,
    duplicates included."""
    return tuple(c.text for c in candidates if c.dropped in (None, "duplicate") and c.source == "model")


def _labelled(cid: str, story: _Story, completion: CompletionEvent) -> list[tuple[Candidate, ValueRow]]:
    """Each candidate whose label is known, with its row as the request was decoded."""
    written = _written(story)
    samples = _ranked_samples(completion.candidates)
    out = []
    for candidate in completion.candidates:
        if not candidate.text:
            continue
        shown = candidate.index in story.shown
        retained = story.retained.get(candidate.index) if shown else None
        taken: bool | None
        if shown:
            taken = _taken_whole(story, candidate.index, candidate.text)
            kept = _kept_shown(story, candidate.index, candidate.text)
        elif candidate.dropped is None and written is not None:
            taken = would_take(candidate.text, written)
            kept = accepted_length(normalize(candidate.text), normalize(written), partial=True)
        else:
            taken = None
        if taken is None:
            continue
        value_input = ValueInput(
            completion.prefix,
            completion.suffix,
            candidate.text,
            candidate.logprobs,
            candidate.parse_valid,
            candidate.score,
            others=others_of(candidate.text, samples),
            source=candidate.source,
        )
        row = ValueRow(
            value_input,
            accepted=taken,
            retained=retained.similarity if retained else None,
            file=completion.filepath or completion.filepath_hash or "",
            timestamp=completion.timestamp.timestamp(),
            request=cid,
            shown=shown,
            kept_chars=kept,
        )
        out.append((candidate, row))
    return out


def _in_view(
    candidates: list[Candidate], labelled: list[tuple[Candidate, ValueRow]], view: int
) -> list[ValueRow]:
    """The rows as if only the first ``view`` model candidates had been decoded: the same labels,
    their peers from the view (codebase copies do not depend on the count)."""

    def seen(c: Candidate) -> bool:
        return c.source != "model" or c.index < view

    samples = _ranked_samples([c for c in candidates if seen(c)])
    return [
        dataclasses.replace(
            row, input=dataclasses.replace(row.input, others=others_of(c.text, samples)), view=view
        )
        for c, row in labelled
        if seen(c)
    ]


def _taken_whole(story: _Story, choice: int, text: str) -> bool:
    return choice in story.accepted and _kept_shown(story, choice, text) >= len(text.rstrip())


def _kept_shown(story: _Story, choice: int, text: str) -> int:
    """Characters of a shown candidate the developer took: all of it, the part a partial accept
    measured, or none."""
    accepted = story.accepted.get(choice)
    if accepted is None:
        return 0
    return len(text) if accepted.accepted_length is None else min(accepted.accepted_length, len(text))


def _written(story: _Story) -> str | None:
    """What the developer ended up with at the completion's spot, when the events say."""
    if story.accepted:
        choice, accepted = next(iter(story.accepted.items()))  # an editor takes one suggestion
        corrected = story.edited.get((choice, "accepted"))
        if corrected is not None:
            return corrected.text
        retained = story.retained.get(choice)
        if retained is not None:
            return retained.text
        text = _candidate_text(story.completion, choice) if story.completion else ""
        return text if accepted.accepted_length is None else text[: accepted.accepted_length]
    for (_, after), edited in story.edited.items():
        if after in ("rejected", "abstained"):
            return edited.text
    return None


def would_take(candidate: str, written: str) -> bool | None:
    """Whether a developer who wrote ``written`` would have taken all of ``candidate``.

    Yes when it is a prefix of what they wrote (as the replay's developer decides); unknown (None)
    when what they wrote is shorter than it and agrees so far, or is blank.
    """
    text, truth = normalize(candidate), normalize(written)
    if not text or not truth.strip():
        return None
    if truth.startswith(text):
        return True
    if text.startswith(truth):
        return None
    return False


def file_bucket(path: str) -> float:
    digest = hashlib.sha256(f"dataset:{path}".encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split(items: list, file_of, time_of, config: DatasetConfig) -> tuple[list, list]:
    """Held out: every sample of the held-out files (path hash), and the newest slice in time.

    Train never sees a held-out file, and never anything newer than the held-out slice: the
    model is judged on files it did not train on and on what came after its training data.
    """
    by_file = [x for x in items if file_bucket(file_of(x)) < config.heldout_files]
    rest = [x for x in items if file_bucket(file_of(x)) >= config.heldout_files]
    if not rest:
        return [], by_file
    times = sorted(time_of(x) for x in rest)
    cutoff = times[min(len(times) - 1, int(len(times) * (1 - config.heldout_recent)))]
    recent = [x for x in rest if config.heldout_recent > 0 and time_of(x) >= cutoff]
    train = [x for x in rest if not (config.heldout_recent > 0 and time_of(x) >= cutoff)]
    return train, by_file + recent


def build_dataset(events: list[FeedbackEvent], config: DatasetConfig | None = None) -> Dataset:
    config = config or DatasetConfig()
    stories = _stories(events)
    found = _samples(stories, config)
    unique: dict[str, Sample] = {}
    for sample in found:
        unique.setdefault(sample.key(), sample)
    samples = list(unique.values())
    sft_train, sft_heldout = _split(samples, lambda s: s.filepath, lambda s: s.timestamp, config)
    rows = _value_rows(stories)
    value_train, value_heldout = _split(rows, lambda r: r.file, lambda r: r.timestamp, config)
    by_source: defaultdict[str, int] = defaultdict(int)
    for sample in samples:
        by_source[sample.source] += 1
    stats = {
        "events": len(events),
        "completions": sum(s.completion is not None for s in stories.values()),
        "samples": len(samples),
        "duplicates_dropped": len(found) - len(samples),
        "by_source": dict(by_source),
        "sft_train": len(sft_train),
        "sft_heldout": len(sft_heldout),
        "value_rows": len(rows),
        "value_rows_as_decoded": sum(r.view == 0 for r in rows),  # the rest: views with fewer candidates
        "value_rows_shown": sum(r.shown for r in rows if r.view == 0),
        "value_positives": sum(r.label for r in rows if r.view == 0),
    }
    return Dataset(sft_train, sft_heldout, value_train, value_heldout, stats)


class FeedbackArchive:
    """Every event the trainer has consumed, in one fsynced JSONL file; datasets are built from it.

    Events are acknowledged on the stream only after they are here, so a crash between the two
    re-delivers them, and the archive drops the duplicates by ``event_id``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: set[str] | None = None  # event ids archived, read once then kept up to date

    def append(self, events: list[FeedbackEvent]) -> int:
        """Append events not yet archived; durable on return. Returns how many were new."""
        seen = self._ids()
        fresh = list({e.event_id: e for e in events if e.event_id not in seen}.values())
        if not fresh:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
        with self.path.open("a", encoding="utf-8") as out:
            if torn:
                out.write("\n")  # end a line torn by a crash so the next event starts clean
            for event in fresh:
                out.write(event.model_dump_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
        seen.update(e.event_id for e in fresh)
        return len(fresh)

    def events(self) -> list[FeedbackEvent]:
        if not self.path.is_file():
            return []
        events = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    events.append(event_from_json(line))
                except ValueError:
                    continue  # a torn last line from a crash mid-write: the stream re-delivers it
        return events

    def _ids(self) -> set[str]:
        if self._seen is None:
            self._seen = set()
            if self.path.is_file():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        self._seen.add(json.loads(line)["event_id"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn line: its event is not archived
        return self._seen

    def __len__(self) -> int:
        return len(self._ids())


def write_jsonl(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(asdict(sample)) + "\n")
