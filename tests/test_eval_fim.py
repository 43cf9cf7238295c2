"""Held-out FIM through the engine: fixed tasks for a seed, identical scores run after run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from editloop.corpus import load_corpus
from editloop.eval.engine import engine_for
from editloop.eval.fim import FimReport, evaluate_fim, fim_task_mix, fim_tasks
from editloop.models.llama import LlamaBackend


def editloop(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDITLOOP_HOME": str(home)}
    command = [sys.executable, "-m", "editloop", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def heldout():
    return load_corpus(["stdlib"], {"python"}).heldout


def test_tasks_are_a_function_of_files_and_seed(heldout) -> None:
    first, again = fim_tasks(heldout, 30, seed=1), fim_tasks(list(reversed(heldout)), 30, seed=1)
    assert first == again
    assert fim_tasks(heldout, 30, seed=2) != first
    assert [t.kind for t in first].count("single-line") == 30 and len(first) == 60
    texts = {f.path: f.text for f in heldout}
    for task in first:
        assert task.prefix + task.target + task.suffix == texts[task.path]
        lines = task.target.count("\n") + 1
        assert lines == 1 if task.kind == "single-line" else 2 <= lines <= 4


def test_a_mix_of_kinds_is_the_per_kind_tasks_from_one_scan(heldout) -> None:
    mix = fim_task_mix(heldout, {"single-line": 7, "multi-line": 3}, seed=4)
    single = fim_tasks(heldout, 7, seed=4, kinds=("single-line",))
    multi = fim_tasks(heldout, 3, seed=4, kinds=("multi-line",))
    assert mix == single + multi and len(mix) == 10
    assert fim_task_mix(heldout, {"multi-line": 0}, seed=4) == []


def test_scores_are_deterministic_and_baselines_reported(tiny_version, heldout) -> None:
    tasks = fim_tasks(heldout, 6, seed=0)
    backend = LlamaBackend.from_version(tiny_version, max_candidates=1)
    try:
        engine = engine_for(backend)
        first, second = evaluate_fim(engine, tasks, seed=0), evaluate_fim(engine, tasks, seed=0)
    finally:
        backend.close()
    assert first.predictions == second.predictions and first.to_dict() == second.to_dict()
    table = first.to_dict()
    assert table["tasks"] == {"single-line": 6, "multi-line": 6}
    assert table["empty"]["single-line"] == {"exact_match": 0.0, "edit_similarity": 0.0}
    assert set(first.item_scores()) == {
        f"fim_{k}_{m}" for k in ("single_line", "multi_line") for m in ("exact_match", "edit_similarity")
    }
    assert all(len(v) == 6 for v in first.item_scores().values())


def test_scoring_counts_right_and_wrong() -> None:
    from editloop.eval.fim import FimTask

    task = FimTask("a.py", "python", "multi-line", "def f():\n    ", "\n", "x = 1\n    return x", "def f():")
    report = FimReport(None, [task] * 3, {"model": ["x = 1  \n    return x\n\n", "x = 2\n    return x", ""]})
    assert report.scores["model"]["exact_match"] == [1.0, 0.0, 0.0]
    similarity = report.scores["model"]["edit_similarity"]
    assert similarity[0] == 1.0 and 0.8 < similarity[1] < 1.0 and similarity[2] == 0.0


def test_cli_same_seed_same_report(tiny_settings, tiny_version) -> None:
    args = ("eval", "fim", "--tasks", "5", "--seed", "3", "--json")
    first, second = (editloop(*args, home=tiny_settings.home) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["version"] == tiny_version.name and report["seed"] == 3
    assert set(report) >= {"model", "repeat_previous_line", "empty"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--corpus", "/nonexistent/code"], "does not exist"), (["--tasks", "0"], "--tasks must be at least 1")],
)
def test_cli_bad_input(tiny_settings, tiny_version, args: list[str], needle: str) -> None:
    done = editloop("eval", "fim", *args, home=tiny_settings.home)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
