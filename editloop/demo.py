"""``editloop demo``: the whole loop on real code, measured before and after each retrain.

1. the starter model (built if there is none) is served by a server started here;
2. a simulated developer types the *train* split of a real codebase through it (project
   ``demo``): that is the feedback;
3. a retrain cycle learns from it, is gated, published, and the server hot-swaps to it;
4. the *held-out* split (files the cycle never saw, project ``demo-eval`` so they never become
   training data) is typed again with the old and each new version: the before/after table and
   a PNG plot of acceptance rate, chars saved and abstain rate per version.

Everything is seeded; the command to reproduce it is printed with the results.
"""

import json
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from editloop.clients import bearer
from editloop.errors import BadRequestError
from editloop.eval.replay import ReplayConfig
from editloop.eval.replay_cli import load_tasks, run_replay
from editloop.settings import Settings

TRAIN_PROJECT = "demo"
EVAL_PROJECT = "demo-eval"
COLUMNS = (
    "chars_saved",
    "full_accept_rate",
    "partial_accept_rate",
    "exact_match",
    "abstain_rate",
    "shown",
    "latency_p50_ms",
)


def default_repo() -> Path:
    """The standard library's email package: real code the starter model never trained on."""
    return Path(sysconfig.get_paths()["stdlib"]) / "email"


@dataclass(frozen=True)
class DemoOptions:
    repo: Path
    cycles: int = 1
    seed: int = 0
    ratio: float = 0.7
    requests_per_file: int = 40
    files: str | None = "*.py"


def _replay(
    settings: Settings,
    url: str,
    tasks,
    seed: int,
    per_file: int,
    project: str,
    split: str,
    ranker: str | None = None,
) -> dict:
    config = ReplayConfig(seed=seed, max_requests_per_file=per_file)
    return run_replay(
        settings,
        tasks,
        config,
        split=split,
        project=project,
        server=url,
        token=_token(settings),
        ranker=ranker,
    )


def _rankers(state) -> list[str]:
    """The rankers a published version has: log-prob always, value when the cycle published one
    (the plain model, or the one reading hidden states that a ranker version may carry instead)."""
    value = state.reports.get("value") or {}
    hidden = state.reports.get("value_hidden") or {}
    return ["logprob", "value"] if value.get("published") or hidden.get("chosen") else ["logprob"]


def _token(settings: Settings) -> str | None:
    return settings.api_tokens[0] if settings.api_tokens else None


def _wait_for_version(url: str, version: str, token: str | None, timeout_s: float = 120) -> None:
    headers = bearer(token)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        served = httpx.get(f"{url}/health", headers=headers, timeout=10).json()["model"]["version"]
        if served == version:
            return
        time.sleep(0.5)
    raise BadRequestError(f"the server did not swap to {version} within {timeout_s:.0f} s")


def run_demo(settings: Settings, options: DemoOptions, console: Console) -> dict:
    from editloop.feedback.log import open_feedback
    from editloop.server.background import background_server, free_port
    from editloop.starter.bootstrap import ensure_starter_model
    from editloop.training.worker import Trainer

    ensure_starter_model(settings)
    train = load_tasks(options.repo, options.files, None, "train", options.ratio)
    heldout = load_tasks(options.repo, options.files, None, "heldout", options.ratio)
    local = settings.model_copy(
        update={
            "port": free_port(),
            "host": "127.0.0.1",
            "trainer": False,
            "retrain_projects": [TRAIN_PROJECT],
            "canary_share": 0.0,  # the demo measures each version offline: promote at once
        }
    )
    rows, cycles = [], []
    with background_server(local) as (url, _app):
        console.print(f"[bold]held-out replay[/] of {len(heldout)} files with the serving model")
        rows.append(
            _replay(local, url, heldout, options.seed, options.requests_per_file, EVAL_PROJECT, "heldout")
        )
        for k in range(1, options.cycles + 1):
            console.print(f"[bold]cycle {k}[/]: replaying {len(train)} train files (feedback)")
            _replay(local, url, train, options.seed + k, options.requests_per_file, TRAIN_PROJECT, "train")
            console.print(f"[bold]cycle {k}[/]: retraining (SFT, GRPO, value model, export, gate)")
            started = time.monotonic()
            with open_feedback(local) as feedback:
                state = Trainer.from_settings(local, feedback.store).run_cycle("demo")
            cycles.append({**state.to_dict(), "seconds": round(time.monotonic() - started, 1)})
            console.print(f"  {state.status}: {state.message}")
            if state.status != "published":
                break
            _wait_for_version(url, state.version or "", _token(local))
            for ranker in _rankers(state):  # the same version and files, ranked both ways
                console.print(f"[bold]held-out replay[/] with {state.version}, ranked by {ranker}")
                per_file = options.requests_per_file
                rows.append(
                    _replay(local, url, heldout, options.seed, per_file, EVAL_PROJECT, "heldout", ranker)
                )
    return {"repo": str(options.repo), "rows": rows, "cycles": cycles, "options": _options(options)}


def _options(options: DemoOptions) -> dict:
    return {
        "repo": str(options.repo),
        "cycles": options.cycles,
        "seed": options.seed,
        "ratio": options.ratio,
        "requests_per_file": options.requests_per_file,
        "files": options.files,
    }


def table(result: dict) -> Table:
    out = Table(title=f"held-out replay of {result['repo']} per model version and ranker")
    out.add_column("version")
    out.add_column("ranker")
    for column in COLUMNS:
        out.add_column(column, justify="right")
    for row in result["rows"]:
        out.add_row(row["model_version"], str(row.get("ranker")), *(str(row[c]) for c in COLUMNS))
    return out


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = [f"{r['model_version']}/{r.get('ranker')}" for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for metric in ("chars_saved", "full_accept_rate", "abstain_rate"):
        ax.plot(versions, [r[metric] for r in result["rows"]], marker="o", label=metric)
    ax.set_xlabel("model version")
    ax.set_ylabel("fraction")
    ax.set_title("held-out replay per model version")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reproduce_command(options: DemoOptions) -> str:
    return (
        f"editloop demo --repo {options.repo} --cycles {options.cycles} --seed {options.seed} "
        f"--ratio {options.ratio} --requests-per-file {options.requests_per_file}"
    )


def save(result: dict, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "demo.json"
    data.write_text(json.dumps(result, indent=2))
    return data, plot(result, directory / "demo.png")


def demo_command(
    repo: Annotated[
        Path | None, typer.Option(help="real code to replay (default: the stdlib email package)")
    ] = None,
    cycles: Annotated[int, typer.Option(min=1, max=10, help="retrain cycles")] = 1,
    seed: Annotated[int, typer.Option(help="seeds the replays and the cycles")] = 0,
    ratio: Annotated[float, typer.Option(help="fraction of files (by path hash) in the train split")] = 0.7,
    requests_per_file: Annotated[int, typer.Option(min=1, help="suggestions asked per file at most")] = 40,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show the loop on real code: replay, retrain, hot-swap, and held-out figures before and after."""
    from editloop.settings import load_settings

    repo = repo or default_repo()
    if not repo.is_dir():
        raise BadRequestError(f"--repo {repo} is not a directory")
    options = DemoOptions(repo, cycles, seed, ratio, requests_per_file)
    settings = load_settings()
    console = Console(stderr=True)
    result = run_demo(settings, options, console)
    data, png = save(result, settings.runs_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    result["reproduce"] = reproduce_command(options)
    if as_json:
        typer.echo(json.dumps({**result, "json": str(data), "plot": str(png)}, indent=2))
        return
    Console().print(table(result))
    for cycle in result["cycles"]:
        typer.echo(
            f"cycle {cycle['cycle_id']}: {cycle['status']} in {cycle['seconds']} s — {cycle['message']}"
        )
    typer.echo(f"plot: {png}\ndata: {data}\nreproduce: {result['reproduce']}")
