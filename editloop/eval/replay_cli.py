"""``editloop replay``: a simulated developer types real code through the real editor paths."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from editloop.clients import bearer
from editloop.errors import BackendError, BadRequestError
from editloop.eval.replay import ReplayConfig, ReplayStats, replay, report_dict
from editloop.eval.replay_http import HttpEditor, run_key
from editloop.eval.replay_tasks import Split, TypingTask, commit_tasks, file_tasks
from editloop.settings import Settings, load_settings

VIAS: dict[str, Literal["http", "lsp"]] = {"http": "http", "lsp": "lsp"}
SPLITS: dict[str, Split] = {"train": "train", "heldout": "heldout", "all": "all"}


def load_tasks(
    path: Path, files: str | None, commits: str | None, split: Split, ratio: float
) -> list[TypingTask]:
    if not path.exists():
        raise BadRequestError(f"{path} does not exist")
    if not 0 < ratio < 1:
        raise BadRequestError(f"--ratio must be between 0 and 1, got {ratio}")
    root = path.resolve()
    tasks = (
        commit_tasks(root, commits, files, split, ratio) if commits else file_tasks(root, files, split, ratio)
    )
    if not tasks:
        raise BadRequestError(f"nothing to replay under {path} (split {split}, files {files or 'all'})")
    return tasks


@contextmanager
def server_client(settings: Settings, server: str | None, token: str | None) -> Iterator[httpx.Client]:
    """A client of ``server``, or of a server started here on a free port over ``settings``."""
    headers = bearer(token)
    if server:
        with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=60) as client:
            yield client
        return
    from editloop.server.background import background_server, free_port

    local = settings.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
    with background_server(local) as (url, _app):
        token = local.api_tokens[0] if local.api_tokens else None
        auth = bearer(token)
        with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
            yield client


def model_version_of(client: httpx.Client) -> str:
    try:
        health = client.get("/health").json()
    except httpx.HTTPError as exc:
        raise BackendError(f"cannot reach the server at {client.base_url}: {exc}") from exc
    version = (health.get("model") or {}).get("version")
    if not version:
        raise BackendError(f"the server at {client.base_url} serves no model")
    return version


def run_replay(
    settings: Settings,
    tasks: list[TypingTask],
    config: ReplayConfig,
    *,
    via: Literal["http", "lsp"] = "http",
    split: str = "all",
    project: str = "default",
    server: str | None = None,
    token: str | None = None,
    root: str = "",
    console: Console | None = None,
    ranker: str | None = None,
    context: Literal["none", "repo"] = "none",
) -> dict:
    """Replay ``tasks`` through ``via``; the report :func:`report_dict` builds.

    ``ranker`` ("value" or "logprob") ranks every suggestion that way: over HTTP each request asks
    for it; over the LSP the replay's own server ranks that way (so it needs no ``server``).
    ``context="repo"`` lets the server read the replayed ``root`` (its other files, never the one
    being typed) over HTTP, and has the LSP index its workspace folder; "none" sends no context.
    """
    if context == "repo" and not root:
        raise BadRequestError("--context repo needs the replayed directory")
    if context == "repo" and not server:
        settings = settings.model_copy(update={"context_roots": [Path(root)], "lsp_context": True})
    elif context == "none":
        settings = settings.model_copy(update={"lsp_context": False})
    if ranker is not None and via == "lsp":
        if server:
            raise BadRequestError("--ranker with --via lsp needs the replay's own server: omit --server")
        settings = settings.model_copy(update={"ranker": ranker})
    with server_client(settings, server, token) as client:
        version = model_version_of(client)
        key = run_key(config.seed, version, split, root, ranker, context)
        if via == "lsp":
            from editloop.eval.replay_lsp import lsp_editor

            with lsp_editor(client, settings, key, project, root if context == "repo" else None) as editor:
                stats = _with_progress(tasks, editor, config, console)
        else:
            http = HttpEditor(
                client,
                key,
                project=project,
                candidates=settings.lsp_candidates,
                ranker=ranker,
                project_root=root if context == "repo" else None,
            )
            stats = _with_progress(tasks, http, config, console)
    return {**report_dict(stats, config, via, split), "context": context}


def _with_progress(tasks, editor, config: ReplayConfig, console: Console | None) -> ReplayStats:
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as bar:
        job = bar.add_task("files", total=len(tasks))
        return replay(tasks, editor, config, progress=lambda done, _t: bar.update(job, completed=done))


def replay_command(
    path: Annotated[Path, typer.Argument(help="a directory, git repository or file of real code")],
    files: Annotated[str | None, typer.Option(help="only paths matching this glob, e.g. '*.py'")] = None,
    commits: Annotated[str | None, typer.Option(help="git range: type each commit's added lines")] = None,
    via: Annotated[str, typer.Option(help="editor path: http or lsp")] = "http",
    server: Annotated[str | None, typer.Option(help="a running server (default: start one here)")] = None,
    token: Annotated[str | None, typer.Option(help="bearer token for --server")] = None,
    split: Annotated[str, typer.Option(help="train, heldout or all")] = "all",
    ratio: Annotated[float, typer.Option(help="fraction of files (by path hash) in train")] = 0.7,
    seed: Annotated[int, typer.Option(help="seeds the developer's pauses")] = 0,
    project: Annotated[str, typer.Option(help="feedback project the events go to")] = "default",
    partial: Annotated[bool, typer.Option(help="take the correct whole tokens of a wrong suggestion")] = True,
    ranker: Annotated[
        str | None, typer.Option(help="rank with logprob or value (an A/B on the same version and files)")
    ] = None,
    context: Annotated[
        str, typer.Option(help="none, or repo: context and copies from the replayed directory's other files")
    ] = "none",
    max_requests: Annotated[int | None, typer.Option(help="stop asking after this many requests")] = None,
    max_requests_per_file: Annotated[
        int | None, typer.Option(help="ask at most this often per file (a sampled replay)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Type real code like a developer through the LSP or HTTP path; report what completions saved."""
    editor_path = VIAS.get(via)
    if editor_path is None:
        raise BadRequestError(f"--via must be http or lsp, not {via!r}")
    if ranker not in (None, "logprob", "value"):
        raise BadRequestError(f"--ranker must be logprob or value, not {ranker!r}")
    if context not in ("none", "repo"):
        raise BadRequestError(f"--context must be none or repo, not {context!r}")
    which = SPLITS.get(split)
    if which is None:
        raise BadRequestError(f"--split must be train, heldout or all, not {split!r}")
    tasks = load_tasks(path, files, commits, which, ratio)
    config = ReplayConfig(
        seed=seed,
        partial_accept=partial,
        max_requests=max_requests,
        max_requests_per_file=max_requests_per_file,
    )
    report = run_replay(
        load_settings(),
        tasks,
        config,
        via=editor_path,
        split=split,
        project=project,
        server=server,
        token=token,
        root=str(path.resolve() if path.is_dir() else path.resolve().parent),
        ranker=ranker,
        context="repo" if context == "repo" else "none",
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        Console().print(_table(report))


def _table(report: dict) -> Table:
    table = Table(title=f"replay via {report['via']} ({report['split']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if key not in ("config", "via", "split"):
            table.add_row(key, str(value))
    return table
