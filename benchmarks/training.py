"""Benchmark one retrain's training stages; prints one JSON object.

SFT and GRPO seconds per optimizer step on a version's HF checkpoint (the active one by default),
on FIM samples cut from the stdlib ``email`` package (code the starter model never trained on),
with the reward a cycle uses. Per-step figures are medians over the steps after the first.

Run: ``.venv/bin/python benchmarks/training.py [VERSION] [--sft-steps N] [--grpo-steps N]``
"""

import argparse
import itertools
import json
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from editloop.corpus import read_files
from editloop.models.registry import Registry
from editloop.settings import load_settings
from editloop.training.coldstart import extract_samples
from editloop.training.grpo import GrpoConfig, run_grpo
from editloop.training.metrics import read_metrics
from editloop.training.rewards import CombinedReward
from editloop.training.sft import SftConfig, run_sft


def step_seconds(metrics_path: Path) -> float | None:
    stamps = [r["time_s"] for r in read_metrics(metrics_path) if "loss" in r]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return round(statistics.median(gaps), 4) if gaps else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("version", nargs="?", default="current")
    parser.add_argument("--sft-steps", type=int, default=10)
    parser.add_argument("--grpo-steps", type=int, default=5)
    parser.add_argument("--execution", action="store_true", help="include sandboxed toolchain rewards")
    args = parser.parse_args()
    settings = load_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    version = Registry(settings.models_dir).verify(args.version)
    hf_dir = version.hf_path()
    assert hf_dir is not None, f"version {version.name} has no HF checkpoint"
    files = read_files([str(Path(sysconfig.get_paths()["stdlib"]) / "email")], {"python"})
    samples = extract_samples(files, max_samples=256, per_file=16, seed=0)
    sft_config = SftConfig(max_steps=args.sft_steps, batch_size=8, max_new_tokens=64, tensorboard=False)
    grpo_config = GrpoConfig(
        max_steps=args.grpo_steps, prompts_per_step=2, num_generations=8, max_new_tokens=32, tensorboard=False
    )
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        sft = run_sft(hf_dir, samples, Path(work) / "sft", sft_config)
        sft_wall = time.perf_counter() - started
        started = time.perf_counter()
        reward = CombinedReward(execution=args.execution)
        grpo = run_grpo(
            hf_dir, samples, [reward], Path(work) / "grpo", grpo_config, adapter_dir=sft.adapter_dir
        )
        grpo_wall = time.perf_counter() - started
        figures = {
            "version": version.name,
            "threads": torch.get_num_threads(),
            "sft": {
                "steps": sft.steps,
                "batch": sft_config.batch_size,
                "s_per_step": step_seconds(sft.metrics_path),
                "wall_s_with_setup": round(sft_wall, 2),
            },
            "grpo": {
                "steps": grpo.steps,
                "completions_per_step": grpo_config.prompts_per_step * grpo_config.num_generations,
                "max_new_tokens": grpo_config.max_new_tokens,
                "execution_rewards": args.execution,
                "s_per_step": step_seconds(grpo.metrics_path),
                "wall_s_with_setup": round(grpo_wall, 2),
                "mean_reward_std": grpo.mean_reward_std,
                "mean_frac_reward_zero_std": grpo.mean_frac_reward_zero_std,
            },
        }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
