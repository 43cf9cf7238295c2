"""Chaos run of the whole loop: serve + trainer + replayed editor traffic while a seeded schedule breaks
things; prints one JSON object.

What runs, all real processes on this machine:

- a ``redis-server`` (AOF fsynced always) with its data under ``EDITLOOP_HOME``, restarted by a
  supervisor here whenever it dies (as systemd or a container runtime would);
- two ``editloop serve`` replicas over one home and that Redis, and ``editloop trainer``;
- traffic: a simulated developer typing real code (the standard library's ``json`` package) through
  the HTTP path against each replica, and through ``editloop lsp --server`` (the LSP path);
  HTTP feedback that is not acknowledged is re-sent with the same event ids, as a client must.

``EDITLOOP_HOME`` is a size-capped tmpfs mounted for the run (root only), else a loop-mounted ext4
file; without either the disk-full fault cannot be injected and the output says so.

Faults, one at a time, at seeded times (each waits for the previous one's recovery):

- ``redis_kill``: SIGKILL redis-server; the supervisor restarts it after a seeded 1-3 s;
- ``trainer_kill``: ask for a cycle, SIGKILL the trainer when the cycle reaches the target stage
  (``sft``, ``export`` or ``publish``; the stage it really died in is reported), restart it;
- ``replica_kill``: make another version current and SIGKILL one replica while it swaps to it;
- ``disk_full``: fill the home's filesystem for a while, then free it.

Invariants checked at the end (each with its violations): every acknowledged event stored exactly
once, the trainer's dataset archive holds no event twice, ``current`` always verifies (sampled
every 0.25 s), no dead process shown as live (a dead trainer's cycle shown ``running`` or the dead
trainer shown alive), every process healthy again within its stated time, and no request answered
5xx except 503 during an outage.

Run: ``nice -n 10 .venv/bin/python benchmarks/chaos.py --seconds 600 [--seed 0] [--model-home DIR]``.
``--model-home`` is an EDITLOOP_HOME whose registry to copy (default: a tiny starter model is built
first, a few minutes).
"""

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from editloop.errors import EditloopError
from editloop.eval.replay import ReplayConfig, replay
from editloop.eval.replay_cli import load_tasks
from editloop.eval.replay_http import HttpEditor, run_key
from editloop.feedback import control
from editloop.feedback.redis_server import RedisServer
from editloop.feedback.store import FeedbackStore
from editloop.models.registry import Registry
from editloop.server.background import free_port
from editloop.settings import Settings, load_settings

USER, ADMIN = "chaos-user", "chaos-admin"
CODEBASE = Path(sysconfig.get_paths()["stdlib"]) / "json"
# How long each kind of process may take to be healthy again (a Python start that imports torch
# on 2 busy cores is most of the trainer's and a replica's figure).
RECOVERY_BOUND_S = {"redis_kill": 30.0, "disk_full": 60.0, "trainer_kill": 180.0, "replica_kill": 120.0}
TRAINER_STAGES = ("sft", "export", "publish")
GRACE_S = 2.0  # a 503 this soon after an outage ended still belongs to it (a reply in flight)


# -- the home: a filesystem that can be filled -------------------------------------------------------


@contextlib.contextmanager
def capped_home(size_mb: int) -> Iterator[tuple[Path, str]]:
    """A directory on a filesystem of ``size_mb``: (path, "tmpfs" | "loop" | "none")."""
    root = Path(tempfile.mkdtemp(prefix="editloop-chaos-"))
    mount = root / "home"
    mount.mkdir()
    kind = "none"
    image = root / "home.img"
    if os.geteuid() == 0:
        tmpfs = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(mount)]
        if subprocess.run(tmpfs, capture_output=True).returncode == 0:
            kind = "tmpfs"
        else:
            with image.open("wb") as f:
                f.truncate(size_mb * 1024 * 1024)
            made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True).returncode == 0
            if made and subprocess.run(["mount", "-o", "loop", str(image), str(mount)]).returncode == 0:
                kind = "loop"
    try:
        yield mount, kind
    finally:
        if kind != "none":
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fill(path: Path) -> Path:
    """Write zeros under ``path`` until its filesystem refuses (ENOSPC); returns the filler file."""
    filler = path / f".chaos-filler-{uuid.uuid4().hex[:6]}"
    block = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
        with contextlib.suppress(OSError):
            while True:  # the last few KB too
                f.write(b"\0" * 4096)
    return filler


# -- processes ----------------------------------------------------------------------------------------


class Supervised:
    """A subprocess the run starts, SIGKILLs and restarts; its output goes to a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.command, self.env = name, command, env
        self.log = logs / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()  # the injector and the crash watch both start and stop it
        self.killing = False

    def start(self) -> None:
        with self.lock, self.log.open("a") as out:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.killing = False

    def kill(self) -> None:
        """SIGKILL, as a crash; it stays down until :meth:`start`."""
        with self.lock:
            self.killing = True
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()

    def alive(self) -> bool:
        process = self.process
        return process is not None and process.poll() is None

    def crashed(self) -> int | None:
        """The exit status if it died without being killed here (then restarted), else None."""
        with self.lock:
            if self.killing or self.process is None or self.process.poll() is None:
                return None
            status = self.process.returncode
        self.start()
        return status

    def stop(self) -> None:
        with self.lock:
            self.killing = True
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class RedisSupervisor:
    """redis-server with a supervisor that restarts it when it dies (unless held down on purpose)."""

    def __init__(self, data_dir: Path) -> None:
        self.server = RedisServer(data_dir, port=free_port())
        self.hold_until = 0.0
        self.restarts = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="redis-supervisor", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()
        self.thread.start()

    def kill(self, down_s: float) -> None:
        self.hold_until = time.monotonic() + down_s
        self.server.kill()

    def _watch(self) -> None:
        while not self.stop_flag.wait(0.2):
            process = self.server.process
            if process is not None and process.poll() is None:
                continue
            if time.monotonic() < self.hold_until:
                continue
            try:
                self.server.start(timeout_s=10)
                self.restarts += 1
            except (EditloopError, OSError):  # a full disk: redis.conf or the AOF cannot be written
                time.sleep(0.5)

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=5)
        self.server.stop(timeout_s=5)
        self.server.kill()


# -- what the clients saw -----------------------------------------------------------------------------


@dataclass
class Record:
    """Every HTTP answer the traffic got, the events acknowledged, and when outages were."""

    statuses: Counter = field(default_factory=Counter)
    acked: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    answers: list[tuple[float, str, int]] = field(default_factory=list)  # (time, path, status) of 5xx
    outages: list[list[float]] = field(default_factory=list)  # [start, end]
    lock: threading.Lock = field(default_factory=threading.Lock)
    start: float = field(default_factory=time.monotonic)  # of the faulty phase: times are relative

    def since(self, at: float) -> float:
        return round(at - self.start, 2)

    def response(self, response: httpx.Response) -> None:
        path, status = response.request.url.path, response.status_code
        with self.lock:
            self.statuses[f"{path} {status}"] += 1
            if status >= 500:
                self.answers.append((time.monotonic(), path, status))
        if path == "/feedback":
            ids = _event_ids(response.request.content)
            with self.lock:
                self.sent |= ids
                if status == 202:
                    self.acked |= ids

    def failed(self, path: str, kind: str) -> None:
        with self.lock:
            self.statuses[f"{path} {kind}"] += 1

    def outage(self) -> list[float]:
        window = [time.monotonic(), float("inf")]
        with self.lock:
            self.outages.append(window)
        return window

    def bad_answers(self) -> list[dict]:
        """5xx other than a 503 during an outage (or within GRACE_S of its end)."""
        bad = []
        for at, path, status in self.answers:
            in_outage = any(start <= at <= end + GRACE_S for start, end in self.outages)
            if status != 503 or not in_outage:
                bad.append({"path": path, "status": status, "at_s": self.since(at)})
        return bad


def _event_ids(body: bytes) -> set[str]:
    try:
        data = json.loads(body)
    except ValueError:
        return set()
    events = data.get("events", [data]) if isinstance(data, dict) else data
    return {e["event_id"] for e in events if isinstance(e, dict) and "event_id" in e}


class ChaosEditor(HttpEditor):
    """The replay's HTTP editor, re-sending feedback that was not acknowledged (same event ids)."""

    retry_s: float = 90.0

    def flush(self) -> None:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                super().flush()
                return
            except (EditloopError, httpx.HTTPError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


# -- traffic ------------------------------------------------------------------------------------------


class Stopped(EditloopError):
    code = "stopped"


class Stoppable:
    """An editor that ends the replay at its next suggestion once the run is over."""

    def __init__(self, editor, stop: threading.Event) -> None:
        self.editor, self.stop = editor, stop

    def suggest(self):
        if self.stop.is_set():
            raise Stopped("the run is over")
        return self.editor.suggest()

    def __getattr__(self, name: str):
        return getattr(self.editor, name)


def client(url: str, record: Record, token: str = USER) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        event_hooks={"response": [record.response]},
    )


def http_traffic(url: str, tasks, record: Record, stop: threading.Event, lane: int) -> None:
    """Short rounds of a simulated developer, one file each, through /complete and /feedback."""
    rounds = 0
    while not stop.is_set():
        rounds += 1
        seed = lane * 100_000 + rounds  # a fresh seed, so fresh event ids, every round
        chosen = random.Random(seed).sample(tasks, k=1)
        try:
            with client(url, record) as http:
                version = http.get("/health").json()["model"]["version"] or "none"
                editor = ChaosEditor(
                    http, run_key(seed, version, "chaos", str(CODEBASE)), user=f"chaos-{lane}"
                )
                replay(chosen, Stoppable(editor, stop), ReplayConfig(seed=seed, max_requests_per_file=10))
        except (EditloopError, httpx.HTTPError, ValueError, KeyError) as exc:
            if not stop.is_set():
                record.failed("/complete", type(exc).__name__)
            stop.wait(0.5)


def lsp_traffic(url: str, settings: Settings, tasks, record: Record, stop: threading.Event) -> None:
    """Rounds through one ``editloop lsp --server`` (a new one after a failure): its feedback is
    whatever editloop's LSP reports, through its own retries and spool."""
    from editloop.eval.replay_lsp import lsp_editor

    rounds = 0
    while not stop.is_set():
        try:
            with client(url, record) as http, lsp_editor(http, settings, "chaos-lsp", "default") as editor:
                while not stop.is_set():
                    rounds += 1
                    chosen = random.Random(rounds).sample(tasks, k=1)
                    config = ReplayConfig(seed=rounds, max_requests_per_file=8)
                    try:
                        replay(chosen, Stoppable(editor, stop), config)
                    except Stopped:
                        break  # leave the with-block normally: shutdown and exit, not a kill
                    record.failed("lsp", "file_done")
        except Exception as exc:  # the LSP met a fault it could not ride out: start another
            if not stop.is_set():
                record.failed("lsp", type(exc).__name__)
            stop.wait(1.0)


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Loop:
    home: Path
    logs: Path
    redis: RedisSupervisor
    replicas: list[Supervised]
    ports: list[int]
    trainer: Supervised
    record: Record
    fs_kind: str
    disk_hold_s: tuple[float, float] = (4.0, 10.0)
    violations: dict[str, list] = field(
        default_factory=lambda: {"current_verifies": [], "dead_shown_live": [], "crashes": []}
    )

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=2, socket_connect_timeout=2)


def environment(home: Path, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "EDITLOOP_HOME": str(home),
        "EDITLOOP_REDIS_URL": redis_url,
        "EDITLOOP_API_TOKENS": json.dumps([USER]),
        "EDITLOOP_ADMIN_TOKEN": ADMIN,
        "EDITLOOP_TRAINER": "false",  # the trainer is its own process here, to be killed on its own
        "EDITLOOP_REGISTRY_POLL_S": "0.5",
        "EDITLOOP_MODEL_THREADS": "1",
        "EDITLOOP_TORCH_THREADS": "1",
        "EDITLOOP_ABSTAIN_THRESHOLD": "0",
        "EDITLOOP_MAX_PENDING": "64",
        "EDITLOOP_RETRAIN_MIN_EVENTS": "0",  # cycles when the run asks (an operator's request)
        "EDITLOOP_RETRAIN_MIN_SAMPLES": "1",
        "EDITLOOP_RETRAIN_SFT_STEPS": "30",
        "EDITLOOP_RETRAIN_GRPO_STEPS": "0",
        "EDITLOOP_RETRAIN_GENERAL_MIX": "0",
        "EDITLOOP_RETRAIN_GENERAL_SAMPLES": "0",
        "EDITLOOP_RETRAIN_HUMANEVAL_TASKS": "0",
    }


def wait_until(check, timeout_s: float, poll_s: float = 0.2) -> float | None:
    """Seconds until ``check()`` held, or None if it never did within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        time.sleep(poll_s)
    return None


def ready(url: str) -> bool:
    return httpx.get(f"{url}/health/ready", timeout=5).status_code == 200


def feedback_stored(loop: Loop, url: str) -> bool:
    """A probe event reaches Redis through ``url`` (stored, not spooled): the path is healthy."""
    probe = {"type": "shown", "event_id": f"probe-{uuid.uuid4().hex}", "completion_id": "chaos-probe"}
    with client(url, loop.record) as http:
        reply = http.post("/feedback", json=[probe])
    return reply.status_code == 202 and reply.json().get("stored") == 1


def sampler(loop: Loop, stop: threading.Event) -> None:
    """Every 0.25 s: ``current`` verifies; a dead trainer is not shown alive or running a cycle;
    an editloop process that died on its own is recorded (and restarted, as a supervisor would)."""
    registry, client = Registry(loop.home / "models"), loop.redis_client()
    while not stop.wait(0.25):
        for process in (*loop.replicas, loop.trainer):
            exit_status = process.crashed()
            if exit_status is not None:
                loop.violations["crashes"].append(
                    {
                        "process": process.name,
                        "exit": exit_status,
                        "at_s": loop.record.since(time.monotonic()),
                    }
                )
        try:
            registry.load_verified_current()
        except EditloopError as exc:
            loop.violations["current_verifies"].append(
                {"at_s": loop.record.since(time.monotonic()), "error": str(exc)}
            )
        if loop.trainer.alive():
            continue
        try:
            status = control.cycle_status(client, limit=1)
        except (redis.RedisError, OSError):
            continue
        if loop.trainer.alive():  # restarted meanwhile: its own state is not a violation
            continue
        if status["running"] or status["trainer_alive"] or (status["cycle"] or {}).get("status") == "running":
            loop.violations["dead_shown_live"].append(
                {
                    "at_s": loop.record.since(time.monotonic()),
                    "running": status["running"],
                    "trainer_alive": status["trainer_alive"],
                    "cycle": (status["cycle"] or {}).get("status"),
                }
            )


# -- faults -------------------------------------------------------------------------------------------


def redis_kill(loop: Loop, rng: random.Random) -> dict:
    down = round(rng.uniform(1.0, 3.0), 2)
    window = loop.record.outage()
    loop.redis.kill(down)
    took = wait_until(
        lambda: all(feedback_stored(loop, u) for u in loop.urls), RECOVERY_BOUND_S["redis_kill"] + 30
    )
    window[1] = time.monotonic()
    # Recovery counts from the restart (the supervisor's delay is the fault, not the recovery).
    return {
        "down_s": down,
        "outage_s": _round(took),
        "recovery_s": _round(None if took is None else took - down),
    }


def disk_full(loop: Loop, rng: random.Random) -> dict:
    if loop.fs_kind == "none":
        return {"injected": False, "why": "no size-capped filesystem (needs root for tmpfs or a loop mount)"}
    hold = round(rng.uniform(*loop.disk_hold_s), 2)
    window = loop.record.outage()
    filler = fill(loop.home)
    full_mb = round(filler.stat().st_size / 2**20, 1)
    time.sleep(hold)
    filler.unlink()
    took = wait_until(
        lambda: all(feedback_stored(loop, u) for u in loop.urls), RECOVERY_BOUND_S["disk_full"] + 30
    )
    window[1] = time.monotonic()
    return {"held_s": hold, "filler_mb": full_mb, "recovery_s": _round(took)}


def trainer_kill(loop: Loop, rng: random.Random, stage: str) -> dict:
    """Ask for a cycle, SIGKILL the trainer once the cycle is in ``stage``, restart it."""
    client = loop.redis_client()
    if not wait_until(lambda: control.trainer_alive(client), RECOVERY_BOUND_S["trainer_kill"]):
        return {"target": stage, "injected": False, "why": "the trainer never came up"}
    request_id = control.request_retrain(client, force=True, reason="chaos")
    hit = _await_stage(client, request_id, stage, timeout_s=300)
    loop.trainer.kill()
    killed = time.monotonic()
    # The lock holder is dead: its cycle must not be shown running, at once.
    after = wait_until(lambda: not control.cycle_status(client, limit=1)["running"], 5, poll_s=0.05)
    shown = (control.cycle_status(client, limit=1)["cycle"] or {}).get("status")
    time.sleep(rng.uniform(0.5, 2.0))  # a supervisor's restart delay
    loop.trainer.start()
    back = wait_until(lambda: control.trainer_alive(client), RECOVERY_BOUND_S["trainer_kill"] + 30)
    return {
        "target": stage,
        "stage_at_kill": hit,
        "shown_after_kill": shown,
        "not_running_after_s": _round(after),
        "recovery_s": _round(None if back is None else time.monotonic() - killed),
    }


def _await_stage(client: redis.Redis, request_id: str, stage: str, timeout_s: float) -> str:
    """Poll the cycle (every 5 ms: ``publish`` lasts only tens of ms) until it is in ``stage``; what
    was hit: the stage, or how the cycle ended without reaching it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            cycle = control.cycle_status(client, limit=1)["cycle"] or {}
            if cycle.get("status") == "running" and cycle.get("stage") == stage:
                return stage
            final = client.get(control.RESULT.format(request_id))
            if final:
                ended = json.loads(final)
                return f"missed: the cycle ended {ended.get('status')} in {ended.get('stage')}"
        time.sleep(0.005)
    return "missed: timeout"


def replica_kill(loop: Loop, rng: random.Random) -> dict:
    registry = Registry(loop.home / "models")
    current = registry.current_name()
    other = next((v.name for v in reversed(registry.versions()) if v.name != current), None)
    if other is None:
        return {"injected": False, "why": "only one version: nothing to swap to"}
    victim = rng.randrange(len(loop.replicas))
    registry.activate(other)
    time.sleep(rng.uniform(0.1, 0.6))  # the replica polls every 0.5 s, then loads and validates
    loop.replicas[victim].kill()
    killed = time.monotonic()
    loop.replicas[victim].start()
    url = loop.urls[victim]
    took = wait_until(
        lambda: (
            ready(url)
            and httpx.get(f"{url}/health", timeout=5).json()["model"]["version"] == registry.current_name()
        ),
        RECOVERY_BOUND_S["replica_kill"] + 30,
    )
    return {
        "replica": victim,
        "swap": f"{current}->{other}",
        "recovery_s": _round(None if took is None else time.monotonic() - killed),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def schedule(seconds: float, seed: int) -> list[tuple[float, str, str | None]]:
    """(start offset, kind, trainer target stage) for a run of ``seconds``; seeded, one at a time."""
    rng = random.Random(seed)
    kinds = ["redis_kill", "replica_kill", "trainer_kill", "disk_full"]
    count = max(len(kinds), int(seconds // 40))
    gap = seconds / count
    plan, stages = [], list(TRAINER_STAGES)
    order = list(kinds)
    for i in range(count):
        if i and i % len(kinds) == 0:  # every kind once per block, in a seeded order
            order = rng.sample(kinds, len(kinds))
        kind = order[i % len(kinds)]
        stage = None
        if kind == "trainer_kill":
            stage = stages[0]
            stages = stages[1:] + stages[:1]
        plan.append((round(i * gap + rng.uniform(0, gap * 0.3), 1), kind, stage))
    return plan


def inject(loop: Loop, plan, seed: int, stop: threading.Event) -> list[dict]:
    rng = random.Random(seed + 1)
    done = []
    for at, kind, stage in plan:
        while loop.record.since(time.monotonic()) < at and not stop.is_set():
            time.sleep(0.1)
        if stop.is_set():
            break
        started = loop.record.since(time.monotonic())
        if kind == "redis_kill":
            outcome = redis_kill(loop, rng)
        elif kind == "disk_full":
            outcome = disk_full(loop, rng)
        elif kind == "trainer_kill":
            outcome = trainer_kill(loop, rng, stage or "sft")
        else:
            outcome = replica_kill(loop, rng)
        done.append({"kind": kind, "at_s": started, **outcome})
    return done


# -- after the run ------------------------------------------------------------------------------------


def drain(loop: Loop, timeout_s: float = 90) -> float | None:
    """Wait until every replica's queue and spool are empty (spooled events replayed to Redis)."""

    def empty() -> bool:
        for url in loop.urls:
            detail = httpx.get(
                f"{url}/health/detail", headers={"Authorization": f"Bearer {USER}"}, timeout=5
            ).json()
            feedback = detail["feedback"]
            if feedback["spool_pending"] or feedback["queued"] or feedback["status"] != "ok":
                return False
        return True

    return wait_until(empty, timeout_s, poll_s=0.5)


def stored_events(loop: Loop) -> Counter:
    store = FeedbackStore.from_url(loop.redis.url)
    counts: Counter = Counter()
    for project in store.projects():
        for stored in store.events(project):
            counts[stored.event.event_id] += 1
    return counts


def archive_duplicates(home: Path) -> tuple[int, int]:
    path = home / "training" / "feedback.jsonl"
    if not path.exists():
        return 0, 0
    ids = Counter()
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            ids[json.loads(line)["event_id"]] += 1
    return sum(ids.values()), sum(n - 1 for n in ids.values() if n > 1)


def summarise(loop: Loop, faults: list[dict], drained: float | None, seconds: float) -> dict:
    record = loop.record
    stored = stored_events(loop)
    acked = record.acked
    lost = sorted(acked - stored.keys())
    duplicated = sorted(k for k, n in stored.items() if n > 1)
    archived, archive_dups = archive_duplicates(loop.home)
    final_current = None
    try:
        final_current = Registry(loop.home / "models").load_verified_current().name
    except EditloopError as exc:
        loop.violations["current_verifies"].append({"at_s": "end", "error": str(exc)})
    slow = [
        f
        for f in faults
        if f.get("injected", True)
        and (f.get("recovery_s") is None or f["recovery_s"] > RECOVERY_BOUND_S[f["kind"]])
    ]
    bad = record.bad_answers()
    invariants = {
        "acknowledged_stored_exactly_once": {
            "ok": not lost and not duplicated,
            "lost": lost[:20],
            "duplicated": duplicated[:20],
        },
        "archive_has_no_duplicate": {
            "ok": archive_dups == 0,
            "archived": archived,
            "duplicates": archive_dups,
        },
        "current_always_verifies": {
            "ok": not loop.violations["current_verifies"],
            "violations": loop.violations["current_verifies"][:20],
            "final": final_current,
        },
        "no_editloop_process_crashed": {
            "ok": not loop.violations["crashes"],
            "violations": loop.violations["crashes"][:20],
        },
        "no_dead_process_shown_live": {
            "ok": not loop.violations["dead_shown_live"],
            "violations": loop.violations["dead_shown_live"][:20],
        },
        "recovered_within_bound": {"ok": not slow, "bounds_s": RECOVERY_BOUND_S, "violations": slow},
        "no_5xx_but_503_in_outage": {"ok": not bad, "violations": bad[:20]},
        "spools_drained": {"ok": drained is not None, "after_s": _round(drained)},
    }
    recovery: dict[str, dict] = {}
    for fault in faults:
        if fault.get("recovery_s") is not None:
            entry = recovery.setdefault(fault["kind"], {"n": 0, "max_s": 0.0, "mean_s": 0.0})
            entry["mean_s"] = round(
                (entry["mean_s"] * entry["n"] + fault["recovery_s"]) / (entry["n"] + 1), 2
            )
            entry["n"] += 1
            entry["max_s"] = max(entry["max_s"], fault["recovery_s"])
    return {
        "seconds": seconds,
        "filesystem": loop.fs_kind,
        "faults_injected": Counter(f["kind"] for f in faults if f.get("injected", True)),
        "faults": faults,
        "events": {
            "sent": len(record.sent),
            "acknowledged": len(acked),
            "stored": sum(stored.values()),
            "stored_unique": len(stored),
            "duplicated": len(duplicated),
            "lost": len(lost),
            "archived_by_trainer": archived,
        },
        "requests": dict(sorted(record.statuses.items())),
        "recovery": recovery,
        "redis_restarts": loop.redis.restarts,
        "invariants": invariants,
        "violations": sum(not v["ok"] for v in invariants.values()),
        "logs": str(loop.logs),
    }


# -- main ---------------------------------------------------------------------------------------------


def starter_models(model_home: Path | None, cache: Path) -> Path:
    """A registry to copy: ``model_home``'s, or a tiny starter built once into ``cache``."""
    if model_home is not None:
        return model_home / "models"
    if not (cache / "models" / "current.json").exists():
        from editloop.starter.bootstrap import BootstrapOptions, bootstrap

        bootstrap(load_settings(home=cache), BootstrapOptions(size="tiny"))
    return cache / "models"


def second_version(models: Path) -> None:
    """A second version (the current one's files again) so a swap can be provoked from the start."""
    registry = Registry(models)
    source = registry.current()
    assert source is not None
    registry.republish(source.name)


def start_loop(home: Path, fs_kind: str, logs: Path) -> Loop:
    """Redis, two replicas and the trainer on ``home``; returns once both replicas are ready."""
    redis_sup = RedisSupervisor(home / "redis")
    redis_sup.start()
    env = environment(home, redis_sup.url)
    ports = [free_port(), free_port()]
    python = [sys.executable, "-m", "editloop"]
    replicas = [
        Supervised(f"serve-{i}", [*python, "serve", "--port", str(p)], env, logs) for i, p in enumerate(ports)
    ]
    trainer = Supervised("trainer", [*python, "trainer"], env, logs)
    loop = Loop(home, logs, redis_sup, replicas, ports, trainer, Record(), fs_kind)
    for process in (*replicas, trainer):
        process.start()
    if wait_until(lambda: all(ready(u) for u in loop.urls), 300) is None:
        stop_loop(loop)
        raise EditloopError(f"the replicas did not become ready; see {logs}")
    return loop


def stop_loop(loop: Loop) -> None:
    for process in (*loop.replicas, loop.trainer):
        process.stop()
    loop.redis.stop()


def start_traffic(loop: Loop, stop: threading.Event) -> list[threading.Thread]:
    """HTTP replays against each replica and an LSP replay through the first."""
    tasks = load_tasks(CODEBASE, "*.py", None, "all", 0.7)
    settings = load_settings(home=loop.home, redis_url=loop.redis.url, lsp_telemetry=True)
    threads = [
        threading.Thread(target=http_traffic, args=(u, tasks, loop.record, stop, i), daemon=True)
        for i, u in enumerate(loop.urls)
    ]
    lsp_args = (loop.urls[0], settings, tasks, loop.record, stop)
    threads.append(threading.Thread(target=lsp_traffic, args=lsp_args, daemon=True))
    for thread in threads:
        thread.start()
    return threads


def run(seconds: float, seed: int, model_home: Path | None, size_mb: int, cache: Path) -> dict:
    began = time.monotonic()
    source = starter_models(model_home, cache)
    logs = Path(tempfile.mkdtemp(prefix="editloop-chaos-logs-"))
    with capped_home(size_mb) as (home, fs_kind):
        shutil.copytree(source, home / "models", ignore=shutil.ignore_patterns(".staging", ".lock"))
        second_version(home / "models")
        loop: Loop | None = None
        stop, traffic_stop = threading.Event(), threading.Event()
        try:
            loop = start_loop(home, fs_kind, logs)
            if seconds < 120:  # a short run (the test's): a shorter disk fault
                loop.disk_hold_s = (2.0, 4.0)
            setup_s = time.monotonic() - began
            loop.record.start = time.monotonic()
            traffic = start_traffic(loop, traffic_stop)
            watcher = threading.Thread(target=sampler, args=(loop, stop), daemon=True)
            watcher.start()
            faults = inject(loop, schedule(seconds, seed), seed, stop)
            while loop.record.since(time.monotonic()) < seconds:
                time.sleep(0.2)
            faulty_s = loop.record.since(time.monotonic())
            traffic_stop.set()
            for thread in traffic:
                thread.join(timeout=120)
            drained = drain(loop)
            stop.set()
            watcher.join(timeout=5)
            result = summarise(loop, faults, drained, seconds)
            phases = {
                "setup": setup_s,
                "faulty": faulty_s,
                "wind_down": loop.record.since(time.monotonic()) - faulty_s,
            }
            return {**result, "phases_s": {k: round(v, 1) for k, v in phases.items()}}
        finally:
            stop.set()
            traffic_stop.set()
            if loop is not None:
                stop_loop(loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the faulty phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-home", type=Path, default=None, help="an EDITLOOP_HOME whose registry to copy"
    )
    parser.add_argument("--size-mb", type=int, default=512, help="size of the capped home filesystem")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "editloop-chaos-model")
    args = parser.parse_args()
    result = run(args.seconds, args.seed, args.model_home, args.size_mb, args.cache)
    print(json.dumps(result, indent=2, default=str))
    sys.exit(1 if result["violations"] else 0)


if __name__ == "__main__":
    main()
