"""Training the value model on the team's feedback, and judging it against the log-prob score.

>>> model = train_value_model(data.value_train)  # doctest: +SKIP
>>> evaluate(model, data.value_heldout)  # doctest: +SKIP
{"rows": 120, "positives": 31, "auc": 0.81, "baseline_auc": 0.77}
"""

from dataclasses import dataclass

import numpy as np

from editloop.completion.ranker import mean_token_probability
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


def evaluate(model: ValueModel, rows: list[ValueRow]) -> dict:
    """Held-out AUC of the value model next to the log-probability score it replaces."""
    labels = [r.label for r in rows]
    baseline = [
        mean_token_probability(r.input.logprobs) if r.input.logprobs else (r.input.score or 0.0) for r in rows
    ]
    return {
        "rows": len(rows),
        "positives": sum(labels),
        "auc": _round(auc(model.predict_many([r.input for r in rows]), labels)),
        "baseline_auc": _round(auc(baseline, labels)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
