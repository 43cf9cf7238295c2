"""The CLI on bad input: one clear line on stderr and a non-zero exit, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def editloop(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "EDITLOOP_HOME": str(home), **env}
    return subprocess.run(
        [sys.executable, "-m", "editloop", *args], capture_output=True, text=True, env=environ, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]


def test_missing_corpus(tmp_path: Path) -> None:
    result = editloop("bootstrap-model", "--size", "tiny", "--corpus", str(tmp_path / "nope"), home=tmp_path)
    assert_one_line_error(result, "does not exist")


def test_unknown_size(tmp_path: Path) -> None:
    assert_one_line_error(editloop("bootstrap-model", "--size", "huge", home=tmp_path), "unknown size")


@pytest.mark.parametrize(("option", "value"), [("--steps", "0"), ("--line-steps", "-1"), ("--minutes", "0")])
def test_counts_out_of_range(tmp_path: Path, option: str, value: str) -> None:
    result = editloop("bootstrap-model", "--size", "tiny", option, value, home=tmp_path)
    assert_one_line_error(result, option)
    assert not (tmp_path / "models").exists()  # refused before anything was built


def test_corrupt_gguf_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    assert_one_line_error(editloop("models", "import", str(bad), home=tmp_path), "GGUF")


def test_unknown_version(tmp_path: Path) -> None:
    assert_one_line_error(editloop("models", "activate", "v42", home=tmp_path), "v42")


def test_bad_setting(tmp_path: Path) -> None:
    result = editloop("models", "list", home=tmp_path, EDITLOOP_LOG_LEVEL="loud")
    assert_one_line_error(result, "EDITLOOP_LOG_LEVEL")


@pytest.mark.parametrize("args", [["eval-lines", "v9"], ["models", "rollback"]])
def test_commands_without_a_model(tmp_path: Path, args: list[str]) -> None:
    result = editloop(*args, home=tmp_path)
    assert result.returncode != 0 and result.stderr.startswith("error: ")


def test_eval_lines_reports_model_and_baselines(tiny_settings, tiny_version) -> None:
    result = editloop("eval-lines", "current", "--tasks", "20", home=tiny_settings.home)
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)  # the alias of `eval fim --kinds single-line`
    assert report["version"] == tiny_version.name and report["tasks"] == {"single-line": 20}
    assert set(report) >= {"model", "repeat_previous_line", "empty"}
    assert set(report["model"]) == {"single-line"}
