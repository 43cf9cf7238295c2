"""One retrain cycle: feedback → dataset → SFT → GRPO → value model → GGUF → gate → publish.

Each stage's state goes to ``runs/<cycle>/cycle.json`` (and to whoever watches through the
``on_state`` callback) so operators see where a cycle is. Safety, stage by stage:

- feedback is acknowledged on the stream only after it is fsynced into the trainer's archive;
- everything is built under ``runs/<cycle>/`` and the registry's staging directory, invisible to
  servers; a crash anywhere leaves the serving version untouched, and staging is swept;
- the new version appears in one atomic publish, only when the gate passes, and servers are
  told over pub/sub (they also poll the registry pointer, so a lost message only delays the swap).

>>> result = run_cycle(settings, source, CycleConfig())  # doctest: +SKIP
"""

import dataclasses
import json
import logging
import os
import shutil
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Protocol

from editloop.completion.served import DEFAULT_ABSTAIN_THRESHOLD
from editloop.completion.value import ValueInput, ValueModel
from editloop.errors import EditloopError, ModelError
from editloop.models.registry import ModelVersion, Registry
from editloop.settings import Settings
from editloop.training.dataset import Dataset, DatasetConfig, FeedbackArchive, build_dataset
from editloop.training.gate import GateConfig, gate_samples, score
from editloop.training.grpo_effect import effect_of
from editloop.training.launch import Launch, launch_for, run_grpo_stage, run_sft_stage
from editloop.training.runtime import Device
from editloop.training.selection import Checkpoint, Trajectory, WarmStarts, refusal, walk, warm_start
from editloop.training.value import (
    HiddenStates,
    calibrate_threshold,
    evaluate,
    logprob_scores,
    ranker_ab,
    top_choices,
    train_blended_model,
    with_hidden_states,
)

log = logging.getLogger(__name__)
GRPO_LABEL = "grpo"  # the trajectory's point after GRPO; the point before it is SFT's last

STAGES = ("snapshot", "dataset", "sft", "grpo", "value", "gate", "export", "publish")


class CycleError(EditloopError):
    code = "cycle_failed"


# The cycle's knobs an operator sets as EDITLOOP_<SETTING>: the one mapping from settings to cycle
# fields, for the fields' defaults (a cycle built directly trains like the worker's) and for
# CycleConfig.from_settings.
FROM_SETTINGS = {
    "min_samples": "retrain_min_samples",
    "sft_steps": "retrain_sft_steps",
    "grpo_steps": "retrain_grpo_steps",
    "learning_rate": "retrain_learning_rate",
    "device": "retrain_device",
    "general_mix": "retrain_general_mix",
    "general_samples": "retrain_general_samples",
    "humaneval_tasks": "retrain_humaneval_tasks",
    "canary_share": "canary_share",
    "checkpoints": "retrain_checkpoints",
    "blends": "retrain_blends",
}


def _setting(field_name: str):
    return Settings.model_fields[FROM_SETTINGS[field_name]].default


@dataclass
class CycleConfig:
    min_samples: int = field(
        default=_setting("min_samples"),
        metadata={"help": "Skip the cycle below this many training samples."},
    )
    sft_steps: int = field(default=_setting("sft_steps"), metadata={"help": "SFT optimizer steps."})
    sft_minutes: float | None = field(default=10.0, metadata={"help": "SFT time budget."})
    grpo_steps: int = field(
        default=_setting("grpo_steps"), metadata={"help": "GRPO optimizer steps (0 skips GRPO)."}
    )
    grpo_minutes: float | None = field(default=10.0, metadata={"help": "GRPO time budget."})
    learning_rate: float = field(
        default=_setting("learning_rate"), metadata={"help": "SFT learning rate of the LoRA adapter."}
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank for SFT and GRPO."})
    device: Device = field(default=_setting("device"), metadata={"help": "cpu, cuda or auto."})
    launch: Launch = field(
        default_factory=Launch, metadata={"help": "Processes SFT and GRPO train in (DDP when more than one)."}
    )
    gate: GateConfig = field(default_factory=GateConfig, metadata={"help": "When a candidate is published."})
    dataset: DatasetConfig = field(default_factory=DatasetConfig, metadata={"help": "Targets and split."})
    general_mix: float = field(
        default=_setting("general_mix"),
        metadata={
            "help": "Rehearsal: general-code FIM rows added to SFT, as a fraction of the feedback rows."
        },
    )
    general_checks: bool = field(default=True, metadata={"help": "Guard general code (FIM, HumanEval)."})
    general_samples: int = field(
        default=_setting("general_samples"),
        metadata={"help": "Held-out stdlib FIM tasks for the guard."},
    )
    humaneval_tasks: int = field(
        default=_setting("humaneval_tasks"),
        metadata={"help": "HumanEval single-line tasks (0: skip)."},
    )
    force: bool = field(default=False, metadata={"help": "Publish even when the gate fails (operator)."})
    activate: bool = field(default=True, metadata={"help": "Make a published version current."})
    canary_share: float = field(
        default=_setting("canary_share"),
        metadata={"help": "Serve a published version to this share first (a canary); 0: activate at once."},
    )
    checkpoints: int = field(
        default=_setting("checkpoints"),
        metadata={
            "help": "Points along SFT the gate scores (every 1/N of the steps); the best passing one wins."
        },
    )
    blends: list[float] = field(
        default_factory=lambda: list(_setting("blends")),
        metadata={"help": "Also score the last point with its LoRA update scaled by each of these."},
    )
    quants: tuple[str, ...] = field(default=("f16", "q8_0"), metadata={"help": "GGUF files to export."})
    seed: int = field(default=0, metadata={"help": "Seeds training, sampling and the bootstrap."})

    @classmethod
    def from_settings(cls, settings: Settings, force: bool = False) -> "CycleConfig":
        """The cycle as the operator's settings configure it."""
        return cls(
            **{name: getattr(settings, setting) for name, setting in FROM_SETTINGS.items()},
            general_checks=settings.retrain_general_samples > 0 or settings.retrain_humaneval_tasks > 0,
            gate=GateConfig(general_tolerance=settings.retrain_general_tolerance),
            launch=launch_for(settings),
            force=force,
        )


class FeedbackSource(Protocol):
    """Where the cycle reads feedback: the store's consumer group (:class:`FeedbackConsumer`)."""

    def read(self, count: int) -> list:
        """Deliveries (each with an ``.event``); an empty list when nothing is left."""
        ...

    def ack(self, deliveries: list) -> int: ...


@dataclass
class CycleState:
    cycle_id: str
    stage: str = "queued"
    status: str = "running"  # running | published | rejected | skipped | failed
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    progress: float = 0.0
    parent: str | None = None
    version: str | None = None
    message: str = ""
    reports: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _plain(asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    return value


class Cycle:
    """One run of the loop, recording its state after every stage."""

    def __init__(
        self,
        settings: Settings,
        config: CycleConfig,
        on_state: Callable[[CycleState], None] | None = None,
        cycle_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.registry = Registry(settings.models_dir)
        self.state = CycleState(cycle_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
        self.dir = settings.runs_dir / self.state.cycle_id
        self.on_state = on_state
        self.archive = FeedbackArchive(settings.home / "training" / "feedback.jsonl")
        self.warm_starts = WarmStarts(settings.home / "training" / "warm_start")

    def _enter(self, stage: str, message: str = "") -> None:
        self.state.stage = stage
        self.state.progress = STAGES.index(stage) / len(STAGES) if stage in STAGES else self.state.progress
        self.state.message = message or stage
        log.info("cycle %s: %s", self.state.cycle_id, self.state.message)
        self._save()

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "cycle.json.tmp"
        tmp.write_text(json.dumps(self.state.to_dict(), indent=2))
        os.replace(tmp, self.dir / "cycle.json")
        if self.on_state is not None:
            self.on_state(self.state)

    def _finish(self, status: str, message: str) -> CycleState:
        self.state.status = status
        self.state.message = message
        self.state.finished_at = time.time()
        self.state.progress = 1.0
        self._save()
        return self.state

    def run(self, source: FeedbackSource | None, notify: Callable[[str], None] | None = None) -> CycleState:
        """The whole cycle; never raises for a stage failure (the state says ``failed`` and why)."""
        if self.settings.torch_threads:
            import torch

            # Beside a server (or other trainers) every extra thread only adds contention.
            torch.set_num_threads(self.settings.torch_threads)
        try:
            return self._run(source, notify)
        except Exception as exc:  # any stage: the serving version is untouched, say what broke
            log.exception("cycle %s failed in %s", self.state.cycle_id, self.state.stage)
            return self._finish("failed", f"{self.state.stage} failed: {exc}")

    def _run(self, source: FeedbackSource | None, notify: Callable[[str], None] | None) -> CycleState:
        current = self.registry.current()
        if current is None or current.hf_path() is None:
            raise CycleError("the current version has no HF checkpoint to train (import it with --hf)")
        self.state.parent = current.name
        self._enter("snapshot", "reading new feedback")
        if source is not None:
            self.state.reports["snapshot"] = snapshot(source, self.archive)
        self._enter("dataset", "building the dataset")
        data = build_dataset(self.archive.events(), self.config.dataset)
        self.state.reports["dataset"] = data.stats
        if len(data.sft_train) < self.config.min_samples:
            return self._finish(
                "skipped", f"{len(data.sft_train)} training samples; a cycle needs {self.config.min_samples}"
            )
        checkpoints, training = self._train(current, data)
        self.state.reports.update(training)
        self._enter("value", "training the value model, calibrating when to abstain")
        default = self._default_threshold()
        value_model, self.state.reports["value"] = train_value(data, default)
        thresholds, self.state.reports["abstain"] = calibrate(data, value_model, default)
        return self._choose_and_publish(current, data, checkpoints, value_model, thresholds, notify)

    def _default_threshold(self) -> float:
        return (
            self.settings.abstain_threshold
            if self.settings.abstain_threshold is not None
            else DEFAULT_ABSTAIN_THRESHOLD
        )

    def _train(self, current: ModelVersion, data: Dataset) -> tuple[list[Checkpoint], dict]:
        """SFT (then GRPO) from the current version, or from a refused cycle's warm start; every
        point of the path the gate may choose from."""
        from editloop.training.grpo import GrpoConfig
        from editloop.training.rewards.combined import CombinedReward
        from editloop.training.runtime import LoraSettings
        from editloop.training.sft import SftConfig

        base = current.hf_path()
        assert base is not None
        rows = [asdict(s) for s in data.sft_train]
        rehearsal = general_rows(int(len(rows) * self.config.general_mix), self.config.seed)
        lora = LoraSettings(rank=self.config.lora_rank)
        warm = self.warm_starts.load(weights_of(current))
        reports: dict = {"warm_start": warm.label if warm else None}
        start = f", continuing {warm.label} of a refused cycle" if warm else ""
        self._enter("sft", f"SFT on {len(rows)} feedback samples + {len(rehearsal)} general-code rows{start}")
        sft = run_sft_stage(
            self.config.launch,
            base,
            rows + rehearsal,
            self.dir / "sft",
            SftConfig(
                max_steps=self.config.sft_steps,
                max_minutes=self.config.sft_minutes,
                learning_rate=self.config.learning_rate,
                lora=lora,
                device=self.config.device,
                seed=self.config.seed,
                snapshot_every=self.config.sft_steps // self.config.checkpoints
                if self.config.checkpoints > 1
                else 0,
            ),
            adapter_dir=warm.adapter if warm else None,
        )
        reports["sft"] = sft.to_dict()
        points = [Checkpoint(f"sft {s}/{sft.steps}", Path(p), s) for s, p in sorted(sft.snapshots.items())]
        points.append(Checkpoint(f"sft {sft.steps}/{sft.steps}", sft.adapter_dir, sft.steps))
        if self.config.grpo_steps > 0:
            self._enter("grpo", f"GRPO on {len(rows)} prompts")
            grpo = run_grpo_stage(
                self.config.launch,
                base,
                rows,
                [CombinedReward(execution=False)],
                self.dir / "grpo",
                GrpoConfig(
                    max_steps=self.config.grpo_steps,
                    max_minutes=self.config.grpo_minutes,
                    lora=lora,
                    device=self.config.device,
                    seed=self.config.seed,
                ),
                adapter_dir=sft.adapter_dir,
            )
            reports["grpo"] = grpo.to_dict()
            points.append(Checkpoint(GRPO_LABEL, grpo.adapter_dir, sft.steps + grpo.steps))
        points += [points[-1].blended(scale) for scale in self.config.blends]
        return points, reports

    def _choose_and_publish(
        self,
        current: ModelVersion,
        data: Dataset,
        checkpoints: list[Checkpoint],
        value_model: ValueModel | None,
        thresholds: dict[str, float],
        notify: Callable[[str], None] | None,
    ) -> CycleState:
        from editloop.models.publish import stage_checkpoint

        base = current.hf_path()
        assert base is not None
        self._enter("gate", f"scoring {len(checkpoints)} checkpoints against {current.name}")
        path = self._walk(current, base, data, checkpoints, value_model, thresholds)
        self.state.reports["trajectory"] = path.points
        self._report_grpo_effect(checkpoints, path)
        index = path.chosen if path.chosen is not None or not self.config.force else path.best_effort
        if index is None:
            kept = warm_start(path, checkpoints)
            self.warm_starts.save(weights_of(current), kept, self.state.cycle_id)
            self.state.reports["gate"] = path.reports[-1].to_dict() if path.reports else {}
            tolerance = self.config.gate.general_tolerance
            message = refusal(path, tolerance) + (f"; the next cycle continues {kept.label}" if kept else "")
            ranker = self._ranker_for(current, data, value_model, thresholds)
            if ranker is None:
                return self._finish("rejected", message)
            return self._publish_ranker(current, *ranker, message, notify)
        chosen, report = checkpoints[index], path.reports[index]
        self.state.reports["gate"] = report.to_dict() | {"checkpoint": chosen.label}
        self._enter("export", f"merging {chosen.label} and exporting GGUF")
        with stage_checkpoint(
            self.registry, base, chosen.adapter, self.config.quants, adapter_scale=chosen.scale
        ) as staged:
            if value_model is not None:
                value_model.save(staged.path)
            self._enter("publish", "publishing")
            training_data, metrics = self._provenance(checkpoint=chosen.label)
            version = staged.publish(
                kind="retrain",
                parent=current.name,
                training_data=training_data,
                metrics=metrics,
                abstain_thresholds=thresholds,
            )
        self.warm_starts.clear()
        forced = "" if report.passed else " (forced past a failed gate)"
        return self._released(version, f"published {version.name} from {chosen.label}{forced}", notify)

    def _ranker_for(
        self, current: ModelVersion, data: Dataset, plain: ValueModel | None, thresholds: dict[str, float]
    ) -> tuple[ValueModel, dict[str, float]] | None:
        """The value model to publish with the current weights, and its thresholds: one that also
        reads those weights' hidden states when it beats log-prob and earns more than ``plain`` on
        the same held-out requests, else ``plain`` (None: neither beats log-prob).

        Only here: hidden states belong to the weights they were read from, and new weights would
        read others.
        """
        fallback = (plain, thresholds) if plain is not None else None
        if self.settings.backend == "remote":
            self.state.reports["value_hidden"] = {
                "chosen": False,
                "reason": "a remote backend reads no hidden states",
            }
            return fallback
        from editloop.completion.builder import backend_factory
        from editloop.models.llama import LlamaBackend

        self._enter("value", f"reading {current.name}'s hidden states for a value model")
        backend = backend_factory(self.settings.model_copy(update={"max_candidates": 1}))(current)
        try:
            assert isinstance(backend, LlamaBackend)
            model, hidden_thresholds, report = hidden_ranker(
                data, backend, self._default_threshold(), self.settings.default_max_tokens
            )
        finally:
            backend.close()
        chosen = model is not None and (plain is None or _reward(model) > _reward(plain))
        self.state.reports["value_hidden"] = report | {"chosen": chosen}
        return (model, hidden_thresholds) if chosen and model is not None else fallback

    def _publish_ranker(
        self,
        current: ModelVersion,
        value_model: ValueModel,
        thresholds: dict[str, float],
        refused: str,
        notify: Callable[[str], None] | None,
    ) -> CycleState:
        """The weights were refused but the value model beats log-prob: publish the current weights
        with it, so the cycle still gives the team better-ranked suggestions (and the canary judges
        them on live traffic like any version)."""
        self._enter("publish", f"publishing {current.name}'s weights with the new value model")
        training_data, metrics = self._provenance(weights_of=weights_of(current))
        version = self.registry.republish(
            current.name,
            add=value_model.save,
            abstain_thresholds=thresholds,
            kind="ranker",
            training_data=training_data,
            metrics=metrics,
        )
        said = f"{refused}; published {version.name}: {current.name}'s weights with a value model"
        return self._released(version, said + " that beats log-prob", notify)

    def _provenance(self, **extra: str) -> tuple[dict, dict]:
        """What a published version records of this cycle: its training data and its reports."""
        reports = self.state.to_dict()["reports"]
        training_data = {"cycle": self.state.cycle_id, **extra, **reports.get("dataset", {})}
        return training_data, {k: v for k, v in reports.items() if k != "dataset"}

    def _released(self, version: ModelVersion, said: str, notify: Callable[[str], None] | None) -> CycleState:
        """Start the published version (canary or activation), tell the servers, end the cycle."""
        self.state.version = version.name
        how = self._release(version.name)
        if notify is not None and self.config.activate:
            notify(version.name)
        return self._finish("published", said + how)

    def _walk(
        self,
        current: ModelVersion,
        base: Path,
        data: Dataset,
        checkpoints: list[Checkpoint],
        value_model: ValueModel | None,
        thresholds: dict[str, float],
    ) -> Trajectory:
        """Score the current version once, then every checkpoint against it."""
        from editloop.completion.served import load_served
        from editloop.models.llama import LlamaBackend

        threads = self.settings.model_threads or None
        samples = gate_samples(data.sft_heldout, self.config.gate)
        general = self._general_checks()
        served = load_served(current, LlamaBackend.from_version(current, n_threads=threads))
        try:
            before = score(served, samples, judge=value_model, general=general)
        finally:
            served.close()
        return walk(
            base,
            checkpoints,
            before,
            samples,
            general,
            self.config.gate,
            self.dir / "points",
            value=value_model,
            thresholds=thresholds,
            threads=threads,
        )

    def _report_grpo_effect(self, checkpoints: list[Checkpoint], path: Trajectory) -> None:
        """What GRPO changed: its point against the SFT point it started from, scored as the gate scores."""
        at = next((i for i, c in enumerate(checkpoints) if c.label == GRPO_LABEL), None)
        if at is not None and at > 0 and "grpo" in self.state.reports:
            self.state.reports["grpo"]["effect"] = effect_of(
                path.scores[at - 1], path.scores[at], self.config.gate
            )

    def _release(self, name: str) -> str:
        """Make the published version current, or start it as a canary; says which."""
        if not self.config.activate:
            return ""
        if self.config.canary_share <= 0:
            self.registry.activate(name)
            return ""
        running = self.registry.running_canary()
        if running is not None:
            self.registry.end_canary("aborted", f"superseded by {name}")
        canary = self.registry.start_canary(name, self.config.canary_share)
        self.state.reports["canary"] = canary.model_dump()
        return f"; a canary on {canary.share:.0%} of requests beside {canary.baseline}"

    def _general_checks(self) -> list:
        if not self.config.general_checks:
            return []
        from editloop.training.general import general_checks

        return general_checks(self.config.general_samples, self.config.humaneval_tasks, self.config.seed)


def general_rows(count: int, seed: int) -> list[dict]:
    """FIM rows from the starter model's own training code, mixed into SFT against forgetting.

    Without them a cycle that learns the team's code well can lose general code (seen on the small
    starter and the email package: held-out stdlib line similarity 0.108 → 0.077 with no rehearsal,
    → 0.085 with 0.5 rows per feedback row — both refused by the gate — and 0.106 with 1.5).
    A third are multi-line spans: feedback is mostly single lines, and with single-line rehearsal
    alone a longer cycle on the line-trained starter lost multi-line similarity 0.123 → 0.092.
    The gate's general check uses the held-out files, so these never leak into it.
    """
    if count <= 0:
        return []
    from editloop.corpus import DEFAULT_EXCLUDE, load_corpus
    from editloop.eval.fim import fim_task_mix

    files = load_corpus(["stdlib"], {"python"}, exclude=DEFAULT_EXCLUDE).train
    multi = count // 3
    tasks = fim_task_mix(files, {"single-line": count - multi, "multi-line": multi}, seed=seed)
    return [
        {
            "prefix": t.prefix,
            "suffix": t.suffix,
            "reference": t.target,
            "language": t.language,
            "filepath": t.path,
        }
        for t in tasks
    ]


def snapshot(source: FeedbackSource, archive: FeedbackArchive, batch: int = 500) -> dict:
    """Move every available event into the archive (durably), then acknowledge it on the stream."""
    read = new = 0
    while True:
        deliveries = source.read(batch)
        if not deliveries:
            break
        new += archive.append([d.event for d in deliveries])
        source.ack(deliveries)
        read += len(deliveries)
    return {"read": read, "new": new, "archived_total": len(archive)}


def weights_of(version: ModelVersion) -> str:
    """The version whose weights ``version`` carries: itself, or a ranker version's source. A refused
    cycle's warm start belongs to the weights, so it survives a ranker version taking over."""
    if version.manifest.kind == "ranker":
        return str(version.manifest.training_data.get("weights_of", version.name))
    return version.name


def train_value(data: Dataset, default: float) -> tuple[ValueModel | None, dict]:
    """The value model on this cycle's rows, kept only when it ranks held-out rows better than log-prob.

    Judged against the log-prob score it would replace, on held-out rows: AUC, and the ranker A/B
    (:func:`~editloop.training.value.ranker_ab`: what each would have shown first, the show reward
    that earned, the share of its suggestions taken whole and the characters developers kept). A
    model must beat log-prob on AUC and on the show reward, and match it on both of the others
    (the replay's full-accept rate and chars saved): the reward counts whole takes of four
    characters or more, and a model can earn it by showing such lines where log-prob showed long
    ones taken in part (which saves the developer less) or short ones taken whole. Otherwise it is
    not published and the version ranks by log-prob.
    """
    try:
        model = train_blended_model(data.value_train, default)
    except ModelError as exc:
        return None, {"published": False, "reason": str(exc), "rows": len(data.value_rows)}
    return judge_value(model, data, default)


def judge_value(model: ValueModel, data: Dataset, default: float) -> tuple[ValueModel | None, dict]:
    """``model`` when it beats log-prob on ``data``'s held-out rows as :func:`train_value` says, and
    the report of the judgement."""
    heldout = evaluate(model, data.value_heldout)
    report = {
        "train_rows": len(data.value_train),
        "l2": model.l2,
        "blend": model.blend,
        **heldout,
        "rank_p50_ms": rank_cost_ms(model, data),
    }
    if heldout["auc"] is None or heldout["baseline_auc"] is None:
        return None, report | {"published": False, "reason": "held-out rows lack accepted or rejected ones"}
    ab = ranker_ab(data.value_heldout, scores_by_ranker(data, model), default)
    report["ab"] = ab
    value, logprob = ab["value"]["reward_per_request"], ab["logprob"]["reward_per_request"]
    auc_says = f"held-out AUC {heldout['auc']} against log-prob's {heldout['baseline_auc']}"
    requests = ab["value"]["requests"]
    kept, kept_logprob = ab["value"]["chars_kept"], ab["logprob"]["chars_kept"]
    whole, whole_logprob = ab["value"]["whole_take_rate"] or 0.0, ab["logprob"]["whole_take_rate"] or 0.0
    ab_says = (
        f"show reward {value:+.4f} per request against {logprob:+.4f}, "
        f"{whole:.1%} of its suggestions taken whole against {whole_logprob:.1%}, "
        f"{kept} characters kept against {kept_logprob}, on {requests} requests"
    )
    beaten = heldout["auc"] <= heldout["baseline_auc"] or value <= logprob
    if beaten or whole < whole_logprob or kept < kept_logprob:
        return None, report | {"published": False, "reason": f"does not beat log-prob: {auc_says}, {ab_says}"}
    model.metrics = {"heldout": heldout, "ab": ab, "train_rows": len(data.value_train)}
    return model, report | {"published": True, "reason": f"beats log-prob: {auc_says}, {ab_says}"}


def scores_by_ranker(data: Dataset, value: ValueModel | None) -> dict[str, list[float]]:
    """Every held-out row as each ranker scores it."""
    scores = {"logprob": logprob_scores(data.value_heldout)}
    if value is not None:
        scores["value"] = value.predict_many([r.input for r in data.value_heldout])
    return scores


def rank_cost_ms(model: ValueModel, data: Dataset) -> float | None:
    """The value model's p50 cost to score one held-out request's candidates (what serving pays)."""
    requests: defaultdict[str, list[ValueInput]] = defaultdict(list)
    for i, row in enumerate(data.value_heldout):
        if row.view == 0:  # the requests as they were decoded, not their views with fewer candidates
            requests[row.request or str(i)].append(row.input)
    costs = []
    for inputs in list(requests.values())[:200]:
        started = time.perf_counter()
        model.predict_many(inputs)
        costs.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(costs), 3) if costs else None


def hidden_ranker(
    data: Dataset, backend: HiddenStates, default: float, max_new_tokens: int
) -> tuple[ValueModel | None, dict[str, float], dict]:
    """The value model trained on the rows with ``backend``'s hidden states as well, judged as
    :func:`train_value` judges (None when it does not beat log-prob), with its thresholds."""
    started = time.perf_counter()
    read = dataclasses.replace(
        data,
        value_train=with_hidden_states(data.value_train, backend, max_new_tokens),
        value_heldout=with_hidden_states(data.value_heldout, backend, max_new_tokens),
    )
    seconds = round(time.perf_counter() - started, 1)
    model, report = train_value(read, default)
    report |= {"hidden_width": model.hidden_width if model else None, "hidden_seconds": seconds}
    if model is None:
        return None, {}, report
    thresholds, report["abstain"] = calibrate(read, model, default)
    return model, thresholds, report


def _reward(model: ValueModel) -> float:
    """The model's show reward per held-out request in its cycle's A/B."""
    return float((model.metrics or {})["ab"]["value"]["reward_per_request"])


def calibrate(data: Dataset, value: ValueModel | None, default: float) -> tuple[dict[str, float], dict]:
    """Per ranker, the abstain threshold that maximises the expected show reward on held-out requests.

    Each request is judged by the candidate the ranker puts first, as serving decides.
    """
    labels = {r.label for r in data.value_heldout}
    if len(labels) < 2:
        return {}, {"skipped": "held-out rows lack accepted or rejected ones: thresholds stay as they are"}
    report = {}
    for name, scores in scores_by_ranker(data, value).items():
        _, choices = top_choices(data.value_heldout, scores)
        report[name] = calibrate_threshold([c.score for c in choices], [c.label for c in choices], default)
    return {name: r["threshold"] for name, r in report.items()}, report


def sweep_staging(registry: Registry, older_than_s: float = 3600.0) -> int:
    """Remove staging directories a killed cycle left behind (none is ever visible as a version).

    Only old ones: an export or import running beside the cycle stages its files there too.
    """
    if not registry.staging_dir.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    stale = [p for p in registry.staging_dir.iterdir() if p.is_dir() and p.stat().st_mtime < cutoff]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)
