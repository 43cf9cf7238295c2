"""Choose the checkpoint, not just the last step: every point of a cycle's path, judged like the gate.

A cycle's SFT saves its adapter every quarter of its steps; GRPO adds its own result; and each
point can also be *blended* with the serving model (its LoRA update scaled down, as WiSE-FT
interpolates fine-tuned weights with the original ones to keep what the original knew). Every
point is merged, exported to Q8_0 (unverified: only the chosen one is published, and that one
passes the full export checks) and scored exactly as the gate scores a candidate: held-out
feedback through the serving engine and general code, item by item against the current version,
whose scores are computed once.

The cycle publishes the point with the largest held-out gain among those the gate passes; when
none passes, the one that learned most is kept as the next cycle's warm start, so a refused cycle
is not thrown away.

>>> path = walk(base, checkpoints, current_scores, samples, general, GateConfig(), work)  # doctest: +SKIP
>>> path.chosen, [p["label"] for p in path.points]  # doctest: +SKIP
"""

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from editloop.completion.served import ServedModel, assemble
from editloop.completion.value import ValueModel
from editloop.models.export import export_gguf, load_hf
from editloop.training.dataset import Sample
from editloop.training.gate import GateConfig, GateReport, GeneralCheck, Scores, judge, score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """One point of a cycle's training path: an adapter, and how much of its update is applied."""

    label: str  # e.g. "sft 120/320", "grpo", "sft 320/320 ×0.5"
    adapter: Path
    step: int | None = None
    scale: float = 1.0  # < 1: the LoRA update scaled down, a blend with the serving model

    def blended(self, scale: float) -> "Checkpoint":
        return Checkpoint(f"{self.label} ×{scale:g}", self.adapter, self.step, scale)


@dataclass
class Trajectory:
    """The scored points in path order, and the one to publish (None: the gate passes none)."""

    points: list[dict] = field(default_factory=list)
    reports: list[GateReport] = field(default_factory=list)
    scores: list[Scores] = field(default_factory=list)  # each point's own, for comparisons between points
    chosen: int | None = None

    @property
    def best_effort(self) -> int | None:
        """The point that learned most, whether or not it passed (the warm start of a refused cycle)."""
        gains = [(p["heldout_gain"]["delta"], -i) for i, p in enumerate(self.points)]
        return -max(gains)[1] if gains else None


def served_checkpoint(
    base_dir: Path,
    checkpoint: Checkpoint,
    work_dir: Path,
    value: ValueModel | None,
    thresholds: dict[str, float],
    threads: int | None = None,
) -> ServedModel:
    """The checkpoint merged into the base, in Q8_0 under ``work_dir``, served with the cycle's rankers."""
    from editloop.models.llama import LlamaBackend

    model, tokenizer = load_hf(base_dir, checkpoint.adapter, adapter_scale=checkpoint.scale)
    work_dir.mkdir(parents=True, exist_ok=True)
    exported = export_gguf(model, tokenizer, work_dir, ("q8_0",), threads or 2)
    del model
    backend = LlamaBackend(exported.files["q8_0"], exported.fim, checkpoint.label, n_threads=threads)
    return assemble(backend, value, thresholds)


def walk(
    base_dir: Path,
    checkpoints: Sequence[Checkpoint],
    current: Scores,
    samples: list[Sample],
    general: Sequence[GeneralCheck],
    config: GateConfig,
    work_dir: Path,
    *,
    value: ValueModel | None = None,
    thresholds: dict[str, float] | None = None,
    threads: int | None = None,
) -> Trajectory:
    """Score every checkpoint against ``current`` and choose the one to publish."""
    path = Trajectory()
    for number, checkpoint in enumerate(checkpoints):
        started = time.monotonic()
        where = work_dir / f"point-{number}"
        served = served_checkpoint(base_dir, checkpoint, where, value, thresholds or {}, threads)
        try:
            scores = score(served, samples, judge=value, general=general)
        finally:
            served.close()
            shutil.rmtree(where, ignore_errors=True)
        report = judge(current, scores, config)
        path.scores.append(scores)
        path.reports.append(report)
        path.points.append(_point(checkpoint, report, time.monotonic() - started))
        log.info("checkpoint %s: %s", checkpoint.label, path.points[-1]["summary"])
    path.chosen = choose(path.points)
    for i, point in enumerate(path.points):
        point["chosen"] = i == path.chosen
    return path


def choose(points: list[dict]) -> int | None:
    """The passing point with the largest held-out gain; on a tie the earlier one (it drifted less)."""
    passing = [(p["heldout_gain"]["delta"], -i) for i, p in enumerate(points) if p["passed"]]
    return -max(passing)[1] if passing else None


def _point(checkpoint: Checkpoint, report: GateReport, seconds: float) -> dict:
    gain = report.feedback.get("edit_similarity", {"delta": 0.0, "low": 0.0, "high": 0.0})
    drops = {m: round(row["current"] - row["candidate"], 4) for m, row in report.general.items()}
    worst = max(drops.items(), key=lambda kv: kv[1], default=(None, 0.0))
    summary = f"held-out {gain['delta']:+.4f} ({gain['low']:+.4f}..{gain['high']:+.4f})" + (
        f", worst general drop {worst[1]:+.4f} ({worst[0]})" if worst[0] else ""
    )
    return {
        "label": checkpoint.label,
        "step": checkpoint.step,
        "scale": checkpoint.scale,
        "passed": report.passed,
        "heldout_gain": {k: gain[k] for k in ("delta", "low", "high")},
        "general_drop": drops,
        "summary": summary,
        "reasons": report.reasons,
        "seconds": round(seconds, 1),
    }


def refusal(path: Trajectory, tolerance: float) -> str:
    """Why no point of the path was published, in one line an operator understands."""
    best = path.best_effort
    if best is None:
        return "nothing to judge: no checkpoint was scored"
    point = path.points[best]
    gain = point["heldout_gain"]
    worst = max(point["general_drop"].items(), key=lambda kv: kv[1], default=(None, 0.0))
    if gain["low"] <= 0:
        learned = f"learned no more than noise on your code (best {point['label']}: {gain['delta']:+.3f})"
    else:
        learned = f"learned your code (best {point['label']}: {gain['delta']:+.3f})"
    forgot = (
        f" but general code fell {worst[1]:.3f} on {worst[0]} (limit {tolerance})"
        if worst[0] and worst[1] > tolerance
        else ""
    )
    return f"refused: {learned}{forgot}; tried {len(path.points)} checkpoints"


def warm_start(path: Trajectory, checkpoints: Sequence[Checkpoint]) -> Checkpoint | None:
    """The checkpoint a refused cycle hands to the next one: the one that learned, if any did."""
    best = path.best_effort
    if best is None or path.points[best]["heldout_gain"]["delta"] <= 0:
        return None
    return checkpoints[best]


class WarmStarts:
    """Where a refused cycle leaves the checkpoint that learned, for the next cycle to continue.

    One at a time, for one parent version: a cycle that starts from another version, or publishes,
    makes it moot.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.record = directory / "warm_start.json"

    def load(self, parent: str) -> Checkpoint | None:
        try:
            data = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        adapter = self.directory / "adapter"
        if data.get("parent") != parent or not adapter.is_dir():
            return None
        return Checkpoint(
            f"{data['label']} (cycle {data['cycle']})", adapter, data.get("step"), data.get("scale", 1.0)
        )

    def save(self, parent: str, checkpoint: Checkpoint | None, cycle: str) -> None:
        self.clear()
        if checkpoint is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.copytree(checkpoint.adapter, self.directory / "adapter")
        record = {"parent": parent, "cycle": cycle, "label": checkpoint.label, "step": checkpoint.step}
        self.record.write_text(json.dumps(record | {"scale": checkpoint.scale}))

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
