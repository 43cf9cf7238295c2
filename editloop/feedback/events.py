"""The feedback schema: what happened to each completion, as one closed, typed union.

Every event names the completion it is about (``completion_id``, plus ``choice`` for the
candidate), carries a client-chosen ``event_id`` that makes a retry harmless, and says who
(``user``), where (``project``) and when (``timestamp``, UTC).

>>> parse_event({"type": "accepted", "event_id": "e1", "completion_id": "c1", "choice": 0})
AcceptedEvent(...)  # doctest: +SKIP
"""

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

# Bounded windows: enough context to rebuild a FIM prompt, never a whole file.
PREFIX_WINDOW = 6000
SUFFIX_WINDOW = 2000
TEXT_LIMIT = 8000

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


def _now() -> datetime:
    return datetime.now(UTC)


def path_hash(path: str) -> str:
    """How a file path is stored when paths are private: stable, so samples still split by file."""
    return hashlib.sha256(path.encode("utf-8", "replace")).hexdigest()[:16]


class EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: Id = Field(description="Idempotency key chosen by the client; a retry reuses it.")
    completion_id: Id = Field(description="The completion this event is about.")
    user: str = Field(default="anonymous", min_length=1, max_length=128)
    project: Id = Field(default="default", description="One feedback stream per project.")
    timestamp: datetime = Field(default_factory=_now, description="When it happened (UTC).")
    redacted: int = Field(default=0, ge=0, description="Secrets the privacy filter replaced in its text.")
    code_free: bool = Field(
        default=False, description="Its text was dropped; only hashes and metrics remain."
    )

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError as exc:  # 9999-12-31T23:00-12:00 is past year 9999 in UTC
            raise ValueError("timestamp is out of range once converted to UTC") from exc


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    text: str = Field(max_length=TEXT_LIMIT)
    score: float | None = None
    shown: bool = Field(default=False, description="Returned to the client (not dropped or abstained).")
    dropped: str | None = Field(default=None, description="Why the engine dropped it, if it did.")
    text_hash: str | None = Field(
        default=None, max_length=64, description="Keyed hash of the text (code-free)."
    )
    text_chars: int | None = Field(default=None, ge=0, description="Length of the text (code-free).")
    logprobs: list[float] | None = Field(
        default=None, max_length=1024, description="Token log-probabilities of its text (value-model input)."
    )
    parse_valid: bool | None = Field(default=None, description="Parses with the context; None: unknown.")
    source: Literal["model", "codebase"] = Field(
        default="model", description="Who proposed it: the model, or a continuation copied from the codebase."
    )


def content_hash(text: str) -> str:
    """A context snippet's hash as recorded (code-free mode replaces it by a keyed one)."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


class ContextSnippet(BaseModel):
    """A snippet from another file that was in the completion's prompt."""

    model_config = ConfigDict(extra="forbid")

    filepath: str | None = Field(default=None, max_length=1024, description="Unset in private-path mode.")
    filepath_hash: str | None = Field(default=None, max_length=64)
    text: str = Field(default="", max_length=TEXT_LIMIT, description="Empty in code-free mode.")
    text_hash: str = Field(max_length=64, description="Content hash; keyed in code-free mode.")
    score: float | None = None


class CompletionEvent(EventBase):
    """A completion was generated: its context, its candidates, and how long it took."""

    type: Literal["completion"] = "completion"
    prefix: str = Field(default="", description=f"Last {PREFIX_WINDOW} characters before the cursor.")
    suffix: str = Field(default="", description=f"First {SUFFIX_WINDOW} characters after the cursor.")
    language: str | None = Field(default=None, max_length=64)
    filepath: str | None = Field(default=None, max_length=1024, description="Unset in private-path mode.")
    filepath_hash: str | None = Field(default=None, max_length=64)
    prefix_hash: str | None = Field(default=None, max_length=64, description="Keyed hash (code-free).")
    suffix_hash: str | None = Field(default=None, max_length=64, description="Keyed hash (code-free).")
    model_version: str = Field(default="unknown", max_length=128)
    ranker: str | None = Field(default=None, max_length=32, description="What ranked the candidates.")
    mode: Literal["line", "block"] | None = None
    candidates: list[Candidate] = Field(default=[], max_length=32)
    context: list[ContextSnippet] = Field(default=[], max_length=32, description="Other files in the prompt.")
    abstained: bool = False
    latency_ms: float | None = Field(default=None, ge=0)
    source: str | None = Field(default=None, max_length=32, description="complete, infill, lsp, replay, ...")

    @field_validator("prefix")
    @classmethod
    def _prefix_window(cls, text: str) -> str:
        return text[-PREFIX_WINDOW:]

    @field_validator("suffix")
    @classmethod
    def _suffix_window(cls, text: str) -> str:
        return text[:SUFFIX_WINDOW]


class ShownEvent(EventBase):
    type: Literal["shown"] = "shown"
    choice: int = Field(default=0, ge=0)


class AcceptedEvent(EventBase):
    type: Literal["accepted"] = "accepted"
    choice: int = Field(default=0, ge=0)
    accepted_length: int | None = Field(
        default=None, ge=0, description="Characters taken on a partial accept; unset: all of it."
    )
    partial: Literal["line", "word"] | None = Field(
        default=None, description="A partial accept the client names but does not measure (Tabby's line)."
    )


class RejectedEvent(EventBase):
    type: Literal["rejected"] = "rejected"
    choice: int = Field(default=0, ge=0)
    reason: Literal["dismissed", "superseded"] = "dismissed"


class RetainedEvent(EventBase):
    """The accepted region, some time after acceptance: what survived of it."""

    type: Literal["retained"] = "retained"
    choice: int = Field(default=0, ge=0)
    horizon_s: float = Field(gt=0, description="Seconds after acceptance.")
    text: str = Field(max_length=TEXT_LIMIT, description="The region's text now.")
    similarity: float = Field(ge=0, le=1, description="Edit similarity to what was accepted.")
    text_hash: str | None = Field(default=None, max_length=64, description="Keyed hash of text (code-free).")
    text_chars: int | None = Field(default=None, ge=0, description="Length of text (code-free).")


class EditedEvent(EventBase):
    """What the user wrote at the completion's spot: instead of it (rejected) or on top of it (accepted)."""

    type: Literal["edited"] = "edited"
    choice: int = Field(default=0, ge=0)
    after: Literal["rejected", "accepted", "abstained"] = Field(
        default="rejected",
        description="What the completion met: rejected, accepted (then changed), or abstained (none shown).",
    )
    text: str = Field(max_length=TEXT_LIMIT, description="The line or block the user ended up with.")
    text_hash: str | None = Field(default=None, max_length=64, description="Keyed hash of text (code-free).")
    text_chars: int | None = Field(default=None, ge=0, description="Length of text (code-free).")


FeedbackEvent = Annotated[
    CompletionEvent | ShownEvent | AcceptedEvent | RejectedEvent | RetainedEvent | EditedEvent,
    Field(discriminator="type"),
]
EVENT_TYPES = ("completion", "shown", "accepted", "rejected", "retained", "edited")

_ADAPTER: TypeAdapter[FeedbackEvent] = TypeAdapter(FeedbackEvent)


def parse_event(data: object) -> FeedbackEvent:
    """Validate one event from JSON-like data (raises pydantic's ValidationError naming the field)."""
    return _ADAPTER.validate_python(data)


def event_from_json(raw: str | bytes) -> FeedbackEvent:
    return _ADAPTER.validate_json(raw)


class FeedbackSink(Protocol):
    """Where events go: the Redis store, the HTTP client of a remote server, a spool."""

    def record(self, events: list[FeedbackEvent]) -> None:
        """Return only once every event is durably stored (or known to be a duplicate)."""
        ...
