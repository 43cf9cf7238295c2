"""``POST /feedback`` and ``/tabby/v1/events`` on a real server over a real redis-server."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from editloop.feedback.store import FeedbackStore
from editloop.server.background import background_server, free_port
from editloop.settings import load_settings
from tests.redis_fixtures import running_redis
from tests.server_fixtures import USER, auth, copy_home, running_server

EDITLOOP = Path(sys.executable).with_name("editloop")


def shown(event_id: str, **extra) -> dict:
    return {"type": "shown", "event_id": event_id, "completion_id": "c1", **extra}


def wait_for(condition, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ids_in(store: FeedbackStore, project: str = "default") -> list[str]:
    return [s.event.event_id for s in store.events(project)]


@pytest.fixture
def server(redis_proc, tmp_path):
    settings = load_settings(home=tmp_path / "home", port=free_port(), redis_url=redis_proc.url)
    with background_server(settings) as (url, app):
        yield url, FeedbackStore.from_url(redis_proc.url), app


def test_a_bad_event_gets_400_naming_its_field_and_the_good_ones_are_kept(server) -> None:
    url, store, _ = server
    batch = [
        shown("e1"),
        {"type": "accepted", "event_id": "e2"},  # no completion_id
        shown("e3", choice=-1),
        {"type": "teleported", "event_id": "e4", "completion_id": "c1"},
        {"type": "edited", "event_id": "e5", "completion_id": "c1", "text": "x = 1\n"},
    ]
    reply = httpx.post(f"{url}/feedback", json={"events": batch}, timeout=30)
    body = reply.json()["error"]
    assert reply.status_code == 400
    assert body["code"] == "invalid_request"
    assert body["message"].startswith("events[1].completion_id: ")
    assert [f["field"] for f in body["fields"]] == [
        "events[1].completion_id",
        "events[2].choice",
        "events[3].type",
    ]
    assert body["stored"] == 2
    assert ids_in(store) == ["e1", "e5"]


def test_one_event_a_list_or_a_batch_and_retries_are_duplicates(server) -> None:
    url, store, _ = server
    first = httpx.post(f"{url}/feedback", json=shown("e1"), timeout=30)
    listed = httpx.post(f"{url}/feedback", json=[shown("e1"), shown("e2", project="other")], timeout=30)
    assert (first.status_code, first.json()["stored"]) == (202, 1)
    assert (listed.status_code, listed.json()["stored"], listed.json()["duplicate"]) == (202, 1, 1)
    assert ids_in(store) == ["e1"] and ids_in(store, "other") == ["e2"]
    not_json = httpx.post(f"{url}/feedback", content=b"{oops", timeout=30)
    assert not_json.status_code == 400 and not_json.json()["error"]["message"].startswith("body:")


def test_tabby_events_become_shown_accepted_and_rejected(server) -> None:
    url, store, _ = server
    view = {"type": "view", "completion_id": "cmpl-1", "choice_index": 0, "view_id": "v1"}
    select = {"type": "select", "completion_id": "cmpl-1", "choice_index": 0, "view_id": "v1", "elapsed": 900}
    dismiss = {"type": "dismiss", "completion_id": "cmpl-2", "choice_index": 1, "view_id": "v2"}
    replies = [
        httpx.post(f"{url}/tabby/v1/events", json=view, timeout=30),
        httpx.post(f"{url}/tabby/v1/events", params={"select_kind": "line"}, json=select, timeout=30),
        httpx.post(f"{url}/tabby/v1/events", json=dismiss, timeout=30),
        httpx.post(f"{url}/tabby/v1/events", json=view, timeout=30),  # resent: the same event
    ]
    assert [r.status_code for r in replies] == [202] * 4
    events = [s.event for s in store.events("default")]
    assert [(e.type, e.completion_id, e.choice) for e in events] == [
        ("shown", "cmpl-1", 0),
        ("accepted", "cmpl-1", 0),
        ("rejected", "cmpl-2", 1),
    ]
    assert events[1].partial == "line" and events[2].reason == "dismissed"
    assert all(e.event_id.startswith("tabby-") for e in events)
    bad = httpx.post(f"{url}/tabby/v1/events", json={**view, "type": "zoom"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("type: ")


def test_the_spool_takes_events_while_redis_is_down_and_replays_them(server, redis_proc, tmp_path) -> None:
    url, store, app = server
    httpx.post(f"{url}/feedback", json=[shown("before")], timeout=30)
    redis_proc.kill()
    during = [shown(f"down{i}") for i in range(50)]
    reply = httpx.post(f"{url}/feedback", json={"events": during}, timeout=30)
    assert reply.status_code == 202 and reply.json()["spooled"] == 50
    spool = tmp_path / "home" / "feedback" / "spool.jsonl"
    assert len(spool.read_text().splitlines()) == 50
    health = httpx.get(f"{url}/health/detail", timeout=30).json()["feedback"]
    assert health["status"] == "spooling" and health["spool_pending"] == 50

    redis_proc.start()
    wait_for(lambda: len(ids_in(store)) == 51, what="the spool to replay")
    assert ids_in(store) == ["before"] + [f"down{i}" for i in range(50)]
    again = httpx.post(f"{url}/feedback", json={"events": during}, timeout=30)
    assert again.json()["duplicate"] == 50  # replayed with the same ids
    assert app.state.services.feedback.log.spool.pending() == 0


def _serve(home: Path, port: int, redis_url: str) -> subprocess.Popen:
    # No trainer sidecar: a SIGKILLed server would leave it running.
    env = {
        **os.environ,
        "EDITLOOP_HOME": str(home),
        "EDITLOOP_REDIS_URL": redis_url,
        "EDITLOOP_TRAINER": "false",
    }
    process = subprocess.Popen(
        [str(EDITLOOP), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), 60, "editloop serve to answer")
    except AssertionError:
        process.kill()
        raise AssertionError(process.communicate()[1].decode()[-2000:]) from None
    return process


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_killing_the_server_mid_batch_while_the_client_retries_duplicates_nothing(
    redis_proc, tmp_path
) -> None:
    port, batches, size = free_port(), 30, 500
    url = f"http://127.0.0.1:{port}"
    store = FeedbackStore.from_url(redis_proc.url)
    stream = store.keys.stream("default")
    processes = [_serve(tmp_path / "home", port, redis_proc.url)]
    acked = [0]
    seen = {}

    def killer() -> None:
        # SIGKILL the moment Redis holds events the client has not been acknowledged: mid-batch.
        deadline = time.monotonic() + 20
        while (length := store.client.xlen(stream)) <= max(
            acked[0], 3 * size
        ) and time.monotonic() < deadline:
            pass
        seen.update(length=length, acked=acked[0])
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait()
        processes.append(_serve(tmp_path / "home", port, redis_proc.url))

    thread = threading.Thread(target=killer)
    thread.start()
    retries, duplicates = 0, 0
    try:
        for b in range(batches):
            events = [shown(f"b{b}-{i}") for i in range(size)]
            while True:
                try:
                    reply = httpx.post(f"{url}/feedback", json={"events": events}, timeout=30)
                    if reply.status_code == 202:
                        duplicates += reply.json()["duplicate"]
                        acked[0] += size
                        break
                except httpx.HTTPError:
                    pass
                retries += 1
                time.sleep(0.1)
        thread.join()
    finally:
        for process in processes:
            process.kill()
            process.wait()
    ids = ids_in(store)
    assert retries > 0, "the kill never interrupted the client"
    assert len(ids) == len(set(ids)) == batches * size
    if seen["length"] > seen["acked"] and seen["length"] % size:
        assert duplicates > 0  # the retried batch was partly stored already: those were recognised


def test_the_embedded_redis_survives_sigkill_and_keeps_every_event(tmp_path) -> None:
    """What `make run` does: no EDITLOOP_REDIS_URL, editloop runs and watches its own redis-server."""
    settings = load_settings(home=tmp_path / "home", port=free_port())
    with background_server(settings) as (url, app):
        embedded = app.state.services.feedback.log.embedded
        assert httpx.get(f"{url}/health/detail", timeout=30).json()["feedback"]["redis"]["mode"] == "embedded"
        assert (
            httpx.post(f"{url}/feedback", json=[shown(f"e{i}") for i in range(20)], timeout=30).status_code
            == 202
        )
        tabby = {"type": "select", "completion_id": "cmpl-9", "choice_index": 0}
        assert httpx.post(f"{url}/tabby/v1/events", json=tabby, timeout=30).status_code == 202
        pid = embedded.server.process.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: embedded.restarts >= 1 and embedded.server.ping(), what="the supervisor's restart")
        assert embedded.server.process.pid != pid
        reply = httpx.post(f"{url}/feedback", json=[shown("after")], timeout=30)
        assert reply.status_code == 202
        store = app.state.services.feedback.log.store
        wait_for(lambda: len(ids_in(store)) == 22, what="all events in Redis")  # spooled ones replayed
        events = [s.event for s in store.events("default")]
        socket = embedded.server.socket
    assert [e.event_id for e in events[:20]] == [f"e{i}" for i in range(20)]
    assert events[20].type == "accepted" and events[21].event_id == "after"
    assert not socket.exists(), "the embedded redis-server was not stopped with the server"


def test_every_served_completion_is_recorded_off_the_request_path(
    tiny_settings, tiny_version, tmp_path
) -> None:
    home = copy_home(tiny_settings, tmp_path / "home")
    with (
        running_redis(tmp_path / "redis") as proc,
        running_server(home, redis_url=proc.url) as (url, _, _app),
    ):
        request = {
            "prefix": "def add(a, b):\n    return ",
            "suffix": "\n",
            "n": 4,
            "project": "demo",
            "user": "ana",
        }
        reply = httpx.post(f"{url}/complete", headers=auth(USER), json=request, timeout=60).json()
        infill = httpx.post(
            f"{url}/infill", headers=auth(USER), json={"input_prefix": "x = "}, timeout=60
        ).json()
        store = FeedbackStore.from_url(proc.url)
        (completion,) = wait_for(lambda: [s.event for s in store.events("demo")], what="the completion event")
        (other,) = wait_for(lambda: [s.event for s in store.events("default")], what="the infill event")
    assert completion.completion_id == reply["id"] and completion.event_id == f"{reply['id']}.completion"
    assert (completion.user, completion.source, completion.model_version) == (
        "ana",
        "complete",
        tiny_version.name,
    )
    assert completion.prefix == request["prefix"] and completion.latency_ms > 0
    shown_texts = [c.text for c in completion.candidates if c.shown]
    assert shown_texts == [c["text"] for c in reply["choices"]]
    assert [c.score for c in completion.candidates if c.shown] == [c["score"] for c in reply["choices"]]
    assert {c.text for c in completion.candidates} == {c["text"] for c in reply["candidates"]}
    assert other.completion_id == infill["editloop"]["id"] and other.source == "infill"


def test_cli_stats_and_export(server, redis_proc, tmp_path) -> None:
    url, _, _ = server
    httpx.post(f"{url}/feedback", json=[shown("e1"), shown("e2", project="p2")], timeout=30)
    env = {**os.environ, "EDITLOOP_HOME": str(tmp_path / "cli-home"), "EDITLOOP_REDIS_URL": redis_proc.url}
    stats = subprocess.run(
        [str(EDITLOOP), "feedback", "stats", "--json"], env=env, capture_output=True, text=True
    )
    exported = subprocess.run(
        [str(EDITLOOP), "feedback", "export", "--project", "p2", "--since", "1h"],
        env=env,
        capture_output=True,
        text=True,
    )
    bad = subprocess.run(
        [str(EDITLOOP), "feedback", "export", "--since", "soon"], env=env, capture_output=True, text=True
    )
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["counts"] == {"shown": 2}
    assert [json.loads(line)["event_id"] for line in exported.stdout.splitlines()] == ["e2"]
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: --since 'soon'")
