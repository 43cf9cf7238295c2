"""CLI commands of the training stage (mounted by :mod:`editloop.cli`)."""

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from editloop.errors import CorpusError, ModelError, TrainingDataError
from editloop.models.registry import Registry
from editloop.settings import load_settings

# Here, not from training.runtime: that imports torch, and bad arguments should not wait for it.
DEVICES: dict[str, Literal["auto", "cpu", "cuda"]] = {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}


def train(
    repo: Annotated[
        Path | None, typer.Option(help="git repository (its tracked files) or directory of the team's code")
    ] = None,
    steps: Annotated[int, typer.Option(help="SFT optimizer steps")] = 200,
    minutes: Annotated[float | None, typer.Option(help="stop SFT after this many minutes")] = None,
    languages: Annotated[str, typer.Option(help="comma-separated: python, java, rust")] = "python,java,rust",
    max_samples: Annotated[int, typer.Option(help="most FIM samples to train on")] = 2000,
    publish: Annotated[bool, typer.Option(help="merge, export, verify and publish a new version")] = False,
    activate: Annotated[bool, typer.Option(help="with --publish: make the new version current")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Cold start: fine-tune the current model on a codebase before any feedback exists."""
    if repo is None:
        raise TrainingDataError("--repo is required: a git repository or directory of the code to learn")
    if steps < 1 or max_samples < 1:
        raise TrainingDataError(f"--steps ({steps}) and --max-samples ({max_samples}) must be at least 1")
    chosen = DEVICES.get(device)
    if chosen is None:
        raise TrainingDataError(f"--device {device!r}: choose from {', '.join(DEVICES)}")
    if not repo.expanduser().exists():
        raise CorpusError(f"--repo {repo} does not exist; pass a git repository or a directory of code")
    if activate and not publish:
        raise TrainingDataError("--activate needs --publish: only a published version can become current")
    settings = load_settings()
    if Registry(settings.models_dir).current() is None:
        raise ModelError("no model is active: run `editloop bootstrap-model` or `editloop models import`")
    # Imported only now: torch and TRL take seconds to load, bad arguments should not wait for them.
    import torch
    from datasets import disable_progress_bars

    from editloop.training.coldstart import ColdStartOptions, cold_start
    from editloop.training.sft import SftConfig

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    disable_progress_bars()
    options = ColdStartOptions(
        repo=repo.expanduser(),
        languages=tuple(x.strip() for x in languages.split(",") if x.strip()),
        max_samples=max_samples,
        seed=seed,
        sft=SftConfig(max_steps=steps, max_minutes=minutes, device=chosen, seed=seed),
        publish=publish,
        activate=activate,
    )
    report = cold_start(settings, options)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
