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
