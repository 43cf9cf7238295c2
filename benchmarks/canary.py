"""Two live canaries end to end: a worse version rolled back, a better one promoted; prints JSON.

A server over ``EDITLOOP_HOME``'s current version (the *good* model) serves real code typed by the
replay's simulated developer while the trainer's canary monitor checks every half second:

1. ``worse``: the canary is the good model with its weights drowned in noise (exported to GGUF for
   real) — the monitor should roll it back;
2. ``better``: the noisy one is made current and the good model (published again) is the canary —
   the monitor should promote it.

For each: the decision, its reason, suggestions seen per arm when it was taken, requests sent and
minutes to decide. Run: ``.venv/bin/python benchmarks/canary.py [--repo DIR] [--share 0.5]``.
"""

import argparse
import json
import sysconfig
import threading
import time
from pathlib import Path

import torch

from editloop.eval.replay import ReplayConfig
from editloop.eval.replay_cli import load_tasks, run_replay
from editloop.feedback.canary import CanaryMonitor, CanaryRule
from editloop.feedback.log import open_feedback
from editloop.models.registry import ModelVersion, Registry
from editloop.server.background import background_server, free_port
from editloop.settings import Settings, load_settings

TOKEN = "bench-token"


def republish(registry: Registry, source: ModelVersion) -> str:
    """``source``'s files again as a new version: the same model under another name."""
    return registry.republish(source.name).name


def scrambled(registry: Registry, source: ModelVersion, noise: float = 3.0, seed: int = 0) -> str:
    """``source`` with noise (``noise`` × each matrix's std) on its hidden weights: a much worse model.

    Exported to GGUF without the parity checks: its logits are so flat that Q8_0 rounding flips
    near-ties, and a version meant to be bad has nothing to prove there.
    """
    from editloop.models.export import export_gguf, load_hf

    hf = source.hf_path()
    if hf is None:
        raise SystemExit(f"{source.name} has no HF weights to scramble")
    model, tokenizer = load_hf(hf)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:  # keep the vocabulary, scramble the rest
                weight.add_(torch.randn(weight.shape, generator=generator) * noise * weight.std())
    with registry.stage() as staging:
        model.save_pretrained(staging / "hf")
        tokenizer.save_pretrained(staging / "hf")
        exported = export_gguf(model, tokenizer, staging, ("q8_0",), 1)
        return registry.publish(
            staging, kind="retrain", fim=exported.fim, arch=exported.arch,
            gguf={q: p.name for q, p in exported.files.items()}, parent=source.name,
            hf_dir="hf", tokenizer="hf/tokenizer.json", training_data={"scrambled": noise},
        ).name  # fmt: skip


def run_canary(
    settings: Settings,
    code: Path,
    stable: str,
    canary: str,
    rule: CanaryRule,
    share: float = 0.5,
    per_file: int = 40,
    max_rounds: int = 8,
) -> dict:
    """Make ``stable`` current, start ``canary``, replay ``code`` until the monitor decides."""
    registry = Registry(settings.models_dir)
    registry.activate(stable)
    registry.start_canary(canary, share=share)
    tasks = load_tasks(code, "*.py", None, "all", 0.7)
    local = settings.model_copy(update={"port": free_port(), "api_tokens": [TOKEN], "registry_poll_s": 0.2})
    started, requests = time.monotonic(), 0
    with background_server(local) as (url, _app), open_feedback(local, replay=False) as feedback:
        monitor = CanaryMonitor(registry, feedback.store, rule)
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5) and registry.running_canary() is not None:
                monitor.check()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for seed in range(max_rounds):  # every round types the code again: new traffic, new arms
            if registry.running_canary() is None:
                break
            config = ReplayConfig(seed=seed, max_requests_per_file=per_file)
            report = run_replay(local, tasks, config, project="canary", server=url, token=TOKEN)
            requests += report["requests"]
        stop.set()
        watcher.join(timeout=30)
        if registry.running_canary() is not None:
            monitor.check()
    decided = registry.canary()
    assert decided is not None
    arms = decided.figures.get("arms", {})
    return {
        "stable": stable,
        "canary": canary,
        "status": decided.status,
        "reason": decided.reason,
        "seen": {arm: figures.get("seen") for arm, figures in arms.items()},
        "full_accept_rate": {arm: figures.get("full_accept_rate") for arm, figures in arms.items()},
        "requests": requests,
        "minutes_to_decide": round(((decided.decided_at or time.time()) - decided.started_at) / 60, 2),
        "wall_minutes": round((time.monotonic() - started) / 60, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(sysconfig.get_paths()["stdlib"]) / "email")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--min-shown", type=int, default=100)
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--noise", type=float, default=3.0, help="noise std, in units of each weight's std")
    parser.add_argument("--requests-per-file", type=int, default=40)
    parser.add_argument("--max-rounds", type=int, default=20, help="replays of the repo at most per canary")
    args = parser.parse_args()
    settings = load_settings()
    registry = Registry(settings.models_dir)
    good = registry.load_verified_current()
    rule = CanaryRule(min_shown=args.min_shown, margin=args.margin)
    bad = scrambled(registry, good, args.noise)
    runs = (args.share, args.requests_per_file, args.max_rounds)
    worse = run_canary(settings, args.repo, good.name, bad, rule, *runs)
    better = run_canary(settings, args.repo, bad, republish(registry, good), rule, *runs)
    registry.activate(good.name)  # leave the home as it was found
    print(
        json.dumps({"model": good.name, "repo": str(args.repo), "worse": worse, "better": better}, indent=2)
    )


if __name__ == "__main__":
    main()
