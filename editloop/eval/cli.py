"""``editloop eval …``: measure a model on HumanEval infilling, held-out FIM and held-out lines."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, get_args

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from editloop.clients import bearer
from editloop.completion.types import Mode
from editloop.errors import BackendError, BadRequestError
from editloop.eval.fim import KINDS
from editloop.settings import load_settings

app = typer.Typer(
    help="Measure a model: HumanEval infilling pass@1, held-out FIM, held-out lines.",
    no_args_is_help=True,
)

DATA_HELP = (
    "single-line, multi-line, random-span-light (bundled HumanEval infilling sets) or a .jsonl(.gz) path"
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _at_least_one(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise BadRequestError(f"{name} must be at least 1, got {value}")


@app.command("humaneval-infill")
def humaneval_infill(
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "single-line",
    limit: Annotated[int | None, typer.Option(help="only the first N tasks")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    oracle: Annotated[bool, typer.Option(help="score the canonical solutions (must be 100%)")] = False,
    server: Annotated[str | None, typer.Option(help="a running editloop server's URL")] = None,
    token: Annotated[str | None, typer.Option(help="bearer token for --server")] = None,
    version: Annotated[str, typer.Option(help="model version when no --server")] = "current",
    mode: Annotated[
        str | None, typer.Option(help="line, block or auto (default: by set: line, block, auto)")
    ] = None,
    workers: Annotated[int, typer.Option(help="tasks executed at once")] = 2,
    unsafe_no_sandbox: Annotated[
        bool, typer.Option(help="run the tests without bubblewrap: trusted data only")
    ] = False,
) -> None:
    """pass@1, exact match and edit similarity on HumanEval infilling, tests run in the sandbox."""
    from editloop.eval.humaneval import humaneval_pass_at_1, load_tasks
    from editloop.sandbox import open_sandbox

    _at_least_one("--limit", limit)
    _at_least_one("--workers", workers)
    modes: dict[str, Mode] = {m: m for m in get_args(Mode)}
    if mode is not None and mode not in modes:
        raise BadRequestError(f"--mode must be line, block or auto, got {mode!r}")
    tasks = load_tasks(data, limit)
    sandbox = open_sandbox(unsafe_no_sandbox)
    with _infiller(oracle, server, token, version, tasks) as (infiller, model_version), _progress() as bar:
        job = bar.add_task(f"humaneval {data}", total=len(tasks))
        report = humaneval_pass_at_1(
            infiller,
            tasks,
            sandbox,
            mode=modes[mode] if mode is not None else None,
            workers=workers,
            progress=lambda _: bar.advance(job),
        )
    summary = {"data": data, "version": model_version, "mode": mode or "by set", **report.summary()}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    passed = sum(r.passed for r in report.results)
    typer.echo(
        f"{data} ({summary['source']}, {model_version}): pass@1 {report.pass_at_1:.4f} "
        f"({passed}/{report.tasks}), exact match {report.exact_match:.4f}, "
        f"edit similarity {report.edit_similarity:.4f}, timed out {report.timed_out}, "
        f"sandbox errors {report.sandbox_errors}"
    )


@contextmanager
def _infiller(
    oracle: bool, server: str | None, token: str | None, version: str, tasks: list
) -> Iterator[tuple]:
    """Where completions come from, and the model version that gives them."""
    from editloop.eval.engine import open_engine
    from editloop.eval.humaneval import EngineInfiller, OracleInfiller, ServerInfiller

    if oracle:
        yield OracleInfiller.of(tasks), "canonical"
    elif server:
        headers = bearer(token)
        with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=60) as client:
            yield ServerInfiller(client), _server_version(client)
    else:
        with open_engine(load_settings(), version) as engine:
            yield EngineInfiller(engine), engine.models.version


def _server_version(client: httpx.Client) -> str | None:
    try:
        health = client.get("/health")
    except httpx.HTTPError as exc:
        raise BackendError(f"cannot reach the server at {client.base_url}: {exc}") from exc
    if health.status_code != 200:
        raise BackendError(f"{client.base_url}/health answered {health.status_code}")
    return (health.json().get("model") or {}).get("version")


@app.command("fim")
def fim(
    version: Annotated[str, typer.Argument(help="version name or 'current'")] = "current",
    corpus: Annotated[
        list[str] | None,
        typer.Option(help="held-out split of this corpus (default: the version's own training corpus)"),
    ] = None,
    tasks: Annotated[int, typer.Option(help="tasks of each kind")] = 200,
    kinds: Annotated[
        str, typer.Option(help="comma-separated: single-line, multi-line")
    ] = "single-line,multi-line",
    seed: Annotated[int, typer.Option(help="same seed, same tasks: compare versions on it")] = 0,
    quant: Annotated[
        str | None, typer.Option(help="GGUF quantization to run (default: the served one)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    context: Annotated[
        str, typer.Option(help="none, or repo: each prompt gets context from the corpus's other files")
    ] = "none",
) -> None:
    """Held-out FIM through the serving engine: the model against "empty" and "repeat previous line"."""
    from editloop.eval.engine import open_engine
    from editloop.eval.fim import evaluate_fim, fim_tasks, heldout_files
    from editloop.models.registry import Registry

    _at_least_one("--tasks", tasks)
    chosen_kinds = _kinds(kinds)
    settings = load_settings()
    if quant is not None:
        settings = settings.model_copy(update={"model_quant": quant})
    model = Registry(settings.models_dir).verify(version)
    chosen = fim_tasks(heldout_files(model.manifest.training_data, corpus), tasks, seed, chosen_kinds)
    if not chosen:
        raise BadRequestError("no held-out lines to make tasks from; pass a larger --corpus")
    workspace = _context_workspace(context, model.manifest.training_data, corpus)
    with open_engine(settings, model.name) as engine, _progress() as bar:
        job = bar.add_task(f"fim {model.name}", total=len(chosen))
        report = evaluate_fim(engine, chosen, seed, progress=lambda: bar.advance(job), workspace=workspace)
    result = {"version": model.name, "context": context, **report.to_dict()}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table("source", "kind", "exact match", "edit similarity", title=f"held-out FIM, {model.name}")
    for source in ("model", "repeat_previous_line", "empty"):
        for kind, metrics in result[source].items():
            table.add_row(source, kind, f"{metrics['exact_match']:.4f}", f"{metrics['edit_similarity']:.4f}")
    Console().print(table)


def _context_workspace(context: str, training_data: dict, corpus: list[str] | None):
    """None for ``--context none``; for ``repo``, the whole corpus (train and held-out) in memory."""
    if context not in ("none", "repo"):
        raise BadRequestError(f"--context must be none or repo, not {context!r}")
    if context == "none":
        return None
    from editloop.completion.context.workspace import Workspace
    from editloop.corpus import load_corpus

    sources = corpus or training_data.get("sources", ["stdlib"])
    files = load_corpus(sources, set(training_data.get("languages", ["python"])))
    return Workspace.in_memory([(f.path, f.text) for f in files.train + files.heldout], "eval")


def _kinds(text: str) -> tuple:
    chosen = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise BadRequestError(f"--kinds takes {', '.join(KINDS)}; got {text!r}")
    return chosen


def eval_lines(
    version: Annotated[str, typer.Argument(help="version name or 'current'")] = "current",
    tasks: Annotated[int, typer.Option(help="number of held-out lines")] = 300,
    corpus: Annotated[list[str] | None, typer.Option(help="corpus the version was trained on")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    quant: Annotated[str | None, typer.Option(help="GGUF quantization to run")] = None,
) -> None:
    """`eval fim --kinds single-line --json` (an alias kept for scripts)."""
    fim(version, corpus, tasks, "single-line", seed, quant, as_json=True)


app.command("lines", hidden=True)(eval_lines)
