"""``editloop bootstrap-model``: train the starter model here (mounted by :mod:`editloop.cli`)."""

from pathlib import Path
from typing import Annotated

import typer

from editloop.errors import CorpusError, ModelError, OptionError
from editloop.settings import load_settings

SIZE_HELP = "tiny (≤30 s, for tests), small (≤20 min on 2 cores), base (hours)"


def bootstrap_model(
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            help="stdlib, jdk, rust-crates, or a directory, git repository, zip or file; repeatable"
        ),
    ] = None,
    size: Annotated[str, typer.Option(help=SIZE_HELP)] = "small",
    minutes: Annotated[float | None, typer.Option(help="training time budget (default per size)")] = None,
    steps: Annotated[int | None, typer.Option(help="exact step count; with --seed reproduces a run")] = None,
    line_steps: Annotated[
        int | None, typer.Option(help="steps of the closing line-completion phase (default per size)")
    ] = None,
    languages: Annotated[str, typer.Option(help="comma-separated: python, java, rust")] = "python",
    seed: Annotated[int, typer.Option()] = 0,
    exclude: Annotated[
        list[str] | None, typer.Option(help="glob of logical paths kept out of training")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="ignore a checkpoint left by an interrupted run")] = False,
    activate: Annotated[bool, typer.Option(help="make the new version current")] = True,
) -> None:
    """Train a starter code model from source on this machine and publish it as a new version."""
    from editloop.corpus import DEFAULT_EXCLUDE
    from editloop.starter.bootstrap import BootstrapOptions, bootstrap
    from editloop.starter.trainer import SIZES

    if size not in SIZES:
        raise CorpusError(f"unknown size {size!r}; choose tiny, small or base")
    _check_counts(steps=steps, line_steps=line_steps, minutes=minutes)
    options = BootstrapOptions(
        size=size,
        sources=tuple(corpus or ["stdlib"]),
        minutes=minutes,
        steps=steps,
        line_steps=line_steps,
        seed=seed,
        languages=tuple(x.strip() for x in languages.split(",") if x.strip()),
        exclude=tuple(exclude) if exclude is not None else DEFAULT_EXCLUDE,
        fresh=fresh,
        activate=activate,
    )
    version = bootstrap(load_settings(), options)
    typer.echo(version.name)


def _check_counts(steps: int | None, line_steps: int | None, minutes: float | None) -> None:
    if steps is not None and steps < 1:
        raise OptionError(f"--steps must be at least 1, not {steps}")
    if line_steps is not None and line_steps < 0:
        raise OptionError(f"--line-steps must be 0 (no line-completion phase) or more, not {line_steps}")
    if minutes is not None and minutes <= 0:
        raise OptionError(f"--minutes must be more than 0, not {minutes}")


def ship_model(
    version: Annotated[str, typer.Argument(help="the version to ship, such as v1, or 'current'")] = "current",
    to: Annotated[
        Path | None,
        typer.Option(help="folder to write (default for a starter: editloop/starter/shipped/SIZE)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="replace the folder if it exists")] = False,
) -> None:
    """Write a version's HF weights, tokenizer and Q8_0 GGUF with a manifest: what `editloop run` imports.

    The manifest holds the recipe that rebuilds the weights, the corpus digest, the version's
    figures and the sha256 of every file.
    """
    from editloop.models.registry import Registry
    from editloop.models.shipped import export_shipped
    from editloop.starter import SHIPPED_DIR
    from editloop.starter.bootstrap import corpus_digest

    checked = Registry(load_settings().models_dir).verify(version)
    data = checked.manifest.training_data
    size = (data.get("size") or {}).get("name")
    if to is None and size is None:
        raise ModelError(f"{checked.name} is not a starter model: say where to write it with --to")
    dest = to if to is not None else SHIPPED_DIR / str(size)
    digest = data.get("corpus_digest") or corpus_digest(data)
    manifest = export_shipped(checked, dest, corpus_digest=digest, replace=force)
    total = sum((dest / rel).stat().st_size for rel in manifest.files)
    typer.echo(f"shipped {checked.name} to {dest}: {len(manifest.files)} files, {total / 1e6:.1f} MB")
    if digest is None:
        typer.echo(
            "note: no corpus digest (the corpus read here differs from the one it trained on)", err=True
        )
