"""What the engine takes and gives: one request shape for every transport."""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

Mode = Literal["line", "block", "auto"]
Source = Literal["model", "codebase"]  # who proposed a candidate: the model, or a copy from the code
ResolvedMode = Literal["line", "block"]  # "auto", as the engine resolved it
# A language as editors and APIs name it (python, typescriptreact, objective-c, c++, c#): short
# and plain, so a made-up name can neither grow a cache nor forge a log line.
LANGUAGE_PATTERN = r"^[A-Za-z0-9_+#.\-]{1,64}$"
Language = Annotated[str, Field(max_length=64, pattern=LANGUAGE_PATTERN)]
MAX_EXTRA = 32  # snippets from other files one request may carry


def plain_language(name: str | None) -> str | None:
    """``name`` if it is a language name a request may carry, else None (then guessed from the path).

    >>> plain_language("typescriptreact"), plain_language("x" * 65), plain_language("py\\nINFO forged")
    ('typescriptreact', None, None)
    """
    return name if name and re.fullmatch(LANGUAGE_PATTERN, name) else None


SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Lone UTF-16 surrogates are valid JSON but not text any tokenizer takes: make them U+FFFD."""
    # ASCII text (most code) has none, and saying so takes 0.04 µs against the search's 27 µs for
    # an 8,800-character prefix; otherwise one regex search, not a Python loop over its characters.
    if text.isascii() or not SURROGATE.search(text):
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


class Snippet(BaseModel):
    """Code from another file that may help (an open buffer, a definition, a recent edit)."""

    filepath: str = Field(max_length=1024)
    text: str
    score: float | None = Field(
        default=None, description="Relevance; the prompt takes higher scores first (unset: before all)."
    )

    @field_validator("filepath", "text")
    @classmethod
    def _no_lone_surrogates(cls, text: str) -> str:
        return _clean(text)


class CompletionRequest(BaseModel):
    prefix: str = Field(description="Text before the cursor.")
    suffix: str = Field(default="", description="Text after the cursor.")
    language: Language | None = Field(
        default=None, description="e.g. python, rust; guessed from filepath if unset."
    )
    filepath: str | None = Field(default=None, max_length=1024)
    extra: list[Snippet] = Field(default=[], max_length=MAX_EXTRA, description="Context from other files.")
    mode: Mode = Field(default="auto", description="line: rest of the line; block: the indented block.")
    n: int = Field(default=1, ge=1, le=16, description="Candidates to generate (the best ones are returned).")
    max_tokens: int | None = Field(default=None, ge=1, le=1024)
    temperature: float = Field(
        default=0.7, ge=0, le=2, description="Sampling temperature of candidates 2..n."
    )
    time_budget_ms: int | None = Field(default=None, ge=1, le=60_000, description="Stop decoding after this.")
    document_id: str | None = Field(default=None, description="A newer request for it stops this one.")
    seed: int = 0
    project: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="Feedback stream of this completion (default: the server's default project).",
    )
    user: str | None = Field(default=None, max_length=128, description="Who asked, for feedback events.")
    ranker: Literal["auto", "value", "logprob"] | None = Field(
        default=None,
        description="Rank by the version's value model or by log-prob (default: the server's choice).",
    )
    project_root: str | None = Field(
        default=None,
        max_length=4096,
        description="Absolute path of the project on the server: context is gathered from it, "
        "if it lies inside one of the server's context_roots (else 403 context_root_not_allowed).",
    )

    @field_validator("prefix", "suffix")
    @classmethod
    def _no_lone_surrogates(cls, text: str) -> str:
        return _clean(text)


class Choice(BaseModel):
    index: int
    text: str
    score: float
    source: Source = "model"


class CandidateReport(BaseModel):
    """Why each raw candidate was kept or dropped: debugging and training data."""

    text: str
    score: float | None
    mean_logprob: float | None
    logprobs: list[float] = []  # per token of the kept text
    parse_valid: bool | None
    dropped: str | None
    finish_reason: str
    source: Source = "model"
    origin: str | None = None  # a codebase candidate's file (relative to the project root)


class CompletionResult(BaseModel):
    id: str
    model_version: str
    ranker: str = Field(default="logprob", description="What ranked the candidates: value or logprob.")
    choices: list[Choice]
    abstained: bool
    mode: ResolvedMode
    cached: bool = False
    timings: dict[str, float]
    prompt_tokens: int = 0
    cached_tokens: int = 0
    truncated: bool = False  # the prompt did not fit and lost context
    candidates: list[CandidateReport] = []
    context: list[Snippet] = Field(
        default=[], description="The snippets from other files that went into the prompt, best first."
    )
