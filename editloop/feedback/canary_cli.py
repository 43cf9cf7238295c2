"""``editloop canary status|promote|abort``: watch and decide a version on trial (mounted by cli)."""

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from editloop.settings import load_settings

app = typer.Typer(no_args_is_help=True)
JSON = Annotated[bool, typer.Option("--json", help="print JSON")]


@app.command("status")
def status_command(as_json: JSON = False) -> None:
    """The canary: the arm map, both arms' live figures, what the rule says now, past decisions."""
    from editloop.feedback.canary import rule_from, status
    from editloop.feedback.log import open_feedback
    from editloop.models.registry import Registry

    settings = load_settings()
    with open_feedback(settings, replay=False) as feedback:
        report = status(Registry(settings.models_dir), feedback.store, rule_from(settings))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print(report)


@app.command("promote")
def promote(as_json: JSON = False) -> None:
    """Make the canary current now (its baseline stays one rollback away)."""
    _decide("promote", as_json)


@app.command("abort")
def abort(as_json: JSON = False) -> None:
    """Stop the canary: the current version serves every request again."""
    _decide("abort", as_json)


def _decide(action, as_json: bool) -> None:
    from editloop.feedback.canary import decide_now
    from editloop.feedback.log import open_feedback
    from editloop.models.registry import Registry

    settings = load_settings()
    with open_feedback(settings, replay=False) as feedback:
        decided = decide_now(Registry(settings.models_dir), feedback.store, action)
    if as_json:
        typer.echo(decided.model_dump_json(indent=2))
    else:
        typer.echo(f"canary {decided.version}: {decided.status} ({decided.reason})")


def _print(report: dict) -> None:
    console = Console()
    canary = report["canary"]
    if canary is None:
        console.print("no canary has run")
        return
    state = "running" if report["running"] else canary["status"]
    console.print(
        f"canary {canary['version']} beside {canary['baseline']} on {canary['share']:.0%}: {state}"
        + (f" — {canary['reason']}" if canary.get("reason") else "")
    )
    if "arms" in report:
        table = Table("arm", "version", "seen", "full accepts", "full-accept rate", "abstain rate", "p95 ms")
        for arm, figures in report["arms"].items():
            table.add_row(
                arm,
                figures["version"],
                str(figures["seen"]),
                str(figures["full_accepted"]),
                str(figures.get("full_accept_rate")),
                str(figures.get("abstain_rate")),
                str((figures.get("latency_ms") or {}).get("p95")),
            )
        console.print(table)
        console.print(f"rule: {report['decision']['action']} — {report['decision']['reason']}")
