"""README's Emacs snippets, run for real: Emacs (batch) starts ``editloop lsp`` through eglot or
lsp-mode, asks for completions on the tiny model and accepts one; the events reach Redis.

Needs Emacs with the client package (Debian: ``apt-get install emacs-nox elpa-eglot elpa-lsp-mode``),
which ``make test`` installs (``scripts/install.sh --test-tools``); skipped where they are missing.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from editloop.feedback.store import FeedbackStore
from editloop.settings import Settings
from tests.redis_fixtures import running_redis
from tests.server_fixtures import copy_home, server_env

DRIVERS = Path(__file__).parent / "editors"
README = Path(__file__).parents[1] / "README.md"
DOC = "import os\n\n\ndef add(a, b):\n    return \n\n\ndef main():\n    print(add(1, 2))\n"
CLIENTS = {"eglot": "eglot", "lsp-mode": "lsp-mode"}  # driver file -> Emacs feature
# What reaches Redis. eglot 1.9 (Debian 12's) never runs a completion item's command, so the
# server hears of the suggestion but not of its accept; lsp-mode runs it.
REPORTED = {"eglot": {"shown"}, "lsp-mode": {"shown", "accepted"}}


def emacs_with(feature: str) -> str:
    emacs = shutil.which("emacs")
    if emacs is None:
        pytest.skip("emacs not installed (apt-get install emacs-nox elpa-eglot elpa-lsp-mode)")
    probe = subprocess.run(
        [emacs, "--batch", "-q", "--eval", f"(require '{feature})"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"Emacs has no {feature} (apt-get install elpa-{feature})")
    return emacs


def test_the_drivers_run_readme_snippets_verbatim() -> None:
    readme = README.read_text()
    lsp_mode = re.search(r"```elisp\n(.*?)```", readme, re.S)
    eglot = re.search(r"`(\(add-to-list 'eglot-server-programs [^`]*)`", readme)
    assert lsp_mode and eglot, "README lost its Emacs snippets"
    assert lsp_mode.group(1) in (DRIVERS / "lsp-mode.el").read_text()
    assert eglot.group(1) in (DRIVERS / "eglot.el").read_text()


@pytest.fixture(scope="module")
def feedback_redis(tmp_path_factory) -> str:
    with running_redis(tmp_path_factory.mktemp("emacs-redis")) as server:
        yield server.url


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_readme_emacs_snippet_completes_and_reports_to_redis(
    client: str, tiny_settings: Settings, tiny_version, feedback_redis: str, tmp_path: Path
) -> None:
    emacs = emacs_with(CLIENTS[client])
    home = copy_home(tiny_settings, tmp_path / "home")
    project = f"emacs-{client}"  # the server names the feedback project after the workspace folder
    workspace = tmp_path / project
    (workspace / ".git").mkdir(parents=True)  # a project root, as both clients look for one
    (workspace / "app.py").write_text(DOC)
    env = {
        **server_env(home, feedback_redis),
        # `editloop` on PATH, as the snippet expects of an installed package.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),  # no user init, no package state of the machine's user
        "EDITLOOP_TEST_FILE": str(workspace / "app.py"),
    }
    run = subprocess.run(
        [emacs, "--batch", "-q", "-l", str(DRIVERS / f"{client}.el")],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("EDITLOOP-RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("EDITLOOP-RESULT "))
    assert result["connected"] is True, run.stderr[-3000:]
    assert result["items"], run.stderr[-3000:]
    # The accepted item went in after "return " (its text as the server sent it; the label is trimmed).
    assert result["line"].startswith("    return ") and result["line"].endswith(result["items"][0])
    assert REPORTED[client] <= stored_types(feedback_redis, project, REPORTED[client])


def stored_types(url: str, project: str, wanted: set[str], timeout_s: float = 10.0) -> set[str]:
    """Event types recorded for ``project``, once ``wanted`` are among them (or the timeout passes)."""
    store = FeedbackStore.from_url(url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            types = {stored.event.type for stored in store.events(project)}
            if wanted <= types or time.monotonic() > deadline:
                return types
            time.sleep(0.2)
    finally:
        store.close()
