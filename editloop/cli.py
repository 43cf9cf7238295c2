"""The ``editloop`` command line: one typer app, sub-apps per stage of the loop.

Every deliberate failure is an :class:`EditloopError`; ``main`` turns it into one line on
stderr and exit status 1, so scripts and people both get a clear answer.
"""

import logging
import sys

import typer

from editloop.errors import EditloopError
from editloop.models.cli import bootstrap_model, eval_lines, export_model
from editloop.models.registry_cli import app as models_app
from editloop.settings import load_settings

app = typer.Typer(
    help="editloop: code completions that get better from your team's edits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("bootstrap-model")(bootstrap_model)
app.command("eval-lines")(eval_lines)
models_app.command("export")(export_model)
app.add_typer(models_app, name="models", help="List, inspect, activate, roll back and import model versions.")


@app.command()
def run() -> None:
    """Make sure a model is active, then serve (the server arrives with the next stage)."""
    from editloop.models.bootstrap import ensure_starter_model

    settings = load_settings()
    version = ensure_starter_model(settings)
    typer.echo(f"active model: {version.name} ({version.gguf_path()})")
    typer.echo("serving is not implemented yet: `editloop serve` arrives with the completion server issue.")


def main() -> None:
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hf_logging.disable_progress_bar()
    try:
        app()
    except EditloopError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
