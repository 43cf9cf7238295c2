"""Training the value model on the team's feedback, and judging it against the log-prob score.

>>> model = train_value_model(data.value_train)  # doctest: +SKIP
>>> evaluate(model, data.value_heldout)  # doctest: +SKIP
{"rows": 120, "positives": 31, "auc": 0.81, "baseline_auc": 0.77}
"""

from dataclasses import dataclass

import numpy as np

from editloop.completion.ranker import LogprobRanker, RankContext, RankInput
from editloop.completion.value import ValueInput, ValueModel, features, sigmoid
from editloop.errors import ModelError


@dataclass(frozen=True)
class ValueRow:
    """A training row: a shown candidate and whether the developer took and kept it."""

    input: ValueInput
    accepted: bool
    retained: float | None = None  # similarity at the last retention horizon, if reported
    file: str = ""
    timestamp: float = 0.0

    @property
    def label(self) -> int:
        kept = self.retained is None or self.retained >= 0.5
        return int(self.accepted and kept)


def train_value_model(rows: list[ValueRow], l2: float = 1.0, steps: int = 500) -> ValueModel:
    """Fit by Newton steps on the L2-regularised log loss (a few hundred rows: milliseconds)."""
    if len({r.label for r in rows}) < 2:
        raise ModelError("the value model needs both accepted and rejected candidates to learn from")
    x = np.array([features(r.input) for r in rows])
    y = np.array([r.label for r in rows], dtype=float)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(rows), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.eye(z.shape[1]) * l2
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = sigmoid(z @ w)
        gradient = z.T @ (p - y) + penalty @ w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return ValueModel(list(map(float, w[:-1])), float(w[-1]), list(map(float, mean)), list(map(float, scale)))


def auc(scores: list[float], labels: list[int]) -> float | None:
    """Area under the ROC curve (ties count half); None when one class is missing."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return None
    ranks = _average_ranks(np.array(positives + negatives))
    rank_sum = ranks[: len(positives)].sum()
    n_pos, n_neg = len(positives), len(negatives)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def logprob_scores(rows: list[ValueRow]) -> list[float]:
    """What the log-prob ranker scored each row's candidate (the event's score when logprobs are lost)."""
    ranker = LogprobRanker()
    return [_logprob_score(ranker, r.input) for r in rows]


def _logprob_score(ranker: LogprobRanker, value: ValueInput) -> float:
    if not value.logprobs:
        return value.score or 0.0
    return ranker.score(_context(value), [RankInput(value.candidate, value.logprobs, value.parse_valid)])[0]


def _context(value: ValueInput) -> RankContext:
    return RankContext(value.prefix, value.suffix, "", "")


def evaluate(model: ValueModel, rows: list[ValueRow]) -> dict:
    """Held-out AUC of the value model next to the log-probability score it replaces."""
    labels = [r.label for r in rows]
    return {
        "rows": len(rows),
        "positives": sum(labels),
        "auc": _round(auc(model.predict_many([r.input for r in rows]), labels)),
        "baseline_auc": _round(auc(logprob_scores(rows), labels)),
    }


# Cursor Tab's show reward: a shown suggestion the developer takes and keeps is worth +0.75, one
# they pass over costs -0.25 (their attention), an abstention is worth 0.
SHOW_ACCEPTED, SHOW_REJECTED = 0.75, -0.25


def expected_show_reward(scores: list[float], labels: list[int], threshold: float) -> float:
    """Mean reward per request of showing exactly the candidates scored at or above ``threshold``."""
    if not scores:
        return 0.0
    shown = [y for s, y in zip(scores, labels, strict=True) if s >= threshold]
    return sum(SHOW_ACCEPTED if y else SHOW_REJECTED for y in shown) / len(scores)


def calibrate_threshold(
    scores: list[float], labels: list[int], default: float, min_show_rate: float = 0.1
) -> dict:
    """The abstain threshold that maximises the expected show reward on held-out rows.

    Only thresholds that still show at least ``min_show_rate`` of the rows are considered: a
    version that shows nothing would earn 0 and also never learn again, since nothing shown means
    no feedback. Ties go to the lower threshold (more suggestions, same reward).
    """
    order = sorted(set(scores), reverse=True)
    best: tuple[float, float] | None = None
    for threshold in order:
        if sum(s >= threshold for s in scores) < min_show_rate * len(scores):
            continue
        reward = expected_show_reward(scores, labels, threshold)
        if best is None or reward >= best[1]:
            best = (threshold, reward)
    chosen, reward = best if best is not None else (default, expected_show_reward(scores, labels, default))
    return {
        "threshold": round(chosen, 6),
        "expected_reward": round(reward, 4),
        "show_rate": _round(sum(s >= chosen for s in scores) / len(scores)) if scores else None,
        "default_threshold": default,
        "default_reward": round(expected_show_reward(scores, labels, default), 4),
        "rows": len(scores),
        "min_show_rate": min_show_rate,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
