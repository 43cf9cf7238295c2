"""The ``editloop`` command line: one typer app, sub-apps per stage of the loop.

Every deliberate failure is an :class:`EditloopError`; ``main`` turns it into one line on
stderr and exit status 1, so scripts and people both get a clear answer.
"""

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from editloop.demo import demo_command
from editloop.doctor import doctor_command
from editloop.errors import EditloopError
from editloop.eval.cli import app as eval_app
from editloop.eval.cli import eval_lines
from editloop.eval.replay_cli import replay_command
from editloop.feedback.canary_cli import app as canary_app
from editloop.feedback.cli import app as feedback_app
from editloop.models.cli import export_model, synth_model
from editloop.models.registry_cli import app as models_app
from editloop.settings import Settings, load_settings
from editloop.starter.cli import bootstrap_model, ship_model
from editloop.training.cli import train
from editloop.training.ops_cli import retrain, status, trainer

app = typer.Typer(
    help="editloop: code completions that get better from your team's edits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("bootstrap-model")(bootstrap_model)
app.command("eval-lines")(eval_lines)
app.command("train")(train)
app.command("retrain")(retrain)
app.command("status")(status)
app.command("trainer")(trainer)
app.command("replay")(replay_command)
app.command("demo")(demo_command)
app.command("doctor")(doctor_command)
app.add_typer(eval_app, name="eval", help="Measure a model: HumanEval infilling, held-out FIM and lines.")
models_app.command("export")(export_model)
models_app.command("ship")(ship_model)
models_app.command("synth")(synth_model)
app.add_typer(models_app, name="models", help="List, inspect, activate, roll back and import model versions.")
app.add_typer(canary_app, name="canary", help="A new version on trial: status, promote, abort.")
app.add_typer(feedback_app, name="feedback", help="The feedback log: stats, export (JSONL), trim, replay.")


def _serve_settings(host: str | None, port: int | None) -> Settings:
    return load_settings(**{k: v for k, v in {"host": host, "port": port}.items() if v is not None})


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="bind address (default EDITLOOP_HOST or 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (default EDITLOOP_PORT or 8765)")] = None,
) -> None:
    """Serve completions over HTTP: /complete, /infill, /v1/completions, /tabby, /admin, /metrics."""
    from editloop.server.main import serve as run_server

    run_server(_serve_settings(host, port))


@app.command()
def run(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
) -> None:
    """Build the starter model if no model is active, then serve it."""
    from editloop.server.main import serve as run_server
    from editloop.starter.bootstrap import ensure_starter_model

    settings = _serve_settings(host, port)
    version = ensure_starter_model(settings)
    typer.echo(f"active model: {version.name} ({version.gguf_path()})", err=True)
    if settings.trainer:
        typer.echo("the trainer runs beside the server: `editloop status`, `editloop retrain`", err=True)
    run_server(settings, on_ready=lambda url: typer.echo(next_steps(url, version.name, settings), err=True))


def next_steps(url: str, version: str, settings: Settings) -> str:
    """What `editloop run` prints once it answers: where things are and what to do first."""
    editloop = Path(sys.executable).parent / "editloop"
    command = str(editloop) if editloop.is_file() else "editloop"
    token = " --token YOUR_TOKEN" if settings.api_tokens else ""
    home = f"EDITLOOP_HOME={settings.home} " if "EDITLOOP_HOME" in os.environ else ""
    return (
        f"\neditloop is serving model {version} at {url}\n"
        f"  API        POST {url}/complete  (also /infill, /v1/completions, /tabby; GET /health, /metrics)\n"
        f"  dashboard  {url}/dashboard\n"
        "next:\n"
        "  1. connect an editor (README.md, Editors: Neovim, VS Code, Emacs, Helix); its language server is\n"
        f"       {command} lsp --server {url}{token}\n"
        f"  2. open the dashboard: {url}/dashboard\n"
        "  3. watch the loop learn: in another shell run\n"
        f"       {home}{command} demo\n"
        "     it replays real code through a server of its own, retrains on it and activates the\n"
        "     result; this server swaps to the new version\n"
        "Ctrl-C stops the server.\n"
    )


@app.command()
def lsp(
    tcp: Annotated[str | None, typer.Option(help="listen on HOST:PORT instead of stdio")] = None,
    server: Annotated[
        str | None, typer.Option(help="complete through this editloop server (default: in-process model)")
    ] = None,
    token: Annotated[str | None, typer.Option(help="bearer token for --server")] = None,
) -> None:
    """Language server: inline completions, a completion fallback, and edit tracking for feedback."""
    from editloop.lsp.server import parse_tcp
    from editloop.lsp.server import serve as serve_lsp

    serve_lsp(load_settings(), server_url=server, token=token, tcp=parse_tcp(tcp) if tcp else None)


def main() -> None:
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("editloop").setLevel(logging.INFO)
    hf_logging.disable_progress_bar()
    try:
        app()
    except EditloopError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
