"""Training the value model on the team's feedback, and judging it against the log-prob score.

Two judgements, both on held-out rows: how well each score separates the candidates developers
take whole from the rest (AUC), and what each would have done as the ranker (:func:`ranker_ab`):
per request, the candidate it puts first, shown when it clears a threshold chosen on the other
half of the requests, scored by the show reward. The second is the replay's question asked of the
recorded requests, so the cycle can ask it without generating anything.

>>> model = train_value_model(data.value_train)  # doctest: +SKIP
>>> evaluate(model, data.value_heldout)  # doctest: +SKIP
{"rows": 120, "positives": 31, "auc": 0.81, "baseline_auc": 0.77}
"""

import dataclasses
import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from editloop.completion.prompt import PromptModel, build_prompt
from editloop.completion.value import (
    ValueInput,
    ValueModel,
    blended,
    feature_rows,
    log_odds,
    logprob_ranker_scores,
    sigmoid,
)
from editloop.errors import ModelError


class HiddenStates(PromptModel, Protocol):
    """A backend that builds prompts and reads hidden states (:class:`LlamaBackend`)."""

    def hidden_states(self, prompt_ids: list[int], continuations: list[list[int]]) -> list[np.ndarray]: ...


# A suggestion taken whole counts as worth showing only when it saves this many non-blank characters:
# a ")" or ":" is a prefix of almost anything typed next, and a ranker rewarded for those learns to
# show them (on the starter's feedback it did: four full accepts of two characters each).
USEFUL_CHARS = 4
# Regularisation strengths the cycle chooses among by cross-validation, and its number of folds.
L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
CV_FOLDS = 5


@dataclass(frozen=True)
class ValueRow:
    """A training row: a candidate and whether the developer took all of it and kept it.

    A candidate that was not shown is labelled by what the developer wrote at its spot: it would
    have been taken whole when it is a prefix of that text (the replay's developer does exactly
    this). So the model learns from every candidate the ranker chose among, not only from those
    the serving ranker happened to put first.
    """

    input: ValueInput
    accepted: bool  # taken whole (shown), or a prefix of what was written there (not shown)
    retained: float | None = None  # similarity at the last retention horizon, if reported
    file: str = ""
    timestamp: float = 0.0
    request: str = ""  # the completion it was a candidate of; "": a request of its own
    shown: bool = True
    view: int = 0  # 0: the request as decoded; k: as if only its first k candidates had been
    # Characters of it the developer kept: all of a whole take, the taken part of a partial one (as
    # the replay's developer takes, for a candidate not shown); None where the events do not say.
    kept_chars: int | None = None

    def decision(self, index: int) -> tuple[str, int]:
        """The ranker's decision this row was a candidate in: its request, in its view."""
        return (self.request or f"row-{index}", self.view)

    @property
    def whole(self) -> int:
        """Taken whole and kept, whatever its length (what the replay counts a full accept)."""
        return int(self.accepted and (self.retained is None or self.retained >= 0.5))

    @property
    def label(self) -> int:
        """Taken whole, kept, and worth showing (:data:`USEFUL_CHARS`): what the show reward pays."""
        return int(self.whole and len("".join(self.input.candidate.split())) >= USEFUL_CHARS)


# Targets of the heads fitted beside the label's (see :func:`train_blended_model`): a take of any
# length, and the characters the developer kept of it, a partial take's too, in lines' worth.
KEPT_LINE = 40
HEAD_TARGETS = {
    "whole": lambda r: float(r.whole),
    "kept": lambda r: min(1.0, (r.kept_chars or 0) / KEPT_LINE),
}
# The exponents a blend of the log-prob score and the heads is chosen among (per score).
BLEND_EXPONENTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def train_value_model(rows: list[ValueRow], l2: float | None = None, steps: int = 500) -> ValueModel:
    """A correction to the log-prob score, fitted by Newton steps on the L2-regularised log loss.

    ``l2`` None chooses it from :data:`L2_GRID` by cross-validation on ``rows`` (folds by request,
    as candidates of one request are not independent): a few hundred rows with a dozen positives
    cannot carry much correction, and a large ``l2`` shrinks it towards plain log-prob.
    """
    return _train_head(rows, _matrix(rows), np.array([r.label for r in rows], dtype=float), l2, steps)[0]


def train_blended_model(rows: list[ValueRow], default: float, steps: int = 500) -> ValueModel:
    """The label's head, a head for each of :data:`HEAD_TARGETS`, and the blend of them and the
    log-prob score that ranks best on ``rows``.

    One target cannot say what a developer wants: a model of whole takes of four characters or
    more (the show reward's) learns to show short sure lines where log-prob showed long ones kept
    in part, and one of characters kept shows long lines rarely taken whole. The blend is chosen
    on the heads' out-of-fold scores, so it is chosen on rows no head was fitted to; a head that
    cannot be fitted (a target of one value) leaves the label's head alone.
    """
    x = _matrix(rows)
    model, useful = _train_head(rows, x, np.array([r.label for r in rows], dtype=float), None, steps)
    scores = {"logprob": np.array(logprob_scores(rows)), "useful": useful}
    heads = {}
    for name, target in HEAD_TARGETS.items():
        y = np.array([target(r) for r in rows], dtype=float)
        if len(set(y)) < 2:
            return model
        heads[name], scores[name] = _train_head(rows, x, y, None, steps)
    model.heads, model.blend = heads, choose_blend(rows, scores, default)
    return model


def choose_blend(rows: list[ValueRow], scores: dict[str, np.ndarray], default: float) -> dict[str, float]:
    """The exponents of ``scores`` (:data:`BLEND_EXPONENTS` each) whose blend, replayed on ``rows``
    as :func:`ranker_ab` replays, has the highest of the lower of two ratios to log-prob's: the
    share of its suggestions taken whole (the replay's full-accept rate), and the characters
    kept (its chars saved), among blends that earn at least log-prob's show reward; then the most
    reward. Log-prob alone is one of the blends, so one is always found.
    ``default``: the abstain threshold where none shows enough (:func:`calibrate_threshold`)."""
    names = list(scores)
    candidates = {}
    for exponents in itertools.product(BLEND_EXPONENTS, repeat=len(names)):
        if any(exponents):
            top = max(exponents)  # blends that differ by a factor rank alike: judge each once
            candidates[tuple(e / top for e in exponents)] = dict(zip(names, exponents, strict=True))
    blends = list(candidates.values())
    by_blend = {str(i): list(blended(scores, b)) for i, b in enumerate(blends)}
    judged = ranker_ab(rows, by_blend | {"logprob": list(scores["logprob"])}, default)
    base = judged["logprob"]

    def merit(i: int) -> tuple[bool, float, float]:
        ab = judged[str(i)]
        whole = (ab["whole_take_rate"] or 0.0) / max(1e-9, base["whole_take_rate"] or 0.0)
        ratio = min(whole, ab["chars_kept"] / max(1, base["chars_kept"]))
        return ab["reward_per_request"] >= base["reward_per_request"], ratio, ab["reward_per_request"]

    return {k: e for k, e in blends[max(range(len(blends)), key=merit)].items() if e}


def _matrix(rows: list[ValueRow]) -> np.ndarray:
    """The rows' features, and their hidden states where every row has one."""
    x = np.array(feature_rows([r.input for r in rows]))
    if hidden_width(rows):
        x = np.hstack([x, np.array([r.input.hidden for r in rows])])
    return x


def _train_head(
    rows: list[ValueRow], x: np.ndarray, y: np.ndarray, l2: float | None, steps: int
) -> tuple[ValueModel, np.ndarray]:
    """A head fitted to the targets ``y`` (0 to 1) of ``rows``, and its out-of-fold scores."""
    if len(set(y)) < 2:
        raise ModelError("the value model needs both accepted and rejected candidates to learn from")
    w, mean, scale, l2, out_of_fold = _fit_correction(rows, x, y, l2, steps)
    model = ValueModel(
        list(map(float, w[:-1])),
        float(w[-1]),
        list(map(float, mean)),
        list(map(float, scale)),
        offset=True,
        l2=l2,
        hidden_width=hidden_width(rows),
    )
    return model, out_of_fold


def hidden_width(rows: list[ValueRow]) -> int:
    """How many hidden-state numbers every row carries (0 when some row has none)."""
    widths = {0 if r.input.hidden is None else len(r.input.hidden) for r in rows}
    return widths.pop() if len(widths) == 1 else 0


def with_hidden_states(rows: list[ValueRow], backend: HiddenStates, max_new_tokens: int) -> list[ValueRow]:
    """The rows, each candidate given the hidden state ``backend`` has after the prompt the engine
    would build for its request and the candidate's tokens (each prompt is read once).

    The states belong to the backend's weights: a value model that reads them ranks only for a
    version of those weights.
    """
    by_prompt: dict[tuple[str, str], dict[str, np.ndarray | None]] = {}
    for row in rows:
        by_prompt.setdefault((row.input.prefix, row.input.suffix), {})[row.input.candidate] = None
    for (prefix, suffix), states in by_prompt.items():
        prompt = build_prompt(backend, prefix, suffix, [], None, max_new_tokens).ids
        texts = list(states)
        tokens = [backend.tokenize(t) or backend.tokenize(" ") for t in texts]
        states.update(zip(texts, backend.hidden_states(prompt, tokens), strict=True))
    return [
        dataclasses.replace(
            r,
            input=dataclasses.replace(
                r.input, hidden=by_prompt[r.input.prefix, r.input.suffix][r.input.candidate]
            ),
        )
        for r in rows
    ]


def _fit_correction(
    rows: list[ValueRow], x: np.ndarray, y: np.ndarray, l2: float | None = None, steps: int = 500
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    """Weights (bias last), the features' mean and scale, the L2 strength of a correction to the
    log-prob score of ``rows`` towards ``y`` from the feature matrix ``x`` (one row per value
    row), and each row's score from the fit on the folds without it."""
    offset = log_odds(np.array(logprob_scores(rows)))
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(rows), 1))])
    folds = np.array([_fold(r, i) for i, r in enumerate(rows)])
    if l2 is None:
        l2, out_of_fold = _choose_l2(z, offset, y, folds, steps)
    else:
        out_of_fold, _ = _cross_fit(z, offset, y, folds, l2, steps)
    return _fit(z, offset, y, l2, steps), mean, scale, l2, out_of_fold


def _fit(z: np.ndarray, offset: np.ndarray, y: np.ndarray, l2: float, steps: int) -> np.ndarray:
    w = np.zeros(z.shape[1])
    penalty = np.eye(z.shape[1]) * l2
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = sigmoid(z @ w + offset)
        gradient = z.T @ (p - y) + penalty @ w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def _choose_l2(
    z: np.ndarray, offset: np.ndarray, y: np.ndarray, folds: np.ndarray, steps: int
) -> tuple[float, np.ndarray]:
    """The grid's ``l2`` with the least cross-validated log loss (the largest on a tie), and the
    out-of-fold scores it had."""
    fits = {l2: _cross_fit(z, offset, y, folds, l2, steps) for l2 in L2_GRID}
    losses = {}
    for l2, (scores, fitted) in fits.items():
        p, target = np.clip(scores[fitted], 1e-6, 1 - 1e-6), y[fitted]
        losses[l2] = -float((target * np.log(p) + (1 - target) * np.log(1 - p)).sum())
    chosen = min(reversed(L2_GRID), key=lambda l2: losses[l2])
    return chosen, fits[chosen][0]


def _cross_fit(
    z: np.ndarray, offset: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's score from the fit on the other folds, and which rows had one: a fold whose
    complement holds one class only keeps the log-prob score."""
    scores, fitted = sigmoid(offset), np.zeros(len(y), dtype=bool)
    for k in range(CV_FOLDS):
        train, test = folds != k, folds == k
        if test.any() and len(set(y[train])) >= 2:
            scores[test] = sigmoid(
                z[test] @ _fit(z[train], offset[train], y[train], l2, steps) + offset[test]
            )
            fitted |= test
    return scores, fitted


def _fold(row: ValueRow, index: int) -> int:
    return _bucket(row.request or f"row-{index}", CV_FOLDS)


def _bucket(key: str, count: int) -> int:
    """A stable bucket in ``range(count)`` for a request (cross-validation folds, the A/B's halves)."""
    return hashlib.sha256(key.encode()).digest()[0] % count


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
    return logprob_ranker_scores([r.input for r in rows])


def evaluate(model: ValueModel, rows: list[ValueRow]) -> dict:
    """Held-out AUC of the value model next to the log-probability score it replaces."""
    labels = [r.label for r in rows]
    return {
        "rows": len(rows),
        "positives": sum(labels),
        "auc": _round(auc(model.predict_many([r.input for r in rows]), labels)),
        "baseline_auc": _round(auc(logprob_scores(rows), labels)),
    }


@dataclass(frozen=True)
class Choice:
    """What a ranker put first for one request: its score, whether it was taken whole, its size, and
    how many of its characters were kept (a partial take's too; 0 where unknown)."""

    score: float
    label: int
    chars: int
    kept: int = 0
    whole: int = 0  # taken whole, of any length


def top_choices(rows: list[ValueRow], scores: list[float]) -> tuple[list[str], list[Choice]]:
    """Per decision (a request in a view, in first-seen order): its request's id and the candidate
    ``scores`` rank first."""
    best: dict[tuple[str, int], tuple[float, ValueRow]] = {}
    for i, (row, score) in enumerate(zip(rows, scores, strict=True)):
        key = row.decision(i)
        if key not in best or score > best[key][0]:
            best[key] = (score, row)
    choices = [
        Choice(s, r.label, len(r.input.candidate), r.kept_chars or 0, r.whole) for s, r in best.values()
    ]
    return [key[0] for key in best], choices


def show_outcome(choices: list[Choice], threshold: float) -> dict:
    """What showing each request's first choice when it scores ``threshold`` or more would have earned."""
    return _outcome([c for c in choices if c.score >= threshold], len(choices))


def ranker_ab(rows: list[ValueRow], scores: dict[str, list[float]], default: float) -> dict:
    """Each ranker replayed on the held-out requests, its threshold cross-fitted.

    The requests are split in two halves (by a hash of their id, every view of one in the same
    half); each half is judged at the threshold calibrated on the other, so no ranker is scored on
    the rows that set its threshold.
    """
    report = {}
    for name, ranked in scores.items():
        ids, choices = top_choices(rows, ranked)
        halves: tuple[list[Choice], list[Choice]] = ([], [])
        for key, choice in zip(ids, choices, strict=True):
            halves[_bucket(key, 2)].append(choice)
        shown: list[Choice] = []
        for judged, calibrating in (halves, halves[::-1]):
            labels = [c.label for c in calibrating]
            threshold = calibrate_threshold([c.score for c in calibrating], labels, default)["threshold"]
            shown += [c for c in judged if c.score >= threshold]
        report[name] = _outcome(shown, len(choices))
    return report


def _outcome(shown: list[Choice], requests: int) -> dict:
    full = [c for c in shown if c.label]
    whole = sum(c.whole for c in shown)
    reward = sum(SHOW_ACCEPTED if c.label else SHOW_REJECTED for c in shown)
    return {
        "requests": requests,
        "shown": len(shown),
        "full_accepts": len(full),
        "full_accept_rate": _round(len(full) / len(shown)) if shown else None,
        # Of any length, as the replay counts full accepts (full_accepts: those the reward pays).
        "whole_takes": whole,
        "whole_take_rate": _round(whole / len(shown)) if shown else None,
        "chars_accepted": sum(c.chars for c in full),
        # Partial takes too: what the replay's chars saved counts, where full accepts favour short lines.
        "chars_kept": sum(c.kept for c in shown),
        "reward_per_request": _round(reward / requests) if requests else None,
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
    best = _best_threshold(np.array(scores, dtype=float), np.array(labels, dtype=float), min_show_rate)
    chosen, reward = best if best is not None else (default, expected_show_reward(scores, labels, default))
    return {
        # Rounded down: the score that set it must still clear it (serving shows at or above).
        "threshold": math.floor(chosen * 1e6) / 1e6,
        "expected_reward": round(reward, 4),
        "show_rate": _round(sum(s >= chosen for s in scores) / len(scores)) if scores else None,
        "default_threshold": default,
        "default_reward": round(expected_show_reward(scores, labels, default), 4),
        "rows": len(scores),
        "min_show_rate": min_show_rate,
    }


def _best_threshold(
    scores: np.ndarray, labels: np.ndarray, min_show_rate: float
) -> tuple[float, float] | None:
    """The threshold (a score) with the highest mean reward of showing every score at or above it,
    the lowest on a tie, and that reward; None when none shows ``min_show_rate`` of the rows."""
    if not len(scores):
        return None
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    earned = np.cumsum(np.where(labels[order] > 0, SHOW_ACCEPTED, SHOW_REJECTED))
    # Showing at threshold ranked[i] shows every row up to the last one of that score.
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    last = last[last + 1 >= min_show_rate * len(scores)]
    if not len(last):
        return None
    rewards = earned[last]
    i = last[np.flatnonzero(rewards == rewards.max())[-1]]
    return float(ranked[i]), float(rewards.max() / len(scores))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
