"""HumanEval infilling through the real sandbox: the harness passes right code, fails wrong code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from editloop.eval.engine import engine_for
from editloop.eval.humaneval import (
    SETS,
    EngineInfiller,
    OracleInfiller,
    ServerInfiller,
    humaneval_pass_at_1,
    load_tasks,
    run_task,
)
from editloop.models.llama import LlamaBackend
from editloop.sandbox import Limits, open_sandbox
from tests.server_fixtures import auth, client, copy_home, running_server

SIZES = {"single-line": 1033, "multi-line": 5815, "random-span-light": 164}


def editloop(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDITLOOP_HOME": str(home)}
    command = [sys.executable, "-m", "editloop", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def one_error_line(result: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]


@pytest.fixture(scope="module")
def sandbox():
    return open_sandbox()


def test_bundled_sets_load_from_package_data() -> None:
    for name, size in SIZES.items():
        tasks = load_tasks(name)
        assert len(tasks) == size and len({t.task_id for t in tasks}) == size
    assert load_tasks("multi-line", limit=7)[-1].task_id == load_tasks("multi-line")[6].task_id
    modes = {name: load_tasks(name, limit=1)[0].mode for name in SETS}
    assert modes == {"single-line": "line", "multi-line": "block", "random-span-light": "auto"}


@pytest.mark.parametrize("name", list(SETS))
def test_oracle_passes_every_task_of_a_subset(name: str, sandbox) -> None:
    tasks = load_tasks(name, limit=25)
    report = humaneval_pass_at_1(OracleInfiller.of(tasks), tasks, sandbox)
    assert report.tasks == 25 and report.pass_at_1 == 1.0, [r.error for r in report.results if not r.passed]
    assert report.exact_match == 1.0 and report.edit_similarity == 1.0


def test_right_code_passes_and_wrong_code_fails(sandbox) -> None:
    task = load_tasks("single-line", limit=1)[0]  # has_close_elements: `for idx, elem in enumerate(numbers):`
    assert run_task(task, task.canonical_solution, sandbox).passed
    wrong = run_task(task, "    for idx, elem in enumerate(numbers[:1]):\n", sandbox)
    assert not wrong.passed and "AssertionError" in wrong.error and not wrong.exact_match
    broken = run_task(task, "    for idx, elem in enumerate(numbers)\n", sandbox)
    assert not broken.passed and "SyntaxError" in broken.error
    assert 0 < broken.edit_similarity < 1
    spin = "    while True:\n        pass\n" + task.canonical_solution
    loop = run_task(task, spin, sandbox, Limits(wall_s=2, cpu_s=1))
    assert not loop.passed and loop.timed_out


def test_a_hostile_completion_changes_nothing_outside(sandbox, tmp_path: Path) -> None:
    task = load_tasks("single-line", limit=1)[0]
    victim = tmp_path / "victim"
    attack = f"    open({str(victim)!r}, 'w').write('x'); for idx, elem in enumerate(numbers):\n"
    assert not run_task(task, attack, sandbox).passed
    escape = f"    __import__('os').system('touch {victim}')\n" + task.canonical_solution
    assert run_task(task, escape, sandbox).passed  # the tests pass; the side effect stayed inside
    assert not victim.exists()


def test_tiny_model_end_to_end_through_the_engine(tiny_version, sandbox) -> None:
    tasks = load_tasks("random-span-light", limit=8)
    backend = LlamaBackend.from_version(tiny_version, max_candidates=1)
    try:
        report = humaneval_pass_at_1(EngineInfiller(engine_for(backend)), tasks, sandbox)
    finally:
        backend.close()
    assert report.source == "engine" and report.tasks == 8 and report.sandbox_errors == 0
    assert 0.0 <= report.pass_at_1 <= 1.0 and 0.0 <= report.edit_similarity <= 1.0
    for result, task in zip(report.results, tasks, strict=True):
        assert result.exact_match == (result.completion.rstrip() == task.canonical_solution.rstrip())
        assert result.passed == (result.error == "")
    scores = report.item_scores()
    assert all(len(v) == 8 for v in scores.values())


def test_cli_with_the_tiny_model_and_the_oracle(tiny_settings, tiny_version) -> None:
    done = editloop(
        "eval", "humaneval-infill", "--data", "single-line", "--limit", "6", "--json", home=tiny_settings.home
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["version"] == tiny_version.name and report["tasks"] == 6 and report["source"] == "engine"
    assert set(report) >= {"pass_at_1", "exact_match", "edit_similarity", "timed_out", "sandbox_errors"}
    oracle = editloop(
        "eval",
        "humaneval-infill",
        "--data",
        "multi-line",
        "--limit",
        "30",
        "--oracle",
        home=tiny_settings.home,
    )
    assert oracle.returncode == 0, oracle.stderr
    assert "pass@1 1.0000 (30/30)" in oracle.stdout


def test_completions_from_a_running_server(tiny_settings, tmp_path: Path, sandbox) -> None:
    tasks = load_tasks("single-line", limit=4)
    with running_server(copy_home(tiny_settings, tmp_path)) as (url, _settings, _app):
        with client(url) as http:
            http.headers.update(auth())
            report = humaneval_pass_at_1(ServerInfiller(http), tasks, sandbox, mode="line")
        cli = editloop(
            "eval",
            "humaneval-infill",
            "--limit",
            "3",
            "--json",
            "--server",
            url,
            "--token",
            "user-token",
            home=tmp_path,
        )
    assert report.source == "server" and report.tasks == 4 and report.sandbox_errors == 0
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["source"] == "server"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "/nonexistent/tasks.jsonl"], "no such file"),
        (["--data", "double-line"], "no such file"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--limit", "-5"], "--limit must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--mode", "paragraph"], "--mode"),
    ],
)
def test_cli_bad_input(args: list[str], needle: str, tmp_path: Path) -> None:
    one_error_line(editloop("eval", "humaneval-infill", "--oracle", *args, home=tmp_path), needle)


def test_cli_malformed_data_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    one_error_line(
        editloop("eval", "humaneval-infill", "--oracle", "--data", str(bad), home=tmp_path), "lacks"
    )
    bad.write_text("not json\n")
    one_error_line(
        editloop("eval", "humaneval-infill", "--oracle", "--data", str(bad), home=tmp_path), "JSON"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETS))
def test_oracle_passes_every_task_of_every_set(name: str, sandbox) -> None:
    tasks = load_tasks(name)
    report = humaneval_pass_at_1(OracleInfiller.of(tasks), tasks, sandbox)
    assert report.pass_at_1 == 1.0, [(r.task_id, r.error) for r in report.results if not r.passed][:10]
