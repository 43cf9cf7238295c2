"""The seam between the completion engine and whatever runs the model.

Two implementations: :mod:`editloop.models.llama` (llama.cpp in-process, the default) and
:mod:`editloop.models.remote` (an OpenAI-compatible ``/v1/completions`` server such as vLLM
or llama.cpp's on a GPU box). The engine builds token ids; a backend turns them into
candidates with per-token log-probs.
"""

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from editloop.models.fim import FimTemplate

FinishReason = Literal["stop", "length", "cancelled", "deadline"]


@dataclass(frozen=True)
class GenerationParams:
    n: int = 1
    max_tokens: int = 64
    # Candidate 0 is always greedy; the others sample at this temperature (0 → all greedy,
    # which the backend collapses into one decode).
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] = ()  # a candidate ends at the first of these; the stop string is cut off
    deadline: float | None = None  # time.monotonic() after which decoding stops ("deadline")
    cancel: threading.Event | None = None  # set by a newer request or a disconnect ("cancelled")
    # Whose prompt this is (a file): a backend that caches prompts keeps one cache per document.
    document: str | None = None
    # Sampled candidates end ("length") at this many times the greedy candidate's length in decode
    # rounds (see alternative_limit); 0: only max_tokens bounds them. Honoured by the in-process
    # backend.
    stretch: float = 0.0
    # Also read each candidate's last hidden state (Generation.hidden), for a ranker that learns from it.
    hidden: bool = False

    def interruption(self) -> FinishReason | None:
        """Why decoding must stop now, if it must."""
        if self.cancel is not None and self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        return None


# However short the greedy candidate, a sampled one may run this many tokens. Two, not four: on
# 2,600 held-out replay requests with 5 candidates the shown, accepted and saved counts were the same
# within a few suggestions, and the two steps saved are 0.4-0.6 ms of n=5's p50 on the typing trace
# (docs/measurements.md, "Tokenizing only what is new").
ALTERNATIVE_FLOOR = 2


def alternative_limit(greedy_rounds: int, params: GenerationParams) -> int:
    """The most tokens a sampled candidate keeps once the greedy one has ended in ``greedy_rounds``.

    A request waits for its longest candidate: one sampled line that runs on far past the greedy
    one would set the whole request's latency. The greedy length is counted in decode rounds
    (:func:`~editloop.models.speculative.copy_rounds`: a run copied from the context is one round)
    because a sampled line seldom copies, so it takes a step a token.

    >>> alternative_limit(6, GenerationParams(max_tokens=64, stretch=1.5))
    9
    >>> alternative_limit(1, GenerationParams(max_tokens=64, stretch=1.5))
    2
    >>> alternative_limit(1, GenerationParams(max_tokens=64))  # stretch 0: no limit
    64
    """
    if params.stretch <= 0:
        return params.max_tokens
    return min(params.max_tokens, max(ALTERNATIVE_FLOOR, math.ceil(params.stretch * greedy_rounds)))


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log P(token) under the model's unscaled distribution, one per token
    finish_reason: FinishReason
    # The model's last hidden state on the candidate (the row its last token was drawn from), when
    # asked for and the backend reads one.
    hidden: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class GenerationResult:
    generations: list[Generation]
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused from the previous request
    prompt_ms: float
    decode_ms: float
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    """A loaded model that completes FIM prompts."""

    version: str  # registry version (or a label for a remote model)
    fim: FimTemplate
    n_ctx: int  # the most tokens a prompt plus its completion may hold

    def tokenize(self, text: str) -> list[int]:
        """Token ids of plain text: special-token names in user code stay plain text."""
        ...

    def special_id(self, token: str) -> int | None:
        """The id of a special token such as ``<|fim_prefix|>``, or None if the model lacks it."""
        ...

    def generate(self, prompt_ids: list[int], params: GenerationParams) -> GenerationResult: ...

    def close(self) -> None: ...
