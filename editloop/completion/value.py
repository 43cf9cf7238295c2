"""The value model: P(a candidate is accepted and kept), learned from the team's feedback.

A logistic regression over features of the candidate, its context and the other candidates decoded
for the same request — the model's own token log-probabilities, and how many of its samples agree
(self-consistency) — in the spirit of Copilot's contextual filter. It starts from the score it
replaces: the log-odds of the log-prob ranker's score is its offset, and the weights learn only a
correction, so with little feedback it ranks as log-prob does rather than worse. A trained model
carries two more heads on the same features (a take of any length, the characters kept) and ranks
by a blend of them, itself and the log-prob score (:func:`blended`). It is
small enough to retrain every cycle on a few hundred rows, cheap enough to score every
candidate on the request path, and it is judged against what it replaces: the log-probability
score alone (held-out AUC for both is reported every cycle).

Training it is the trainer's business (:mod:`editloop.training.value`); serving loads it from a
version's directory and ranks with :class:`ValueRanker`.

>>> model = ValueModel.load(version.path)  # doctest: +SKIP
>>> model.predict(ValueInput("x = ", "\\n", "1", [-0.1], True))  # doctest: +SKIP
0.42
"""

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from editloop.completion.ranker import LogprobRanker, RankContext, RankInput
from editloop.errors import ModelError
from editloop.metrics import edit_similarity

FILENAME = "value_model.json"
_WORD = re.compile(r"\w+|[^\w\s]+")
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
    "same_as_others",
    "similar_to_others",
    "first_word_agreement",
    "alone",
    "from_codebase",  # a continuation copied from the codebase, not decoded by the model
    "known_words",
    "copies_context",
)
# The text around the cursor the context features read: within what completion events keep
# (feedback.events' PREFIX_WINDOW and SUFFIX_WINDOW), so training sees what serving saw.
CONTEXT_BEFORE = 3000
CONTEXT_AFTER = 1000
_IDENTIFIER = re.compile(r"[A-Za-z_]\w+")


@dataclass(frozen=True)
class ValueInput:
    prefix: str
    suffix: str
    candidate: str
    logprobs: list[float] | None = None  # unknown (e.g. from an old event): estimated from ``score``
    parse_valid: bool | None = None
    score: float | None = None  # the log-prob ranker's score, when logprobs are unknown
    # The texts of the request's other decoded candidates (duplicates included, those dropped as
    # broken left out): agreement among a model's samples says how sure it is.
    others: tuple[str, ...] = ()
    source: str = "model"  # "codebase": copied; its ``score`` is the share of the codebase that continues so
    # The language model's last hidden state after the candidate (None: not computed, or a copy).
    hidden: np.ndarray | None = field(default=None, compare=False, repr=False)


def features(value: ValueInput, context: "CursorText | None" = None) -> list[float]:
    """The model's inputs for one candidate; ``context``: its request's, when already read."""
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
        *agreement(text, value.others),
        float(value.source == "codebase"),
        *context_overlap(text, context or CursorText.around(value.prefix, value.suffix)),
    ]


def feature_rows(inputs: list[ValueInput]) -> list[list[float]]:
    """:func:`features` of many candidates; those of one request (one prefix and suffix) read the
    text around their cursor once."""
    contexts: dict[tuple[str, str], CursorText] = {}
    for v in inputs:
        if (v.prefix, v.suffix) not in contexts:
            contexts[v.prefix, v.suffix] = CursorText.around(v.prefix, v.suffix)
    return [features(v, contexts[v.prefix, v.suffix]) for v in inputs]


@dataclass(frozen=True)
class CursorText:
    """The text around the cursor the context features read, and the identifiers in it."""

    text: str
    words: frozenset[str]

    @classmethod
    def around(cls, prefix: str, suffix: str) -> "CursorText":
        text = prefix[-CONTEXT_BEFORE:] + suffix[:CONTEXT_AFTER]
        return cls(text, frozenset(_IDENTIFIER.findall(text)))


def context_overlap(text: str, context: CursorText) -> list[float]:
    """Share of the candidate's identifiers found around the cursor, and whether the candidate is
    a verbatim copy of text there: code mostly reuses the names and lines near it, and a name the
    file has never used is often one the model made up."""
    words = _IDENTIFIER.findall(text)
    share = sum(w in context.words for w in words) / len(words) if words else 1.0
    stripped = text.strip()
    copied = len("".join(stripped.split())) >= 4 and stripped in context.text
    return [share, float(copied)]


def agreement(text: str, others: tuple[str, ...]) -> list[float]:
    """Same text, mean similarity and same first word across the other samples; whether it is alone."""
    if not others:
        return [0.0, 0.0, 0.0, 1.0]
    first = _first_word(text)
    return [
        sum(o == text for o in others) / len(others),
        sum(edit_similarity(text, o) for o in others) / len(others),
        sum(_first_word(o) == first for o in others) / len(others),
        0.0,
    ]


def _first_word(text: str) -> str:
    match = _WORD.search(text)
    return match.group(0) if match else ""


@dataclass
class ValueModel:
    weights: list[float]
    bias: float
    mean: list[float]
    scale: list[float]
    feature_names: tuple[str, ...] = FEATURES
    metrics: dict | None = None
    # True: the log-odds of the log-prob ranker's score is added to the linear term (models saved
    # before it was introduced have none).
    offset: bool = False
    l2: float | None = None  # the regularisation it was fitted with
    # Weights past the named features read the language model's hidden state (that many numbers):
    # valid only with the weights it was read from, so only a version of those weights carries it.
    hidden_width: int = 0
    # Heads fitted to other targets on the same features (training.value.HEAD_TARGETS), and the
    # exponent each score weighs in the weighted geometric mean the model ranks by: this head's
    # as "useful", the log-prob ranker's as "logprob". Empty: this head's probability alone.
    heads: dict[str, "ValueModel"] = field(default_factory=dict)
    blend: dict[str, float] = field(default_factory=dict)

    @property
    def wants_hidden(self) -> bool:
        return self.hidden_width > 0

    def predict_many(self, inputs: list[ValueInput]) -> list[float]:
        if not inputs:
            return []
        return [float(p) for p in self.head_scores(inputs)[SCORE]]

    def head_scores(self, inputs: list[ValueInput]) -> dict[str, np.ndarray]:
        """Every head's probability for each input, the log-prob score, and the blend of them the
        model ranks by (under :data:`SCORE`); the features are read once for all heads."""
        rows = feature_rows(inputs)
        logprob = np.array(logprob_ranker_scores(inputs))
        scores = {"logprob": logprob, "useful": self._probability(inputs, rows, logprob)}
        scores |= {name: head._probability(inputs, rows, logprob) for name, head in self.heads.items()}
        scores[SCORE] = blended(scores, self.blend) if self.blend else scores["useful"]
        return scores

    def _probability(
        self, inputs: list[ValueInput], rows: list[list[float]], logprob: np.ndarray
    ) -> np.ndarray:
        named = len(self.weights) - self.hidden_width
        # A model saved before a feature was appended reads the features it knows (a prefix).
        x = np.array([row[:named] for row in rows])
        if self.hidden_width:
            x = np.hstack([x, self._hidden(inputs, named)])
        x = (x - self.mean) / self.scale
        z = x @ np.array(self.weights) + self.bias
        if self.offset:
            z += log_odds(logprob)
        return sigmoid(z)

    def predict(self, value: ValueInput) -> float:
        return self.predict_many([value])[0]

    def _hidden(self, inputs: list[ValueInput], named: int) -> np.ndarray:
        """Each input's hidden state; one without (a copy from the codebase, a backend that reads
        none) gets the training mean, which the model weighs as nothing."""
        mean = np.array(self.mean[named:])
        rows = [
            v.hidden if v.hidden is not None and len(v.hidden) == self.hidden_width else mean for v in inputs
        ]
        return np.array(rows, dtype=float)

    def save(self, directory: Path) -> Path:
        """Write it to ``directory``; a file already there is replaced, never written into."""
        path = Path(directory) / FILENAME
        fresh = path.with_suffix(".tmp")
        fresh.write_text(json.dumps(asdict(self), indent=2))
        fresh.replace(path)
        return path

    @classmethod
    def load(cls, directory: Path) -> "ValueModel | None":
        """The model saved in ``directory``, or None when there is none."""
        path = Path(directory) / FILENAME
        if not path.is_file():
            return None
        try:
            model = cls._from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelError(f"{path} is not a value model: {exc}") from exc
        for head in (model, *model.heads.values()):
            if head.feature_names != FEATURES[: len(head.feature_names)] or not head.feature_names:
                raise ModelError(f"{path} was trained on other features; retrain it")
        return model

    @classmethod
    def _from_dict(cls, data: dict) -> "ValueModel":
        data["feature_names"] = tuple(data["feature_names"])
        data["heads"] = {name: cls._from_dict(head) for name, head in data.get("heads", {}).items()}
        return cls(**data)


class ValueRanker:
    """The engine's :class:`~editloop.completion.ranker.Ranker`, scoring by the value model."""

    name = "value"

    def __init__(self, model: ValueModel) -> None:
        self.model = model
        self.wants_hidden = model.wants_hidden

    def score(self, context: RankContext, candidates: list[RankInput]) -> list[float]:
        return self.model.predict_many(
            [
                ValueInput(
                    context.prefix,
                    context.suffix,
                    c.text,
                    c.logprobs,
                    c.parse_valid,
                    c.prior,
                    others=others_of(c.text, context.samples),
                    source=c.source,
                    hidden=c.hidden,
                )
                for c in candidates
            ]
        )


def others_of(text: str, samples: tuple[str, ...]) -> tuple[str, ...]:
    """``samples`` without one occurrence of ``text``: the candidate's peers."""
    rest = list(samples)
    if text in rest:
        rest.remove(text)
    return tuple(rest)


def logprob_ranker_scores(values: list[ValueInput]) -> list[float]:
    """What the log-prob ranker scores each candidate (the recorded score where log-probs are lost)."""
    inputs = [RankInput(v.candidate, v.logprobs or [], v.parse_valid) for v in values]
    scores = LogprobRanker().score(RankContext("", "", "", ""), inputs)
    return [s if v.logprobs else v.score or 0.0 for v, s in zip(values, scores, strict=True)]


# The key of :meth:`ValueModel.head_scores` holding the score the model ranks by.
SCORE = "score"


def blended(scores: dict[str, np.ndarray], blend: dict[str, float]) -> np.ndarray:
    """The weighted geometric mean of the named scores, ``blend`` giving each one's exponent.

    A product, not a sum: a candidate ranks high only when every weighed head rates it, so a
    line sure to be taken but one character long does not outrank a longer one kept in part.
    """
    total = sum(blend.values())
    log_score = sum(e * np.log(np.clip(scores[name], 1e-6, 1.0)) for name, e in blend.items() if e)
    return np.exp(log_score / total)


def log_odds(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(clipped / (1 - clipped))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
