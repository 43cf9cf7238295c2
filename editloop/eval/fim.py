"""Held-out general-code FIM: does a model still complete code it was never tuned on?

The forgetting check of the gate. Tasks are cut from held-out files (by default the starter
model's held-out split of the standard library) at a fixed seed, so two model versions are
scored on identical samples. Two kinds, as an editor sees them: the cursor after a line's
indentation with the rest of that line hidden (``single-line``), or with the rest of that
line and the next one to three lines hidden (``multi-line``). Completions go through the serving
engine; exact match and edit similarity are reported with the baselines "empty" and "repeat
the previous line".

>>> tasks = fim_tasks(heldout_files, n=200, seed=0)
>>> report = evaluate_fim(engine, tasks)  # doctest: +SKIP
>>> report.to_dict()["model"]["multi-line"]["edit_similarity"]  # doctest: +SKIP
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from editloop.completion.context.workspace import Workspace
from editloop.completion.engine import CompletionEngine
from editloop.completion.types import CompletionRequest, ResolvedMode
from editloop.corpus import SourceFile, load_corpus
from editloop.eval.engine import top_text
from editloop.metrics import edit_similarity, exact_match

Kind = Literal["single-line", "multi-line"]
KINDS: tuple[Kind, ...] = ("single-line", "multi-line")
MIN_TARGET_CHARS = 3
MULTI_LINES = (2, 4)  # hidden lines of a multi-line task, inclusive
MODES: dict[Kind, ResolvedMode] = {"single-line": "line", "multi-line": "block"}


@dataclass(frozen=True)
class FimTask:
    path: str
    language: str
    kind: Kind
    prefix: str
    suffix: str
    target: str
    previous_line: str


def heldout_files(training_data: dict, corpus: list[str] | None = None) -> list[SourceFile]:
    """The held-out split of ``corpus``, else of the corpus a version was trained on.

    The split hashes each path, so no held-out file was trained on whatever the training run's size
    cap; leaving the cap out here gives every version the same files to be scored on.
    """
    return load_corpus(
        corpus or training_data.get("sources", ["stdlib"]),
        set(training_data.get("languages", ["python"])),
        exclude=tuple(training_data.get("exclude", ())),
    ).heldout


def fim_tasks(
    files: list[SourceFile], n: int, seed: int = 0, kinds: tuple[Kind, ...] = KINDS
) -> list[FimTask]:
    """Up to ``n`` tasks of each kind; the same files and seed give the same tasks."""
    return fim_task_mix(files, dict.fromkeys(kinds, n), seed)


def fim_task_mix(files: list[SourceFile], counts: dict[Kind, int], seed: int = 0) -> list[FimTask]:
    """Up to ``counts[kind]`` tasks of each kind, cut from one scan of ``files``. A kind's tasks
    depend only on the files, the seed and its own count."""
    starts = [
        (f, i)
        for f in sorted(files, key=lambda f: f.path)
        for i, line in enumerate(f.text.split("\n"))
        if i > 0 and len(line.strip()) >= MIN_TARGET_CHARS
    ]
    tasks = []
    for number, kind in enumerate(KINDS):
        n = counts.get(kind, 0)
        if n <= 0 or not starts:
            continue
        rng = np.random.default_rng([seed, number])
        picks = sorted(rng.choice(len(starts), size=min(n, len(starts)), replace=False))
        spans = rng.integers(MULTI_LINES[0], MULTI_LINES[1] + 1, size=len(picks))
        for pick, span in zip(picks, spans, strict=True):
            file, index = starts[pick]
            tasks.append(_task(file, index, kind, 1 if kind == "single-line" else int(span)))
    return tasks


def _task(file: SourceFile, index: int, kind: Kind, span: int) -> FimTask:
    lines = file.text.split("\n")
    first = lines[index]
    indent = first[: len(first) - len(first.lstrip())]
    end = min(index + span, len(lines))
    hidden = [first[len(indent) :], *lines[index + 1 : end]]
    previous = next((p.strip() for p in reversed(lines[:index]) if p.strip()), "")
    return FimTask(
        path=file.path,
        language=file.language,
        kind=kind,
        prefix="\n".join([*lines[:index], indent]),
        suffix="".join("\n" + line for line in lines[end:]),
        target="\n".join(hidden),
        previous_line=previous,
    )


@dataclass
class FimReport:
    seed: int | None
    tasks: list[FimTask]
    predictions: dict[str, list[str]]  # source ("model", baselines) → one text per task
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # source → metric → per task
    sources: list[str] = field(default_factory=list)  # who proposed the model row's text, per task

    def __post_init__(self) -> None:
        for source, texts in self.predictions.items():
            self.scores[source] = {
                "exact_match": [
                    float(exact_match(p, t.target)) for p, t in zip(texts, self.tasks, strict=True)
                ],
                "edit_similarity": [
                    edit_similarity(p, t.target) for p, t in zip(texts, self.tasks, strict=True)
                ],
            }

    def item_scores(self) -> dict[str, list[float]]:
        """The model's per-task scores, one list per kind and metric: what a paired comparison needs."""
        out = {}
        for kind in KINDS:
            for metric, values in self.scores["model"].items():
                kept = [v for v, t in zip(values, self.tasks, strict=True) if t.kind == kind]
                if kept:
                    out[f"fim_{kind.replace('-', '_')}_{metric}"] = kept
        return out

    def to_dict(self) -> dict:
        """Mean of each metric per source and kind, with the task counts and the seed."""
        counts = {k: sum(t.kind == k for t in self.tasks) for k in KINDS}
        table: dict = {"seed": self.seed, "tasks": {k: c for k, c in counts.items() if c}}
        if self.sources:
            table["top_from_codebase"] = sum(s == "codebase" for s in self.sources)
        for source, metrics in self.scores.items():
            table[source] = {
                kind: {
                    metric: round(
                        float(
                            np.mean([v for v, t in zip(values, self.tasks, strict=True) if t.kind == kind])
                        ),
                        4,
                    )
                    for metric, values in metrics.items()
                }
                for kind in KINDS
                if counts[kind]
            }
        return table


def evaluate_fim(
    engine: CompletionEngine,
    tasks: list[FimTask],
    seed: int | None = None,
    progress: Callable[[], None] | None = None,
    workspace: Workspace | None = None,
) -> FimReport:
    """The engine's greedy top completion for every task, scored with both baselines.

    With ``workspace`` (``--context repo``) each prompt carries the context of the task's other
    files and codebase continuations compete with the model's; the task's own file is never used.
    """
    predictions, sources = [], []
    for task in tasks:
        text, source = complete_task(engine, task, workspace)
        predictions.append(text)
        sources.append(source)
        if progress is not None:
            progress()
    return FimReport(
        seed=seed,
        sources=sources,
        tasks=tasks,
        predictions={
            "model": predictions,
            "repeat_previous_line": [t.previous_line for t in tasks],
            "empty": ["" for _ in tasks],
        },
    )


def complete_task(
    engine: CompletionEngine, task: FimTask, workspace: Workspace | None = None
) -> tuple[str, str]:
    """The scored text, and who proposed it ("model" or "codebase")."""
    request = CompletionRequest(
        prefix=task.prefix,
        suffix=task.suffix,
        language=task.language,
        filepath=task.path,
        mode=MODES[task.kind],
        n=1,
        temperature=0.0,
    )
    result = engine.complete(request, None, workspace)
    text = top_text(result)
    source = next((c.source for c in result.choices if c.text == text), "model")
    return text, source
