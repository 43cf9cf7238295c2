"""Replay through the HTTP path and through `editloop lsp`: same suggestions, same counts, real events."""

import sysconfig
from pathlib import Path

from editloop.eval.replay import ReplayConfig
from editloop.eval.replay_cli import load_tasks, run_replay
from editloop.feedback.log import open_feedback
from tests.server_fixtures import USER, copy_home, running_server

CODE = Path(sysconfig.get_paths()["stdlib"]) / "json"
COUNTS = (
    "files",
    "requests",
    "shown",
    "full_accepts",
    "partial_accepts",
    "chars_typed",
    "chars_inserted",
    "chars_retained",
)


def _types(settings, project: str) -> dict[str, int]:
    with open_feedback(settings, replay=False) as feedback:
        counts: dict[str, int] = {}
        for stored in feedback.store.events(project):
            counts[stored.event.type] = counts.get(stored.event.type, 0) + 1
    return counts


def test_http_and_lsp_paths_give_the_same_counts(tiny_settings, tiny_version, tmp_path) -> None:
    tasks = load_tasks(CODE, "scanner.py", None, "all", 0.7)
    config = ReplayConfig(seed=3, max_requests_per_file=25)
    with running_server(copy_home(tiny_settings, tmp_path), abstain_threshold=0.0) as (url, settings, _app):
        reports = {
            via: run_replay(settings, tasks, config, via=via, project=f"paths-{via}", server=url, token=USER)
            for via in ("http", "lsp")
        }
        events = {via: _types(settings, f"paths-{via}") for via in ("http", "lsp")}
    http, lsp = reports["http"], reports["lsp"]
    assert http["requests"] == 25
    assert {k: http[k] for k in COUNTS} == {k: lsp[k] for k in COUNTS}
    for via, report in reports.items():
        assert events[via].get("completion") == report["requests"], via  # the server recorded each
        assert events[via].get("shown", 0) == report["shown"], via
        taken = report["full_accepts"] + report["partial_accepts"]
        assert events[via].get("accepted", 0) == taken, via
        assert events[via].get("edited", 0) > 0, via  # what the developer wrote where nothing fit
