"""The value model: P(a candidate is accepted and kept), learned from the team's feedback.

A logistic regression over a dozen features of the candidate and its context — the model's
own token log-probabilities among them — in the spirit of Copilot's contextual filter. It is
small enough to retrain every cycle on a few hundred rows, cheap enough to score every
candidate on the request path, and it is judged against what it replaces: the log-probability
score alone (held-out AUC for both is reported every cycle).

>>> model = train_value_model(rows)  # doctest: +SKIP
>>> model.predict(ValueInput("x = ", "\\n", "1", [-0.1], True))  # doctest: +SKIP
0.42
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from editloop.completion.ranker import RankContext, RankInput, mean_token_probability
from editloop.errors import ModelError

FILENAME = "value_model.json"
FEATURES = (
    "mean_logprob",
    "min_logprob",
    "first_logprob",
    "log_tokens",
    "log_chars",
    "lines",
    "parse_valid",
    "parse_unknown",
    "symbol_fraction",
    "fresh_line",
    "repeats_previous_line",
    "suffix_on_line",
    "ends_with_opener",
)


@dataclass(frozen=True)
class ValueInput:
    prefix: str
    suffix: str
    candidate: str
    logprobs: list[float] | None = None  # unknown (e.g. from an old event): estimated from ``score``
    parse_valid: bool | None = None
    score: float | None = None  # the log-prob ranker's score, when logprobs are unknown


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


def features(value: ValueInput) -> list[float]:
    logprobs = value.logprobs
    if not logprobs:
        p = value.score if value.score is not None else 0.0
        logprobs = [math.log(max(p, 1e-6))]
    text = value.candidate
    last_line = value.prefix.rsplit("\n", 1)[-1]
    previous = value.prefix.rsplit("\n", 2)
    previous_line = previous[-2].strip() if len(previous) >= 2 else ""
    symbols = sum(not (c.isalnum() or c.isspace()) for c in text)
    return [
        max(-20.0, sum(logprobs) / len(logprobs)),
        max(-20.0, min(logprobs)),
        max(-20.0, logprobs[0]),
        math.log1p(len(logprobs)),
        math.log1p(len(text)),
        float(text.count("\n") + 1),
        float(value.parse_valid is True),
        float(value.parse_valid is None),
        symbols / max(1, len(text.strip())),
        float(not last_line.strip()),
        float(bool(text.strip()) and text.strip() == previous_line),
        float(bool(value.suffix.split("\n", 1)[0].strip())),
        float(text.rstrip()[-1:] in (":", "{", "(", "[")),
    ]


@dataclass
class ValueModel:
    weights: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    feature_names: tuple[str, ...] = FEATURES
    metrics: dict | None = None

    def predict_many(self, inputs: list[ValueInput]) -> list[float]:
        if not inputs:
            return []
        x = (np.array([features(v) for v in inputs]) - self.mean) / self.scale
        return [float(p) for p in _sigmoid(x @ np.array(self.weights) + self.bias)]

    def predict(self, value: ValueInput) -> float:
        return self.predict_many([value])[0]

    def save(self, directory: Path) -> Path:
        path = Path(directory) / FILENAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, directory: Path) -> "ValueModel | None":
        """The model saved in ``directory``, or None when there is none."""
        path = Path(directory) / FILENAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            data["feature_names"] = tuple(data["feature_names"])
            model = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{path} is not a value model: {exc}") from exc
        if model.feature_names != FEATURES:
            raise ModelError(f"{path} was trained on other features; retrain it")
        return model


class ValueRanker:
    """The engine's :class:`~editloop.completion.ranker.Ranker`, scoring by the value model."""

    def __init__(self, model: ValueModel) -> None:
        self.model = model

    def score(self, context: RankContext, candidates: list[RankInput]) -> list[float]:
        return self.model.predict_many(
            [
                ValueInput(context.prefix, context.suffix, c.text, c.logprobs, c.parse_valid)
                for c in candidates
            ]
        )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


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
        p = _sigmoid(z @ w)
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


class VersionRankers:
    """The ranker for each served version: its value model when it has one, else ``fallback``."""

    def __init__(self, versions_dir: Path, fallback) -> None:
        self.versions_dir = Path(versions_dir)
        self.fallback = fallback
        self._loaded: dict[str, object] = {}

    def __call__(self, version: str):
        if version not in self._loaded:
            model = ValueModel.load(self.versions_dir / version) if version else None
            self._loaded = {version: ValueRanker(model) if model else self.fallback}  # one version at a time
        return self._loaded[version]
