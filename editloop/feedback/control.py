"""The loop's control plane on Redis: retrain requests, cycle state, and new-model notices.

The trainer (``training/worker.py``) and every server share these keys, so operators can ask
any server or the CLI to retrain and watch the cycle, and every server replica hears of a new
version at once. All keys live under ``editloop:``::

    cycle:lock            who runs a cycle now (token, TTL): one cycle at a time
    cycle:state           the running (or last) cycle's state, JSON (shown ``interrupted`` once
                          the lock holder is gone: see :func:`observed_state`)
    cycle:history         the last cycles' final states, newest first
    retrain:requests      operator requests (JSON), FIFO
    retrain:result:<id>   the final state of one request's cycle
    trainer:heartbeat     a trainer is alive (TTL)
    models                pub/sub channel: the name of a newly published version
"""

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from editloop.errors import EditloopError

log = logging.getLogger(__name__)

LOCK = "editloop:cycle:lock"
STATE = "editloop:cycle:state"
HISTORY = "editloop:cycle:history"
REQUESTS = "editloop:retrain:requests"
RESULT = "editloop:retrain:result:{}"
HEARTBEAT = "editloop:trainer:heartbeat"
MODELS_CHANNEL = "editloop:models"
HISTORY_KEEP = 50
LOCK_TTL_S = 60
RESULT_TTL_S = 7 * 24 * 3600
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class CycleBusyError(EditloopError):
    code = "cycle_running"


@contextmanager
def cycle_lock(client: redis.Redis, ttl_s: int = LOCK_TTL_S) -> Iterator[str]:
    """Hold the one-cycle-at-a-time lock, refreshed while held; raise if another holder has it.

    A killed holder stops refreshing, so its lock lapses after ``ttl_s`` and the retry can start.
    """
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    if not client.set(LOCK, token, nx=True, ex=ttl_s):
        holder = client.get(LOCK)
        if not (holder and _dead_local_holder(holder) and client.eval(_RELEASE, 1, LOCK, holder)):
            raise CycleBusyError("a retrain cycle is already running; wait for it (`editloop status`)")
        log.warning("took over the cycle lock of a killed trainer (%s)", holder)
        if not client.set(LOCK, token, nx=True, ex=ttl_s):
            raise CycleBusyError("a retrain cycle is already running; wait for it (`editloop status`)")
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(ttl_s / 3):
            try:
                if client.get(LOCK) not in (token, token.encode()):
                    log.error("the cycle lock was lost (expired or taken)")
                    return
                client.expire(LOCK, ttl_s)
            except redis.RedisError as exc:  # Redis restarting: try again next round
                log.warning("cannot refresh the cycle lock: %s", exc)

    keeper = threading.Thread(target=refresh, name="cycle-lock", daemon=True)
    keeper.start()
    try:
        yield token
    finally:
        done.set()
        client.eval(_RELEASE, 1, LOCK, token)


def _dead_local_holder(holder: str | bytes) -> bool:
    """The lock belongs to a process on this machine that no longer exists (killed mid-cycle)."""
    text = holder.decode() if isinstance(holder, bytes) else holder
    host, _, rest = text.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's trainer: only its TTL can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def holder_alive(client: redis.Redis) -> bool:
    """A live process holds the cycle lock: its key exists (a killed holder's lapses within the TTL)
    and, when the holder ran on this machine, its pid still exists (known at once)."""
    holder = client.get(LOCK)
    return holder is not None and bool(holder) and not _dead_local_holder(holder)


def interrupted(state: dict) -> dict:
    """A cycle state recorded as running whose process is gone, as it must be shown: not running."""
    return {
        **state,
        "status": "interrupted",
        "message": f"interrupted during {state.get('stage')}: the process running it stopped "
        f"(killed or crashed); the serving version is untouched. Last step: {state.get('message')}",
    }


def observed_state(client: redis.Redis) -> dict | None:
    """The running (or last) cycle's state, ``interrupted`` when it says running but no one runs it."""
    raw = client.get(STATE)
    state = json.loads(raw) if raw else None
    if state is None or state.get("status") != "running" or holder_alive(client):
        return state
    raw = client.get(STATE)  # it may have finished (and released the lock) since the first read
    state = json.loads(raw) if raw else None
    return interrupted(state) if state and state.get("status") == "running" else state


def running_cycle(client: redis.Redis) -> dict | None:
    """The state of the cycle a live process is running now, or None."""
    state = observed_state(client)
    return state if state and state.get("status") == "running" else None


def close_interrupted(client: redis.Redis) -> dict | None:
    """Record a killed cycle's state as interrupted in the history (called by the next lock holder)."""
    raw = client.get(STATE)
    state = json.loads(raw) if raw else None
    if state is None or state.get("status") != "running":
        return None
    final = interrupted(state)
    record_final(client, final, None)
    return final


def wait_cycle(client: redis.Redis, cycle_id: str, timeout_s: float, poll_s: float = 0.5) -> dict | None:
    """The final state of cycle ``cycle_id`` (``interrupted`` if its process dies); None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = observed_state(client)
        if state is not None and state.get("cycle_id") == cycle_id:
            if state.get("status") != "running":
                return state
        else:  # a later cycle replaced it: its final state is in the history
            done = next((c for c in history(client, HISTORY_KEEP) if c.get("cycle_id") == cycle_id), None)
            if done is not None:
                return done
        time.sleep(poll_s)
    return None


def history(client: redis.Redis, limit: int) -> list[dict]:
    return [json.loads(x) for x in client.lrange(HISTORY, 0, limit - 1)]


def publish_state(client: redis.Redis, state: dict) -> None:
    client.set(STATE, json.dumps(state))


def record_final(client: redis.Redis, state: dict, request_id: str | None) -> None:
    final = json.dumps(state)
    pipe = client.pipeline()
    pipe.set(STATE, final)
    pipe.lpush(HISTORY, final)
    pipe.ltrim(HISTORY, 0, HISTORY_KEEP - 1)
    if request_id:
        pipe.set(RESULT.format(request_id), final, ex=RESULT_TTL_S)
    pipe.execute()


def request_retrain(client: redis.Redis, force: bool = False, reason: str = "operator") -> str:
    request_id = uuid.uuid4().hex[:12]
    client.rpush(
        REQUESTS, json.dumps({"id": request_id, "force": force, "reason": reason, "at": time.time()})
    )
    return request_id


def next_request(client: redis.Redis, timeout_s: float) -> dict | None:
    popped = client.blpop([REQUESTS], timeout=max(1, int(timeout_s)))
    return json.loads(popped[1]) if popped else None


def requeue(client: redis.Redis, request: dict) -> None:
    client.lpush(REQUESTS, json.dumps(request))


def wait_result(client: redis.Redis, request_id: str, timeout_s: float, poll_s: float = 0.5) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw = client.get(RESULT.format(request_id))
        if raw:
            return json.loads(raw)
        time.sleep(poll_s)
    return None


def beat(client: redis.Redis, ttl_s: int) -> None:
    """The trainer is alive; the value names this process so a killed one is known dead at once."""
    client.set(HEARTBEAT, f"{socket.gethostname()}:{os.getpid()}:{time.time()}", ex=ttl_s)


@contextmanager
def beating(client: redis.Redis, ttl_s: int) -> Iterator[None]:
    """Keep the trainer's heartbeat alive while it is busy (a cycle takes longer than the TTL)."""
    done = threading.Event()

    def run() -> None:
        while not done.wait(ttl_s / 3):
            try:
                beat(client, ttl_s)
            except redis.RedisError as exc:  # Redis restarting: the next beat catches up
                log.warning("trainer heartbeat: %s", exc)

    thread = threading.Thread(target=run, name="trainer-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def trainer_alive(client: redis.Redis) -> bool:
    """A trainer beat within its TTL, and it is not a process of this machine that has died."""
    holder = client.get(HEARTBEAT)
    return holder is not None and bool(holder) and not _dead_local_holder(holder)


def cycle_status(client: redis.Redis, limit: int = 10) -> dict:
    """The running (or last) cycle, the last ones' outcomes, and whether a trainer listens.

    ``cycle`` says ``interrupted`` for a cycle whose process died: liveness is the lock holder's.
    """
    cycle = observed_state(client)
    return {
        "trainer_alive": trainer_alive(client),
        "running": bool(cycle and cycle.get("status") == "running"),
        "queued_requests": client.llen(REQUESTS),
        "cycle": cycle,
        "history": history(client, limit),
        "refused": refusals(history(client, HISTORY_KEEP)),
    }


def refusals(cycles: list[dict]) -> dict:
    """How many cycles in a row (newest first) the gate refused, and what the last refused one tried.

    Cycles that did not train (skipped for too little feedback, failed) neither extend nor end the
    streak; a published one ends it.
    """
    streak, last = 0, None
    for cycle in cycles:
        if cycle.get("status") == "published":
            break
        if cycle.get("status") == "rejected":
            streak += 1
            last = last or cycle
    if last is None:
        return {"streak": 0, "last": None}
    reports = last.get("reports", {})
    tried = [
        {"checkpoint": p.get("label"), "passed": p.get("passed"), "summary": p.get("summary")}
        for p in reports.get("trajectory", [])
    ]
    return {
        "streak": streak,
        "last": {
            "cycle_id": last.get("cycle_id"),
            "message": last.get("message"),
            "warm_start": reports.get("warm_start"),
            "tried": tried,
        },
    }


def announce_model(client: redis.Redis, version: str) -> int:
    """Tell every subscribed server a version was published; returns how many heard it."""
    return int(client.publish(MODELS_CHANNEL, version))


def listen_for_models(
    client: redis.Redis, on_model: Callable[[str], None], stop: threading.Event
) -> threading.Thread:
    """Call ``on_model(version)`` for each announcement until ``stop``; reconnects after Redis restarts."""

    def run() -> None:
        while not stop.is_set():
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(MODELS_CHANNEL)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        on_model(data.decode() if isinstance(data, bytes) else str(data))
                pubsub.close()
            except (redis.RedisError, OSError, TypeError, ValueError) as exc:
                if stop.is_set():  # the connection closed under us at shutdown
                    return
                log.warning("model announcements: %s; listening again shortly", exc)
                stop.wait(1.0)

    thread = threading.Thread(target=run, name="model-announcements", daemon=True)
    thread.start()
    return thread
