"""What GRPO changed in a cycle: the SFT adapter against SFT + GRPO, scored as the gate scores a candidate.

The cycle scores every point of its path anyway (:mod:`editloop.training.selection`), so its report's
``grpo.effect`` compares the two points' own scores item by item (:func:`effect_of`); the paired
bootstrap says whether GRPO moved each figure beyond noise. :func:`grpo_effect` scores two adapters
the same way outside a cycle (``benchmarks/grpo.py``).

>>> effect = grpo_effect(base, sft_adapter, grpo_adapter, heldout, GateConfig(), run / "e")  # doctest: +SKIP
>>> effect["verdict"]  # doctest: +SKIP
'no change beyond noise in held-out edit similarity (+0.0031, interval -0.0120..+0.0190)'
"""

import shutil
from pathlib import Path

from editloop.training.dataset import Sample
from editloop.training.gate import GateConfig, Scores, gate_samples, judge, score
from editloop.training.selection import Checkpoint, served_checkpoint


def grpo_effect(
    base_dir: Path,
    sft_adapter: Path,
    grpo_adapter: Path,
    heldout: list[Sample],
    gate: GateConfig,
    work_dir: Path,
    threads: int | None = None,
) -> dict:
    """Held-out feedback figures of the SFT and SFT + GRPO models, and GRPO's difference with its interval."""
    samples = gate_samples(heldout, gate)
    scores = []
    try:
        for label, adapter in (("sft", sft_adapter), ("sft_grpo", grpo_adapter)):
            served = served_checkpoint(
                base_dir, Checkpoint(label, adapter), work_dir / label, None, {}, threads
            )
            try:
                scores.append(score(served, samples))
            finally:
                served.close()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return effect_of(scores[0], scores[1], gate)


def effect_of(sft: Scores, sft_grpo: Scores, gate: GateConfig) -> dict:
    """GRPO's point against the SFT point it started from, item by item."""
    report = judge(sft, sft_grpo, gate)
    feedback = {
        metric: {
            "sft": row["current"],
            "sft_grpo": row["candidate"],
            "delta": row["delta"],
            "low": row["low"],
            "high": row["high"],
        }
        for metric, row in report.feedback.items()
    }
    return {
        "samples": report.samples,
        "feedback": feedback,
        "verdict": _verdict(feedback.get("edit_similarity")),
    }


def _verdict(row: dict | None) -> str:
    if row is None:
        return "no held-out feedback to compare on"
    figures = f"({row['delta']:+.4f}, interval {row['low']:+.4f}..{row['high']:+.4f})"
    if row["low"] > 0:
        return f"GRPO raised held-out edit similarity {figures}"
    if row["high"] < 0:
        return f"GRPO lowered held-out edit similarity {figures}"
    return f"no change beyond noise in held-out edit similarity {figures}"
