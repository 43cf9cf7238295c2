"""``editloop feedback``: look at the feedback log, export it, trim it, replay the spool.

editloop feedback stats [--json]
editloop feedback export [--since 2025-01-31 | --since 24h] [--project P] > events.jsonl
editloop feedback trim [--days 90]
editloop feedback replay
"""

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from editloop.errors import BadRequestError
from editloop.settings import load_settings

app = typer.Typer(no_args_is_help=True)
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or a duration back from now: 90m, 24h, 7d."""
    found = DURATION.match(text.strip())
    if found:
        return datetime.now(UTC) - timedelta(**{UNITS[found.group(2)]: float(found.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise BadRequestError(
            f"--since {text!r}: give an ISO date/time (2025-01-31T12:00) or 24h, 7d"
        ) from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _open():
    from editloop.feedback.log import open_feedback  # Redis, detect-secrets: only when used

    return open_feedback(load_settings(), replay=False)


def _print_stats(stats: dict) -> None:
    typer.echo(f"events by type: {json.dumps(stats['counts'], sort_keys=True)}")
    typer.echo(f"pending (delivered, not acked): {stats['pending']}")
    typer.echo(f"dead-lettered: {stats['dead_lettered']}")
    typer.echo(f"dropped (privacy): {json.dumps(stats['dropped'], sort_keys=True)}")
    typer.echo(f"spooled, waiting for Redis: {stats['spool_pending']}")
    for name, info in stats["projects"].items():
        groups = ", ".join(f"{g['name']}: {g['pending']} pending, lag {g['lag']}" for g in info["groups"])
        typer.echo(
            f"  {name}: {info['length']} in stream, {info['dead_lettered']} dead; {groups or 'no consumers'}"
        )


@app.command()
def stats(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Counts by type, pending and dead-lettered entries, privacy drops, spooled events."""
    with _open() as feedback:
        result = feedback.store.stats() | {"spool_pending": feedback.spool.pending()}
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        _print_stats(result)


@app.command()
def export(
    since: Annotated[str | None, typer.Option(help="ISO date/time or a duration back: 24h, 7d")] = None,
    project: Annotated[list[str] | None, typer.Option(help="only this project (repeatable)")] = None,
) -> None:
    """Every stored event as JSON lines on stdout, oldest first per project."""
    start = parse_since(since) if since else None
    with _open() as feedback:
        for name in project or feedback.store.projects():
            for stored in feedback.store.events(name, since=start):
                sys.stdout.write(stored.event.model_dump_json(exclude_none=True) + "\n")


@app.command()
def trim(
    days: Annotated[
        float | None, typer.Option(help="keep this many days (default: the retention setting)")
    ] = None,
) -> None:
    """Drop events older than the retention, never ones a consumer group has not acknowledged."""
    settings = load_settings()
    cutoff = datetime.now(UTC) - timedelta(days=days or settings.feedback_retention_days)
    with _open() as feedback:
        trimmed = feedback.store.trim(cutoff)
    typer.echo(json.dumps({"trimmed": trimmed, "before": cutoff.isoformat()}))


@app.command()
def replay() -> None:
    """Send spooled events (written while Redis was down) to Redis now."""
    with _open() as feedback:
        sent = feedback.replay()
    typer.echo(json.dumps({"replayed": sent}))
