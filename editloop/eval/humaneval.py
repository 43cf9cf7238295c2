"""pass@1 on OpenAI's HumanEval infilling sets, the completions run as tests in the sandbox.

A task hides a span of a HumanEval solution; the model fills it from the text before and
after, and the task passes when ``prompt + completion + suffix + test + check(entry_point)``
runs cleanly in :mod:`editloop.sandbox`. Completions come through the serving
engine (the same prompt building, truncation and filtering a user gets) or a running server's
``/complete``; ``oracle`` scores the canonical spans and must pass every task, which proves the
harness runs the tests. Exact match and edit similarity to the canonical span come alongside.

>>> tasks = load_tasks("single-line", limit=50)
>>> report = humaneval_pass_at_1(EngineInfiller(engine), tasks, open_sandbox())  # doctest: +SKIP
>>> report.pass_at_1, report.item_scores()["humaneval_pass"][:3]  # doctest: +SKIP
"""

import gzip
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

import httpx

from editloop.completion.engine import CompletionEngine
from editloop.completion.types import CompletionRequest, Mode
from editloop.errors import BackendError, BadRequestError
from editloop.eval.engine import top_text
from editloop.metrics import edit_similarity, exact_match
from editloop.sandbox import ExecutionResult, Limits, Sandbox

SETS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
# How the engine cuts a completion for each set: the hidden span is one line, whole lines, or anything.
TASK_ID_MODES: dict[str, Mode] = {"SingleLineInfilling/": "line", "MultiLineInfilling/": "block"}
FIELDS = ("task_id", "entry_point", "prompt", "suffix", "canonical_solution", "test")
# HumanEval's own harness allows 3 s per task; a loaded 2-core machine needs more headroom.
TASK_LIMITS = Limits(wall_s=15, cpu_s=10, memory_bytes=1 << 30, processes=16, output_bytes=64 << 10)


@dataclass(frozen=True)
class InfillTask:
    task_id: str
    entry_point: str
    prompt: str
    suffix: str
    canonical_solution: str
    test: str

    @property
    def mode(self) -> Mode:
        """The engine's cut for this task's set, read from its id (``auto`` for a random span)."""
        return next((m for prefix, m in TASK_ID_MODES.items() if self.task_id.startswith(prefix)), "auto")

    def program(self, completion: str) -> str:
        """The file that runs: HumanEval infilling's own layout."""
        return f"{self.prompt}{completion}{self.suffix}\n{self.test}\n\ncheck({self.entry_point})\n"

    def fit(self, completion: str) -> str:
        """End the completion at a line break where the hidden span does.

        Line-level spans end with a newline and the suffix starts on the next line, but an
        engine ends a line completion before its newline, as an editor inserts it.
        """
        if self.canonical_solution.endswith("\n") and completion and not completion.endswith("\n"):
            return completion + "\n"
        return completion


def data_path(data: str) -> Path:
    """A set's short name (single-line, multi-line, random-span-light) or a .jsonl(.gz) path."""
    if data in SETS:
        return Path(str(resources.files("editloop.eval") / "data" / "human-eval-infilling" / SETS[data]))
    path = Path(data).expanduser()
    if not path.is_file():
        raise BadRequestError(
            f"--data {data}: no such file; name a set ({', '.join(SETS)}) or a .jsonl(.gz) file"
        )
    return path


def load_tasks(data: str, limit: int | None = None) -> list[InfillTask]:
    """The first ``limit`` tasks of a set (all when None), in file order."""
    if limit is not None and limit < 1:
        raise BadRequestError(f"--limit must be at least 1, got {limit}")
    path = data_path(data)
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    tasks.append(_task(json.loads(line), path, number))
                if limit is not None and len(tasks) >= limit:
                    break
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"--data {path}: not HumanEval infilling JSON lines ({exc})") from exc
    if not tasks:
        raise BadRequestError(f"--data {path}: no tasks in it")
    return tasks


def _task(record: object, path: Path, number: int) -> InfillTask:
    missing = [f for f in FIELDS if not isinstance(record, dict) or not isinstance(record.get(f), str)]
    if missing:
        raise BadRequestError(f"--data {path}: line {number} lacks the text field(s) {', '.join(missing)}")
    assert isinstance(record, dict)
    return InfillTask(**{f: record[f] for f in FIELDS})


class Infiller(Protocol):
    """Fills the hole between ``prefix`` and ``suffix`` with the text a user would be shown."""

    label: str

    def infill(self, prefix: str, suffix: str, mode: Mode) -> str: ...


@dataclass
class EngineInfiller:
    """The serving engine in-process: its prompt, truncation and filters; greedy, never abstaining."""

    engine: CompletionEngine
    max_tokens: int | None = None
    label: str = "engine"

    def infill(self, prefix: str, suffix: str, mode: Mode) -> str:
        request = CompletionRequest(
            prefix=prefix,
            suffix=suffix,
            language="python",
            mode=mode,
            n=1,
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        return top_text(self.engine.complete(request))


@dataclass
class ServerInfiller:
    """A running editloop server's ``/complete``: what its users get, abstentions included (as "")."""

    client: httpx.Client
    max_tokens: int | None = None
    label: str = "server"

    def infill(self, prefix: str, suffix: str, mode: Mode) -> str:
        body = {"prefix": prefix, "suffix": suffix, "language": "python", "mode": mode, "n": 1}
        body |= {"temperature": 0.0} | ({"max_tokens": self.max_tokens} if self.max_tokens else {})
        try:
            reply = self.client.post("/complete", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the server at {self.client.base_url}: {exc}") from exc
        if reply.status_code != 200:
            raise BackendError(f"/complete answered {reply.status_code}: {reply.text[:200]}")
        choices = reply.json().get("choices") or []
        return choices[0]["text"] if choices else ""


@dataclass
class OracleInfiller:
    """The canonical span itself: every task must pass, or the harness is broken."""

    answers: dict[tuple[str, str], str]
    label: str = "oracle"

    @classmethod
    def of(cls, tasks: list[InfillTask]) -> "OracleInfiller":
        return cls({(t.prompt, t.suffix): t.canonical_solution for t in tasks})

    def infill(self, prefix: str, suffix: str, mode: Mode) -> str:
        return self.answers[(prefix, suffix)]


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    completion: str
    passed: bool
    exact_match: bool
    edit_similarity: float
    timed_out: bool
    sandbox_error: str | None
    error: str  # the last line of stderr when it failed: why, at a glance


@dataclass
class HumanEvalReport:
    source: str
    tasks: int
    pass_at_1: float
    exact_match: float
    edit_similarity: float
    timed_out: int
    sandbox_errors: int
    results: list[TaskResult] = field(default_factory=list)

    def item_scores(self) -> dict[str, list[float]]:
        """Per-task scores in [0, 1], in task order: what a paired comparison of two models needs.

        A sandbox error is no verdict on the code, so such a task counts as failed for both models.
        """
        return {
            "humaneval_pass": [float(r.passed) for r in self.results],
            "humaneval_exact_match": [float(r.exact_match) for r in self.results],
            "humaneval_edit_similarity": [r.edit_similarity for r in self.results],
        }

    def summary(self) -> dict:
        keys = (
            "source",
            "tasks",
            "pass_at_1",
            "exact_match",
            "edit_similarity",
            "timed_out",
            "sandbox_errors",
        )
        return {k: getattr(self, k) for k in keys}


def humaneval_pass_at_1(
    infiller: Infiller | CompletionEngine,
    tasks: list[InfillTask],
    sandbox: Sandbox,
    *,
    mode: Mode | None = None,
    workers: int = 2,
    limits: Limits = TASK_LIMITS,
    progress: Callable[[TaskResult], None] | None = None,
) -> HumanEvalReport:
    """Complete every task (one at a time: one model), run each in the sandbox (``workers`` at once).

    ``mode`` overrides how the engine cuts completions; by default each task's set decides.
    """
    if isinstance(infiller, CompletionEngine):
        infiller = EngineInfiller(infiller)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures: list[Future[TaskResult]] = []
        for task in tasks:
            completion = task.fit(infiller.infill(task.prompt, task.suffix, mode or task.mode))
            future = pool.submit(run_task, task, completion, sandbox, limits)
            if progress is not None:
                future.add_done_callback(lambda f: progress(f.result()))
            futures.append(future)
        results = [f.result() for f in futures]
    return _report(infiller.label, results)


def run_task(task: InfillTask, completion: str, sandbox: Sandbox, limits: Limits = TASK_LIMITS) -> TaskResult:
    """Execute one filled-in program; compare the completion with the canonical span."""
    run = sandbox.run(
        ["python3", "program.py"], files={"program.py": task.program(completion)}, limits=limits
    )
    return TaskResult(
        task_id=task.task_id,
        completion=completion,
        passed=run.ok,
        exact_match=exact_match(completion, task.canonical_solution),
        edit_similarity=edit_similarity(completion, task.canonical_solution),
        timed_out=run.timed_out,
        sandbox_error=run.sandbox_error,
        error="" if run.ok else _why(run),
    )


def _why(run: ExecutionResult) -> str:
    if run.timed_out:
        return "timed out"
    if run.output_truncated:
        return "too much output"
    lines = (run.sandbox_error or run.stderr).strip().splitlines()
    return lines[-1][:200] if lines else f"exit {run.returncode}"


def _report(source: str, results: list[TaskResult]) -> HumanEvalReport:
    n = max(1, len(results))
    return HumanEvalReport(
        source=source,
        tasks=len(results),
        pass_at_1=round(sum(r.passed for r in results) / n, 4),
        exact_match=round(sum(r.exact_match for r in results) / n, 4),
        edit_similarity=round(sum(r.edit_similarity for r in results) / n, 4),
        timed_out=sum(r.timed_out for r in results),
        sandbox_errors=sum(r.sandbox_error is not None for r in results),
        results=results,
    )
