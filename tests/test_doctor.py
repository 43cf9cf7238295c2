"""`editloop doctor` in a subprocess, as a user runs it: passes on this machine, and fails with the
command that fixes it when a binary is missing (a PATH without it), the port is taken or the
server would bind beyond loopback without tokens."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from editloop.server.background import free_port
from editloop.settings import Settings
from tests.server_fixtures import copy_home

CHECKS = {"python", "redis", "bubblewrap", "model", "port", "tokens", "disk", "cuda"}


def doctor(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "EDITLOOP_HOME": str(home), "EDITLOOP_PORT": str(free_port()), **env}
    full_env.pop("EDITLOOP_REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "editloop", "doctor", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def by_name(run: subprocess.CompletedProcess) -> dict[str, dict]:
    report = json.loads(run.stdout)
    return {c["name"]: c for c in report["checks"]}


def test_doctor_passes_here(tiny_settings: Settings, tiny_version, tmp_path: Path) -> None:
    home = copy_home(tiny_settings, tmp_path / "home")
    run = doctor(home, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    checks = by_name(run)
    assert set(checks) == CHECKS and json.loads(run.stdout)["ok"] is True
    assert all(c["status"] in ("ok", "info", "warn") for c in checks.values()), checks
    assert checks["redis"]["status"] == checks["bubblewrap"]["status"] == "ok"
    assert checks["model"]["status"] == "ok" and tiny_version.name in checks["model"]["detail"]


def test_missing_redis_and_bubblewrap_fail_with_the_install_command(tmp_path: Path) -> None:
    # Only the venv's own scripts on PATH: redis-server and bwrap (in /usr/bin) are not found.
    path = str(Path(sys.executable).parent)
    run = doctor(tmp_path / "home", "--json", PATH=path)
    assert run.returncode == 1, run.stdout + run.stderr
    checks = by_name(run)
    assert checks["redis"]["status"] == "fail" and "apt-get install -y redis-server" in checks["redis"]["fix"]
    assert checks["bubblewrap"]["status"] == "fail"
    assert "apt-get install -y bubblewrap" in checks["bubblewrap"]["fix"]
    lines = doctor(tmp_path / "home", PATH=path)
    assert lines.returncode == 1
    assert "fix: " in lines.stdout and "apt-get install -y redis-server" in lines.stdout
    assert "check(s) failed: redis, bubblewrap" in lines.stdout


def test_a_taken_port_and_an_open_bind_without_tokens_fail_with_their_fix(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = doctor(tmp_path / "home", "--json", EDITLOOP_PORT=str(port), EDITLOOP_HOST="0.0.0.0")
    assert run.returncode == 1
    checks = by_name(run)
    assert checks["port"]["status"] == "fail" and checks["port"]["fix"].startswith("EDITLOOP_PORT=")
    assert checks["tokens"]["status"] == "fail" and "EDITLOOP_API_TOKENS" in checks["tokens"]["fix"]
    assert checks["model"]["status"] in ("info", "warn")  # an empty home is not broken
