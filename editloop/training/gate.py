"""The gate: a new checkpoint is published only if it is better where the team works and no worse elsewhere.

Both models — the one serving and the candidate — complete the same held-out feedback contexts
through the same engine, and are scored against what the developer kept there: exact match,
edit similarity, the value model's P(accept) of the top choice, and the abstain rate. General
code (held-out stdlib FIM, a HumanEval subset) guards against forgetting. Differences carry
paired-bootstrap confidence intervals: the candidate passes when the feedback edit similarity
improves beyond noise (the interval's lower bound above ``min_improvement``) and no general metric
drops by more than its tolerance.

>>> report = run_gate(current, candidate, heldout, GateConfig())  # doctest: +SKIP
>>> report.passed, report.reasons  # doctest: +SKIP
"""

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from editloop.completion.engine import CompletionEngine
from editloop.completion.served import ServedModel
from editloop.completion.types import CompletionRequest, Snippet
from editloop.completion.value import ValueInput, ValueModel
from editloop.eval.engine import engine_for
from editloop.metrics import edit_similarity, exact_match
from editloop.training.dataset import Sample

# A general-code check: engine → per-item scores in [0, 1] for each metric it measures.
GeneralCheck = Callable[[CompletionEngine], dict[str, list[float]]]


@dataclass(frozen=True)
class GateConfig:
    min_improvement: float = field(
        default=0.0, metadata={"help": "Lower bound of the held-out edit-similarity gain must exceed this."}
    )
    general_tolerance: float = field(
        default=0.02, metadata={"help": "Largest allowed drop of any general-code metric (absolute)."}
    )
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for confidence intervals."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    max_samples: int = field(default=200, metadata={"help": "Held-out feedback samples scored at most."})
    seed: int = field(default=0, metadata={"help": "Seeds the bootstrap and sample choice."})


def feedback_scores(
    engine: CompletionEngine, served: ServedModel, samples: list[Sample], judge: ValueModel | None
) -> dict[str, list[float]]:
    """Per-sample scores of the engine's top choice against the kept text.

    ``abstain`` is whether ``served`` would have shown nothing (its ranker's calibrated threshold);
    ``p_accept`` is the top choice's P(accept) under ``judge``, one value model for both sides.
    """
    scores: dict[str, list[float]] = {"exact_match": [], "edit_similarity": [], "abstain": []}
    if judge is not None:
        scores["p_accept"] = []
    for sample in samples:
        request = CompletionRequest(
            prefix=sample.prefix,
            suffix=sample.suffix,
            language=sample.language,
            filepath=sample.filepath,
            extra=[Snippet.model_validate(e) for e in sample.extra],
            n=1,
        )
        result = engine.complete(request)
        top = result.choices[0] if result.choices else None
        text = top.text if top else ""
        threshold = served.pick(result.ranker)[2]
        scores["exact_match"].append(float(exact_match(text, sample.reference)))
        scores["edit_similarity"].append(edit_similarity(text, sample.reference))
        scores["abstain"].append(float(top is None or (top.score or 0.0) < threshold))
        if judge is not None:
            report = next((c for c in result.candidates if c.text == text and c.dropped is None), None)
            logprobs = report.logprobs if report else None
            parse_valid = report.parse_valid if report else None
            scores["p_accept"].append(
                judge.predict(ValueInput(sample.prefix, sample.suffix, text, logprobs, parse_valid))
                if text
                else 0.0
            )
    return scores


def paired_bootstrap(
    current: list[float], candidate: list[float], resamples: int, confidence: float, seed: int
) -> dict[str, float]:
    """Mean of candidate − current and its percentile interval over paired resamples."""
    diffs = [b - a for a, b in zip(current, candidate, strict=True)]
    if not diffs:
        return {"delta": 0.0, "low": 0.0, "high": 0.0}
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[int(tail * (resamples - 1))]
    high = means[int((1 - tail) * (resamples - 1))]
    return {"delta": round(sum(diffs) / n, 4), "low": round(low, 4), "high": round(high, 4)}


@dataclass
class GateReport:
    passed: bool
    reasons: list[str]
    current_version: str
    candidate_version: str
    samples: int
    feedback: dict = field(default_factory=dict)  # metric → {current, candidate, delta, low, high}
    general: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _compare(current: dict[str, list[float]], candidate: dict[str, list[float]], config: GateConfig) -> dict:
    table = {}
    for metric, before in current.items():
        after = candidate[metric]
        stats = paired_bootstrap(before, after, config.bootstrap, config.confidence, config.seed)
        table[metric] = {
            "current": round(sum(before) / max(1, len(before)), 4),
            "candidate": round(sum(after) / max(1, len(after)), 4),
            **stats,
        }
    return table


@dataclass
class Scores:
    """One model's per-item scores on the gate's held-out feedback samples and general-code tasks."""

    version: str
    samples: int
    feedback: dict[str, list[float]]
    general: dict[str, list[float]]


def gate_samples(heldout: list[Sample], config: GateConfig) -> list[Sample]:
    """The held-out feedback samples every model of one cycle is scored on (a seeded choice)."""
    return random.Random(config.seed).sample(heldout, min(len(heldout), config.max_samples))


def score(
    served: ServedModel,
    samples: list[Sample],
    *,
    judge: ValueModel | None = None,
    general: Sequence[GeneralCheck] = (),
) -> Scores:
    """``served`` as it would serve (its own ranker and threshold), on the samples and general tasks."""
    engine = engine_for(served)
    general_table: dict[str, list[float]] = {}
    for check in general:
        general_table.update(check(engine))
    return Scores(
        served.version, len(samples), feedback_scores(engine, served, samples, judge), general_table
    )


def judge(current: Scores, candidate: Scores, config: GateConfig) -> GateReport:
    """The candidate against the current version, item by item, with paired-bootstrap intervals."""
    feedback = _compare(current.feedback, candidate.feedback, config)
    general_table = _compare(current.general, candidate.general, config)
    reasons = _decide(feedback, general_table, config, candidate.samples)
    return GateReport(
        passed=not reasons,
        reasons=reasons or ["held-out edit similarity improved beyond noise; general code within tolerance"],
        current_version=current.version,
        candidate_version=candidate.version,
        samples=candidate.samples,
        feedback=feedback,
        general=general_table,
    )


def run_gate(
    current: ServedModel,
    candidate: ServedModel,
    heldout: list[Sample],
    config: GateConfig,
    *,
    general: Sequence[GeneralCheck] = (),
) -> GateReport:
    """Both as served (each with its own ranker and threshold), on the same held-out samples."""
    samples = gate_samples(heldout, config)
    referee = candidate.value_model()
    before, after = (score(m, samples, judge=referee, general=general) for m in (current, candidate))
    return judge(before, after, config)


def _decide(feedback: dict, general: dict, config: GateConfig, samples: int) -> list[str]:
    """Why the candidate fails; empty when it passes."""
    if samples == 0:
        return ["no held-out feedback samples to judge the candidate on"]
    reasons = []
    es = feedback["edit_similarity"]
    if es["low"] <= config.min_improvement:
        reasons.append(
            f"held-out edit similarity gain {es['delta']:+.4f} is within noise "
            f"(interval {es['low']:+.4f}..{es['high']:+.4f})"
        )
    for metric, row in general.items():
        if row["candidate"] < row["current"] - config.general_tolerance:
            reasons.append(
                f"general {metric} dropped {row['current']:.4f} → {row['candidate']:.4f} "
                f"(tolerance {config.general_tolerance})"
            )
    return reasons
