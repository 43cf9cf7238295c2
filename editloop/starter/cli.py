"""``editloop bootstrap-model``: train the starter model here (mounted by :mod:`editloop.cli`)."""

from typing import Annotated

import typer

from editloop.errors import CorpusError, OptionError
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
