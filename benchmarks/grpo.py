"""Does GRPO earn its place on CPU? SFT only against SFT + GRPO on the same cycle; one JSON object.

The demo's protocol (``editloop demo``), per repository: the starter serves; the held-out split is
replayed (before); the train split is replayed through the server as feedback; one cycle trains on it
(SFT only, forced past the gate so every arm is replayed, its value model and abstain thresholds as
usual). From that cycle's SFT adapter, GRPO then runs as the cycle runs it (``cycle_default``) and with a
larger CPU budget (``cpu_budget``: more steps, a higher learning rate, shorter groups, no KL reference).
Every arm is scored two ways:

- the gate's held-out figures: SFT against SFT + GRPO on the cycle's held-out feedback, paired bootstrap
  (:func:`editloop.training.grpo_effect.grpo_effect`, what the cycle reports as ``grpo.effect``);
- the replay: the held-out split typed again through a server on the arm's version (same seed, same
  abstain threshold for every arm: the one the cycle calibrated for log-prob ranking), giving full accepts,
  chars saved and suggestions shown.

Run: .venv/bin/python benchmarks/grpo.py --starter-home $EDITLOOP_HOME [--repos email,httpx]
"""

import argparse
import dataclasses
import json
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from editloop.eval.replay import ReplayConfig
from editloop.eval.replay_cli import load_tasks, run_replay
from editloop.feedback.log import open_feedback
from editloop.models.publish import publish_checkpoint
from editloop.models.registry import Registry
from editloop.server.background import background_server, free_port
from editloop.settings import Settings, load_settings
from editloop.training.cycle import CycleConfig
from editloop.training.dataset import FeedbackArchive, build_dataset
from editloop.training.gate import GateConfig
from editloop.training.grpo import GrpoConfig, run_grpo
from editloop.training.grpo_effect import grpo_effect
from editloop.training.rewards.combined import CombinedReward
from editloop.training.worker import Trainer

TRAIN_PROJECT, EVAL_PROJECT = "demo", "demo-eval"
REPLAY_COLUMNS = ("full_accept_rate", "full_accepts", "chars_saved", "shown", "abstain_rate", "exact_match")


def repositories(names: list[str]) -> dict[str, Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    known = {"email": stdlib / "email", "httpx": site / "httpx"}
    return {name: known.get(name, Path(name)) for name in names}


def arms(cycle: CycleConfig) -> dict[str, GrpoConfig]:
    """GRPO as the cycle runs it, and a larger budget CPUs can afford on the starter."""
    return {
        "cycle_default": GrpoConfig(max_steps=max(1, cycle.grpo_steps or 5), device="cpu", seed=cycle.seed),
        "cpu_budget": GrpoConfig(
            max_steps=40,
            learning_rate=5e-4,
            prompts_per_step=4,
            num_generations=4,
            max_new_tokens=24,
            beta=0.0,
            device="cpu",
            seed=cycle.seed,
        ),
    }


def replay(
    settings: Settings, tasks, seed: int, per_file: int, project: str, threshold: float | None
) -> dict:
    local = settings.model_copy(
        update={"port": free_port(), "trainer": False, "abstain_threshold": threshold}
    )
    with background_server(local) as (url, _app):
        report = run_replay(
            local,
            tasks,
            ReplayConfig(seed=seed, max_requests_per_file=per_file),
            split="heldout" if project == EVAL_PROJECT else "train",
            project=project,
            server=url,
            ranker="logprob",
        )
    return report


def summary(report: dict) -> dict:
    return {"version": report.get("model_version"), **{k: report.get(k) for k in REPLAY_COLUMNS}}


def run_repo(name: str, repo: Path, starter_home: Path, work: Path, args: argparse.Namespace) -> dict:
    home = work / name
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(starter_home / "models", home / "models", ignore=shutil.ignore_patterns(".staging"))
    settings = load_settings(home=home, retrain_projects=[TRAIN_PROJECT])
    registry = Registry(settings.models_dir)
    starter = registry.current()
    train = load_tasks(repo, "*.py", None, "train", 0.7)
    heldout = load_tasks(repo, "*.py", None, "heldout", 0.7)
    result: dict = {"repo": str(repo), "train_files": len(train), "heldout_files": len(heldout)}
    result["before"] = summary(replay(settings, heldout, args.seed, args.per_file, EVAL_PROJECT, None))
    replay(settings, train, args.seed + 1, args.per_file, TRAIN_PROJECT, None)  # the feedback

    config = dataclasses.replace(CycleConfig.from_settings(settings), grpo_steps=0, force=True)
    started = time.perf_counter()
    with open_feedback(settings) as feedback:
        state = Trainer.from_settings(settings, feedback.store).run_cycle("grpo-benchmark", config=config)
    if state.status != "published":
        raise RuntimeError(f"the SFT cycle did not publish: {state.message}")
    threshold = (state.reports.get("abstain", {}).get("logprob") or {}).get("threshold")
    result["cycle"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "sft": state.reports["sft"],
        "gate_vs_starter": state.reports["gate"]["feedback"],
        "abstain_threshold_logprob": threshold,
    }
    result["sft_only"] = summary(replay(settings, heldout, args.seed, args.per_file, EVAL_PROJECT, threshold))

    base, sft_adapter = starter.hf_path(), settings.runs_dir / state.cycle_id / "sft" / "adapter"
    data = build_dataset(FeedbackArchive(home / "training" / "feedback.jsonl").events(), config.dataset)
    rows = [dataclasses.asdict(s) for s in data.sft_train]
    for arm, grpo_config in arms(CycleConfig.from_settings(settings)).items():
        out = settings.runs_dir / f"grpo-{arm}"
        grpo = run_grpo(
            base, rows, [CombinedReward(execution=False)], out, grpo_config, adapter_dir=sft_adapter
        )
        effect = grpo_effect(
            base, sft_adapter, grpo.adapter_dir, data.sft_heldout, GateConfig(), out / "effect"
        )
        version = publish_checkpoint(
            settings, base, adapter_dir=grpo.adapter_dir, parent=starter.name, activate=True, kind="retrain"
        )
        after = summary(replay(settings, heldout, args.seed, args.per_file, EVAL_PROJECT, threshold))
        result[arm] = {
            "grpo": {k: v for k, v in grpo.to_dict().items() if k not in ("adapter_dir", "metrics_path")},
            "config": {k: getattr(grpo_config, k) for k in ("max_steps", "learning_rate", "num_generations")},
            "gate_vs_sft": effect,
            "replay": after | {"version": version.name},
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starter-home", type=Path, required=True, help="an EDITLOOP_HOME with a starter")
    parser.add_argument("--work", type=Path, default=Path("/tmp/editloop-grpo"))
    parser.add_argument("--repos", default="email,httpx")
    parser.add_argument("--per-file", type=int, default=40, help="suggestions asked per file at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    report = {"starter": Registry(args.starter_home / "models").current().manifest.training_data.get("size")}
    for name, path in repositories(args.repos.split(",")).items():
        report[name] = run_repo(name, path, args.starter_home, args.work, args)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
