"""``editloop models export``: an HF checkpoint to verified GGUF files (mounted by :mod:`editloop.cli`)."""

from pathlib import Path
from typing import Annotated

import typer

from editloop.settings import load_settings


def export_model(
    hf_dir: Annotated[Path, typer.Argument(help="transformers checkpoint (llama or qwen2 architecture)")],
    adapter: Annotated[Path | None, typer.Option(help="PEFT LoRA adapter to merge before export")] = None,
    parent: Annotated[str | None, typer.Option(help="version this checkpoint derives from")] = None,
    activate: Annotated[bool, typer.Option(help="make the new version current")] = False,
) -> None:
    """Export an HF checkpoint to verified GGUF files and publish them as a new version."""
    from editloop.models.publish import publish_checkpoint

    version = publish_checkpoint(
        load_settings(), hf_dir, adapter_dir=adapter, parent=parent, activate=activate
    )
    typer.echo(version.name)


def synth_model(
    shape: Annotated[
        str, typer.Option(help="qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, deepseek-coder-1.3b or starcoder2-3b")
    ],
    layers: Annotated[
        int | None, typer.Option(min=1, help="keep real widths and vocabulary, this many layers (tests)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seeds the weights")] = 0,
    publish: Annotated[
        bool, typer.Option(help="export (f16, Q8_0, Q4_K_M), verify parity and register it as a version")
    ] = False,
    activate: Annotated[bool, typer.Option(help="with --publish: make it current")] = False,
) -> None:
    """A real model's shape with seeded random weights, to measure what serving and training it cost.

    Prints the checkpoint's directory, or with --publish the new version (marked synthetic).
    """
    from editloop.models.synth import publish_synthetic, synth_checkpoint, synth_dir
    from editloop.models.synth import shape as find_shape

    settings = load_settings()
    spec = find_shape(shape)
    n_layers = layers or spec.config["num_hidden_layers"]
    if publish:
        threads = settings.torch_threads or 2
        typer.echo(publish_synthetic(settings, shape, n_layers, seed, activate, threads).name)
        return
    typer.echo(synth_checkpoint(shape, synth_dir(settings, shape, n_layers, seed), n_layers, seed))
