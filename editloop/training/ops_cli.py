"""Operator commands: ``editloop retrain``, ``editloop status``, ``editloop trainer``."""

import json
import logging
import signal
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from editloop.errors import EditloopError
from editloop.feedback import control
from editloop.settings import load_settings

log = logging.getLogger(__name__)


def retrain(
    wait: Annotated[bool, typer.Option(help="wait for the cycle to finish and print its outcome")] = False,
    force: Annotated[bool, typer.Option(help="publish even if the gate fails")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits at most")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Start a retrain cycle now (through the running trainer, or here when none runs).

    With --wait while a cycle is already running (the trainer started one on its own), wait for
    that cycle and report it.
    """
    from editloop.feedback.log import open_feedback
    from editloop.training.worker import Trainer

    settings = load_settings()
    with open_feedback(settings) as feedback:
        client = feedback.store.client
        running = control.running_cycle(client)
        if running is not None and wait:
            result = _attach(client, running, timeout)
        elif control.trainer_alive(client):
            request_id = control.request_retrain(client, force=force)
            if not wait:
                queued = {"request_id": request_id, "queued": True}
                _print({**queued, "after": running["cycle_id"]} if running else queued, as_json)
                return
            waited = control.wait_result(client, request_id, timeout)
            if waited is None:
                raise EditloopError(
                    f"no result for request {request_id} after {timeout:.0f} s; see `editloop status`"
                )
            result = waited
        elif running is not None:
            raise EditloopError(
                f"cycle {running['cycle_id']} is running ({running['stage']}) and no trainer takes "
                "requests; `editloop retrain --wait` waits for it"
            )
        else:  # no trainer process: run the cycle here, in the foreground
            state = Trainer.from_settings(settings, feedback.store).run_cycle(
                "operator", {"id": None, "force": force}
            )
            result = state.to_dict()
    _print(result, as_json)
    if result.get("status") in ("failed", "interrupted"):
        raise typer.Exit(1)


def _attach(client, running: dict, timeout: float) -> dict:
    """Wait for a cycle someone else started; its final state (or interrupted)."""
    trigger = (running.get("reports") or {}).get("trigger", "the trainer")
    typer.echo(
        f"cycle {running['cycle_id']} (started by {trigger}) is already running ({running['stage']}): "
        "waiting for it",
        err=True,
    )
    result = control.wait_cycle(client, running["cycle_id"], timeout)
    if result is None:
        raise EditloopError(
            f"cycle {running['cycle_id']} still running after {timeout:.0f} s; see `editloop status`"
        )
    return result


def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    limit: Annotated[int, typer.Option(help="past cycles to show")] = 10,
) -> None:
    """The serving model, the running retrain cycle and the last cycles with their gate reports."""
    from editloop.feedback.log import open_feedback
    from editloop.models.registry import Registry

    settings = load_settings()
    current = Registry(settings.models_dir).current_name()
    with open_feedback(settings, replay=False) as feedback:
        report = {"model": current, **control.cycle_status(feedback.store.client, limit)}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = Console()
    console.print(
        f"model: {current or 'none'}   trainer: {'alive' if report['trainer_alive'] else 'not running'}"
    )
    cycle = report["cycle"]
    if cycle and cycle.get("status") == "running":
        console.print(f"running: {cycle['cycle_id']} — {cycle['stage']} ({cycle['progress']:.0%})")
    elif cycle and cycle.get("status") == "interrupted":
        console.print(f"interrupted: {cycle['cycle_id']} — {cycle['message']}")
    _print_refusals(console, report["refused"])
    table = Table("cycle", "status", "parent", "version", "message")
    for cycle in report["history"]:
        table.add_row(
            cycle["cycle_id"],
            cycle["status"],
            cycle.get("parent") or "",
            cycle.get("version") or "",
            cycle["message"][:90],
        )
    console.print(table)


def _print_refusals(console: Console, refused: dict) -> None:
    """The refused streak, and each checkpoint the last refused cycle tried."""
    last = refused["last"]
    if not refused["streak"] or last is None:
        return
    runs = "cycle" if refused["streak"] == 1 else f"{refused['streak']} cycles in a row"
    console.print(f"refused: {runs}; the last ({last['cycle_id']}): {last['message']}")
    for point in last["tried"]:
        verdict = "passed" if point["passed"] else "refused"
        console.print(f"  tried {point['checkpoint']}: {verdict}, {point['summary']}")


def trainer() -> None:
    """Run the trainer: retrain cycles on new feedback, a schedule, or operator requests."""
    from editloop.feedback.log import open_feedback
    from editloop.training.worker import Trainer

    settings = load_settings()
    stop = threading.Event()
    # SIGTERM ends a running cycle too: a cycle is safe to kill at any stage (nothing half-made is
    # visible, its feedback is in the archive), and a server's sidecar must go when the server does.
    signal.signal(signal.SIGTERM, _exit)
    with open_feedback(settings) as feedback:
        log.info(
            "trainer: waiting for feedback (every %s new events) or `editloop retrain`",
            settings.retrain_min_events,
        )
        Trainer.from_settings(settings, feedback.store).serve_forever(stop)


def _exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{result.get('status', 'queued')}: {result.get('message', result)}")
    gate = (result.get("reports") or {}).get("gate")
    if gate:
        for metric, row in gate["feedback"].items():
            typer.echo(
                f"  {metric}: {row['current']} → {row['candidate']} "
                f"(Δ {row['delta']:+}, interval {row['low']:+}..{row['high']:+})"
            )
