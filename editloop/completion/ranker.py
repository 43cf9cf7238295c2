"""Scoring candidates by how likely they are to be accepted, and deciding when to show none.

Every ranker answers a score in [0, 1] per candidate, read as P(accept); the engine shows the best
ones and abstains when even the best is below a threshold. ``LogprobRanker`` needs nothing but the
model's own token log-probabilities; the learned value model implements the same ``Ranker``.

>>> ranker = LogprobRanker()
>>> context = RankContext(prefix="x = ", suffix="\\n", language="python", mode="line")
>>> candidates = [RankInput("1", [-0.1], True), RankInput("(", [-0.1], False)]
>>> [round(s, 3) for s in ranker.score(context, candidates)]
[0.905, 0.452]
"""

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class RankContext:
    """Where the candidates would be inserted."""

    prefix: str
    suffix: str
    language: str
    mode: str  # "line" or "block", as resolved by the engine
    # Every decoded candidate's text that was not dropped as broken, duplicates included.
    samples: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankInput:
    """One candidate: its (post-processed) text, the log-probabilities of its tokens, its parse check."""

    text: str
    logprobs: list[float]
    parse_valid: bool | None  # None: no grammar for the language, so unknown
    source: str = "model"  # "codebase": copied from the codebase, so no log-probs
    prior: float | None = None  # a copy's share of the codebase places that continue this way
    # The language model's last hidden state after the candidate, when the ranker asked for it.
    hidden: np.ndarray | None = field(default=None, compare=False, repr=False)


class Ranker(Protocol):
    name: str  # "logprob", "value": named in responses, events and metrics
    wants_hidden: bool  # it reads the candidates' hidden states: the backend is asked for them

    def score(self, context: RankContext, candidates: list[RankInput]) -> list[float]:
        """One score in [0, 1] per candidate, in their order."""
        ...


class LogprobRanker:
    """The geometric-mean token probability (a copy's codebase share), scaled down for candidates that
    break the parse."""

    name = "logprob"
    wants_hidden = False

    def __init__(self, parse_invalid_penalty: float = 0.5) -> None:
        if not 0.0 <= parse_invalid_penalty <= 1.0:
            raise ValueError(f"parse_invalid_penalty must be in [0, 1], not {parse_invalid_penalty}")
        self.parse_invalid_penalty = parse_invalid_penalty

    def score(self, context: RankContext, candidates: list[RankInput]) -> list[float]:
        return [self._score_one(candidate) for candidate in candidates]

    def _score_one(self, candidate: RankInput) -> float:
        # A copy has no log-probs: how often the codebase continues this way stands in for them.
        copied = candidate.source == "codebase" and candidate.prior is not None
        score = candidate.prior or 0.0 if copied else mean_token_probability(candidate.logprobs)
        if candidate.parse_valid is False:
            score *= self.parse_invalid_penalty
        return score


def mean_token_probability(logprobs: list[float]) -> float:
    """exp(mean log-probability) in [0, 1]; 0 for no tokens or a non-finite log-probability.

    >>> round(mean_token_probability([math.log(0.5), math.log(0.5)]), 3)
    0.5
    """
    if not logprobs:
        return 0.0
    mean = math.fsum(logprobs) / len(logprobs)
    if math.isnan(mean):
        return 0.0
    # Backends round log-probabilities, so a "certain" token may come back as a tiny positive number.
    return math.exp(min(mean, 0.0))


def should_abstain(best_score: float | None, threshold: float) -> bool:
    """Show nothing when there is no candidate or the best is below the threshold.

    >>> should_abstain(None, 0.1), should_abstain(0.05, 0.1), should_abstain(0.5, 0.1)
    (True, True, False)
    """
    return best_score is None or math.isnan(best_score) or best_score < threshold
