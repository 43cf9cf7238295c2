"""The whole loop on the tiny model: replayed feedback → cycle → gated version → hot-swap."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import httpx
import pytest

from editloop.eval.replay import ReplayConfig
from editloop.eval.replay_cli import load_tasks, run_replay
from editloop.feedback.log import open_feedback
from editloop.models.registry import Registry
from editloop.server.background import free_port
from editloop.training.cycle import CycleConfig
from editloop.training.gate import GateConfig
from editloop.training.launch import Launch
from editloop.training.worker import Trainer
from tests.server_fixtures import USER, auth, copy_home, running_server

CODEBASE = Path(sysconfig.get_paths()["stdlib"]) / "json"
CYCLE = CycleConfig(
    min_samples=10,
    sft_steps=150,
    learning_rate=5e-3,
    general_mix=0.0,  # the tiny model cannot learn the team's code and rehearse stdlib in 150 steps
    grpo_steps=2,
    general_samples=10,
    device="cpu",
    gate=GateConfig(bootstrap=300, max_samples=60),
    canary_share=0.0,  # these tests are about publishing and swapping; tests/test_canary.py has the canary
    checkpoints=2,  # the gate scores SFT at half and at the end, then GRPO's result
    blends=[],
)


class Hammer:
    """Completion requests in a loop, counting the ones that fail, while the model swaps under them."""

    def __init__(self, url: str) -> None:
        self.url, self.ok, self.failed, self.versions = url, 0, 0, set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=auth()) as client:
            while not self.stop.is_set():
                reply = client.post(
                    "/complete", json={"prefix": "import json\n\ndef load(path):\n    ", "suffix": ""}
                )
                if reply.status_code == 200:
                    self.ok += 1
                    self.versions.add(reply.json()["model_version"])
                else:
                    self.failed += 1


@pytest.fixture(scope="module")
def replayed_home(tiny_settings, tiny_version, tmp_path_factory) -> Path:
    """A home whose embedded Redis holds the feedback of a replay of real code (the train split's)."""
    home = copy_home(tiny_settings, tmp_path_factory.mktemp("replayed"))
    tasks = load_tasks(CODEBASE, None, None, "all", 0.7)
    with running_server(home, abstain_threshold=0.0) as (url, settings, _app):
        replay = ReplayConfig(seed=0, pause_after_word=0.0, max_requests_per_file=40)
        report = run_replay(settings, tasks, replay, server=url, token=USER)
    assert report["requests"] == 200
    return home


def _copy(home: Path, target: Path) -> Path:
    shutil.copytree(home, target, ignore=shutil.ignore_patterns("*.sock", "*.pid", ".staging"))
    return target


def test_replayed_feedback_yields_a_gated_version_the_server_swaps_to(replayed_home, tmp_path) -> None:
    home = _copy(replayed_home, tmp_path / "home")
    with running_server(home, abstain_threshold=0.0) as (url, settings, _app):
        hammer = Hammer(url)
        hammer.thread.start()
        with open_feedback(settings) as feedback:
            state = Trainer.from_settings(settings, feedback.store).run_cycle("test", config=CYCLE)
        assert state.status == "published", (state.message, state.reports)
        deadline = time.monotonic() + 30
        while state.version not in hammer.versions and time.monotonic() < deadline:
            time.sleep(0.1)
        hammer.stop.set()
        hammer.thread.join()
    assert hammer.failed == 0 and hammer.ok > 0
    assert hammer.versions == {state.parent, state.version}
    gate = state.reports["gate"]
    assert gate["passed"]
    assert gate["feedback"]["edit_similarity"]["low"] > 0
    # Every point of the path was scored like the gate; the published one is the best that passed.
    path = state.reports["trajectory"]
    assert [p["label"] for p in path] == ["sft 75/150", "sft 150/150", "grpo"]
    chosen = [p for p in path if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["passed"] and chosen[0]["label"] == gate["checkpoint"]
    assert chosen[0]["heldout_gain"]["delta"] == max(p["heldout_gain"]["delta"] for p in path if p["passed"])
    # The report says what GRPO changed: SFT alone against SFT + GRPO, scored as the gate scores.
    effect = state.reports["grpo"]["effect"]
    assert effect["samples"] > 0 and "edit similarity" in effect["verdict"]
    row = effect["feedback"]["edit_similarity"]
    assert row["low"] <= row["high"] and 0 <= row["sft"] <= 1 and 0 <= row["sft_grpo"] <= 1
    version = Registry(settings.models_dir).get(state.version)
    assert version.manifest.parent == state.parent and version.manifest.kind == "retrain"
    assert version.manifest.metrics["gate"]["passed"]


TRAINING_ENV = {
    "EDITLOOP_RETRAIN_SFT_STEPS": "150",
    "EDITLOOP_RETRAIN_LEARNING_RATE": "5e-3",
    "EDITLOOP_RETRAIN_GRPO_STEPS": "2",
    "EDITLOOP_RETRAIN_GENERAL_SAMPLES": "10",
    "EDITLOOP_RETRAIN_MIN_SAMPLES": "10",
    "EDITLOOP_RETRAIN_DEVICE": "cpu",
    "EDITLOOP_RETRAIN_MIN_EVENTS": "0",
    "EDITLOOP_RETRAIN_GENERAL_MIX": "0",
    "EDITLOOP_CANARY_SHARE": "0",
    "EDITLOOP_RETRAIN_CHECKPOINTS": "2",
    "EDITLOOP_RETRAIN_BLENDS": "[]",
}


def _retrain(home: Path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        **TRAINING_ENV,
        "EDITLOOP_HOME": str(home),
        "EDITLOOP_RETRAIN_SFT_STEPS": "150",
        "EDITLOOP_RETRAIN_LEARNING_RATE": "5e-3",
        "EDITLOOP_RETRAIN_GRPO_STEPS": "2",
        "EDITLOOP_RETRAIN_GENERAL_SAMPLES": "10",
        "EDITLOOP_RETRAIN_MIN_SAMPLES": "10",
        "EDITLOOP_RETRAIN_DEVICE": "cpu",
    }
    command = [sys.executable, "-m", "editloop", "retrain", "--json", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stage(home: Path) -> str | None:
    states = list((home / "runs").glob("*/cycle.json"))
    return json.loads(states[0].read_text())["stage"] if states else None


def test_a_killed_cycle_changes_nothing_and_the_retry_succeeds(replayed_home, tmp_path) -> None:
    home = _copy(replayed_home, tmp_path / "home")
    registry = Registry(home / "models")
    before = [v.name for v in registry.versions()], registry.current_name()
    killed = _retrain(home)
    deadline = time.monotonic() + 300
    while _stage(home) not in ("sft", "grpo", "export") and time.monotonic() < deadline:
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.05)
    killed.kill()
    killed.communicate()
    assert ([v.name for v in registry.versions()], registry.current_name()) == before
    archived = (home / "training" / "feedback.jsonl").read_text().splitlines()
    assert archived  # the snapshot was durable before the kill; its events were acknowledged

    retry = _retrain(home, "--force")
    out, err = retry.communicate(timeout=600)
    assert retry.returncode == 0, err[-3000:]
    state = json.loads(out)
    assert state["status"] == "published", state["message"]
    assert registry.current_name() == state["version"] != before[1]
    assert [v.name for v in registry.versions()] == [*before[0], state["version"]]
    ids = [
        json.loads(line)["event_id"]
        for line in (home / "training" / "feedback.jsonl").read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)) == len(archived)  # nothing re-archived twice, nothing lost


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(1200)
def test_operators_retrain_through_the_trainer_beside_serve(replayed_home, tmp_path) -> None:
    home = _copy(replayed_home, tmp_path / "home")
    port = free_port()
    env = {**os.environ, **TRAINING_ENV, "EDITLOOP_HOME": str(home), "EDITLOOP_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "editloop", "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        status = {}
        while time.monotonic() < deadline and not status.get("trainer_alive"):
            time.sleep(0.5)
            done = subprocess.run(
                [sys.executable, "-m", "editloop", "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
            )
            status = json.loads(done.stdout) if done.returncode == 0 else {}
        assert status.get("trainer_alive"), "the trainer beside `editloop serve` never reported"
        (trainer,) = [p for p in _children(server.pid) if "trainer" in Path(f"/proc/{p}/cmdline").read_text()]
        assert os.sched_getscheduler(trainer) == os.SCHED_IDLE  # serving keeps the CPU it asks for
        done = subprocess.run(
            [sys.executable, "-m", "editloop", "retrain", "--wait", "--force", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        state = json.loads(done.stdout)
        assert state["status"] == "published" and state["reports"]["trigger"] == "operator"
        reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        deadline = time.monotonic() + 30
        while reply["model"]["version"] != state["version"] and time.monotonic() < deadline:
            time.sleep(0.2)
            reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert reply["model"]["version"] == state["version"]
        history = json.loads(
            subprocess.run(
                [sys.executable, "-m", "editloop", "status", "--json"],
                env=env,
                capture_output=True,
                text=True,
            ).stdout
        )["history"]
        assert history[0]["cycle_id"] == state["cycle_id"]
    finally:
        server.kill()  # however the server dies, its trainer goes with it
        server.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{trainer}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{trainer}").exists()


def test_the_trainer_beside_a_server_and_its_threads_run_on_idle_cpu_only() -> None:
    from editloop.server.main import _as_sidecar

    code = (
        "import os, threading\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))\n"
        "t.start(); t.join()\n"
        "print(os.sched_getscheduler(0) == seen[0] == os.SCHED_IDLE)\n"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, preexec_fn=_as_sidecar, capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr


def test_rehearsal_rows_come_from_the_starter_training_files_only() -> None:
    from editloop.corpus import DEFAULT_EXCLUDE, load_corpus
    from editloop.training.cycle import general_rows

    rows = general_rows(40, seed=0)
    heldout = {f.path for f in load_corpus(["stdlib"], {"python"}, exclude=DEFAULT_EXCLUDE).heldout}
    assert len(rows) == 40 and all(r["reference"].strip() and r["language"] == "python" for r in rows)
    assert not {r["filepath"] for r in rows} & heldout  # the gate's general check never sees them
    assert general_rows(40, seed=0) == rows and general_rows(0, seed=0) == []


def _kill_rank_once_training(home: Path, rank: int, killed: list[int], stop: threading.Event) -> None:
    """Once rank 0 has logged a training step, SIGKILL ``rank`` (its pid file is in the launch dir)."""
    while not stop.is_set():
        metrics = [p for p in home.glob("runs/*/sft/metrics.jsonl") if p.stat().st_size > 0]
        pids = list(home.glob(f"runs/*/sft/launch/rank-{rank}.pid"))
        if metrics and pids:
            pid = int(pids[0].read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_rank_killed_mid_cycle_fails_it_cleanly_and_the_retry_succeeds(replayed_home, tmp_path) -> None:
    home = _copy(replayed_home, tmp_path / "home")
    registry = Registry(home / "models")
    before = [v.name for v in registry.versions()], registry.current_name()
    # Two ranks (gloo), a short SFT and one GRPO step; forced, since the point is the path, not the gain.
    config = dataclasses.replace(CYCLE, sft_steps=12, grpo_steps=1, force=True, launch=Launch(2, threads=1))
    with running_server(home, abstain_threshold=0.0) as (url, settings, _app):
        killed: list[int] = []
        stop = threading.Event()
        killer = threading.Thread(target=_kill_rank_once_training, args=(home, 1, killed, stop), daemon=True)
        killer.start()
        with open_feedback(settings) as feedback:
            failed = Trainer.from_settings(settings, feedback.store).run_cycle("test", config=config)
        stop.set()
        killer.join()
        assert killed, "rank 1 never started training"
        assert failed.status == "failed" and failed.stage == "sft", failed.message
        assert "training processes exited" in failed.message
        assert ([v.name for v in registry.versions()], registry.current_name()) == before
        staging = home / "models" / ".staging"
        assert not staging.exists() or not any(staging.iterdir())
        reply = httpx.post(f"{url}/complete", json={"prefix": "import json\n", "suffix": ""}, headers=auth())
        assert reply.status_code == 200 and reply.json()["model_version"] == before[1]  # still serving

        with open_feedback(settings) as feedback:
            retry = Trainer.from_settings(settings, feedback.store).run_cycle("test", config=config)
    assert retry.status == "published", (retry.message, retry.reports)
    assert retry.reports["sft"]["steps"] == 12 and retry.reports["grpo"]["steps"] == 1
    assert registry.current_name() == retry.version and [v.name for v in registry.versions()] == [
        *before[0],
        retry.version,
    ]
