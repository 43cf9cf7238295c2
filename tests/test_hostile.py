"""Hostile input and faults (issue 26): what a probe of a running server found, each pinned by a test
that failed on the main branch of the time. Real parts throughout: the tiny model behind a real
uvicorn, a real redis-server, ``editloop lsp`` and ``editloop`` commands as subprocesses, and a
trainer stand-in that is a real process holding the real cycle lock until it is SIGKILLed.

Defects and their tests (the numbers are the issue's):

1. unbounded ``language``: test_language_names_are_bounded, test_unknown_languages_never_fetch_a_grammar
3. 500s: test_inputs_that_answered_500_get_a_4xx_with_a_code
4. ``editloop lsp`` framing and ``--tcp``: test_lsp_*
6. public ``/health``: test_public_health_*, test_health_detail_needs_a_token
7. ``document_id`` across tokens: test_another_token_cannot_cancel_a_completion
8. chunked 413 and the early 503: test_an_oversized_chunked_body_gets_413,
   test_a_full_queue_answers_before_the_body
9. dead cycles, ``/admin/status``, ``retrain --wait``: test_admin_status_*, test_a_killed_trainers_cycle_*,
   test_retrain_wait_attaches_to_the_running_cycle

2, 5 and 10 are in test_settings.py, test_feedback_privacy.py, test_registry.py and test_manager.py.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from editloop.completion.syntax import SyntaxChecker
from editloop.feedback import control
from editloop.server.background import free_port
from tests.redis_fixtures import running_redis
from tests.server_fixtures import ADMIN, USER, auth, copy_home, running_server

OTHER = "other-user-token"
STEP_S = 60  # one round trip on a busy 2-core machine, including a Python start


@pytest.fixture(scope="module")
def feedback_redis(tmp_path_factory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("hostile-redis")) as server:
        yield server.url


@pytest.fixture(scope="module")
def server(tiny_settings, tiny_version, feedback_redis, tmp_path_factory):
    home = copy_home(tiny_settings, tmp_path_factory.mktemp("hostile-home"))
    with running_server(
        home,
        api_tokens=[USER, OTHER],
        redis_url=feedback_redis,
        max_body_bytes=100_000,
        max_candidates=16,
        abstain_threshold=0.0,
        cache_entries=0,
    ) as (url, settings, app):
        yield url, settings, app


# 1. language ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/complete", {"prefix": "x = ", "language": "x" * 90_000}),  # under the body limit
        ("/complete", {"prefix": "x = ", "language": "python\nINFO editloop: forged line"}),
        ("/tabby/v1/completions", {"language": "y" * 90_000, "segments": {"prefix": "x = "}}),
    ],
    ids=["huge", "newline", "tabby"],
)
def test_language_names_are_bounded(server, path: str, body: dict) -> None:
    url, _, _ = server
    reply = httpx.post(f"{url}{path}", headers=auth(), json=body, timeout=STEP_S)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request"
    assert "language" in reply.json()["error"]["message"]


def test_real_language_ids_still_work(server) -> None:
    url, _, _ = server
    for language in ("python", "typescriptreact", "objective-c", "c++", "c#", "plaintext"):
        reply = httpx.post(
            f"{url}/complete", headers=auth(), json={"prefix": "x = ", "language": language}, timeout=STEP_S
        )
        assert reply.status_code == 200, (language, reply.text)


def test_unknown_languages_never_fetch_a_grammar(monkeypatch, caplog) -> None:
    """On main each unknown name went to tree-sitter-language-pack's downloader, under the lock every
    request shares, and was cached and logged whole."""
    import tree_sitter_language_pack as pack

    fetched: list[str] = []
    monkeypatch.setattr(pack, "get_language", lambda name: fetched.append(name))
    checker = SyntaxChecker()
    with caplog.at_level("DEBUG", logger="editloop"):
        for i in range(50):
            assert checker.check(f"made-up-{i}-" + "z" * 1000, "x = ", "1", "\n") is None
        assert checker.check("python", "x = ", "1", "\n") is True
    assert fetched == []
    assert not any("z" * 100 in r.getMessage() for r in caplog.records)


# 3. answers that were 500 -----------------------------------------------------------------------


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("method", "path", "token", "body", "status", "field"),
    [
        ("POST", "/feedback", USER, _deep_json(45_000), 400, "body"),
        ("POST", "/complete", USER, _deep_json(45_000), 400, ""),
        (
            "POST",
            "/feedback",
            USER,
            {
                "type": "shown",
                "event_id": "e-far",
                "completion_id": "c1",
                "timestamp": "9999-12-31T23:00:00-12:00",
            },
            400,
            "timestamp",
        ),
        ("POST", "/admin/models/v" + "1" * 4999 + "/activate", ADMIN, None, 404, ""),
        ("POST", "/admin/models/" + "x" * 5000 + "/activate", ADMIN, None, 404, ""),
    ],
    ids=[
        "feedback-deep-json",
        "complete-deep-json",
        "far-timestamp",
        "long-version",
        "long-name",
    ],
)
def test_inputs_that_answered_500_get_a_4xx_with_a_code(
    server, method, path, token, body, status, field
) -> None:
    url, _, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    reply = httpx.request(
        method,
        f"{url}{path}",
        headers={**auth(token), "content-type": "application/json"},
        content=content,
        timeout=STEP_S,
    )
    assert reply.status_code == status, reply.text[:300]
    error = reply.json()["error"]
    assert error["code"] in {"invalid_request", "unknown_version"}
    assert field in error["message"]
    assert len(reply.content) < 2000  # the 5,000-character name is not echoed whole


def test_infill_takes_more_extras_than_a_request_carries(server) -> None:
    """On main 33 to 64 ``input_extra`` items were a 500 (the engine takes 32). llama.vim's ring
    buffer may hold more than 32 chunks: the newest are used; beyond /infill's own 64, a 400."""
    url, _, _ = server

    def infill(count: int) -> httpx.Response:
        extras = [{"filename": f"f{i}.py", "text": f"v{i} = {i}"} for i in range(count)]
        body = {"input_prefix": "x = ", "input_extra": extras}
        return httpx.post(f"{url}/infill", headers=auth(), json=body, timeout=STEP_S)

    assert infill(40).status_code == 200, infill(40).text
    too_many = infill(65)
    assert too_many.status_code == 400 and too_many.json()["error"]["message"].startswith("input_extra")


# 6. /health -------------------------------------------------------------------------------------


@pytest.fixture
def broken_server(tmp_path):
    """A server whose only version's manifest is a symlink to a file holding a secret."""
    secret = tmp_path / "elsewhere" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:SECRET-IN-A-FILE:/root:/bin/bash\n")
    version = tmp_path / "home" / "models" / "versions" / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").symlink_to(secret)
    (tmp_path / "home" / "models" / "current.json").write_text('{"version": "v1", "previous": []}')
    with running_server(tmp_path / "home", feedback_enabled=False) as (url, _, _):
        yield url, tmp_path


def test_public_health_has_no_paths_and_no_error_text(broken_server) -> None:
    url, root = broken_server
    reply = httpx.get(f"{url}/health", timeout=STEP_S)
    assert reply.status_code == 200  # alive; readiness is the next route
    assert reply.json() == {"status": "no_model", "ready": False, "model": {"version": None}}
    assert str(root) not in reply.text and "SECRET" not in reply.text


def test_public_readiness_is_503_without_a_model(broken_server, server) -> None:
    url, _ = broken_server
    reply = httpx.get(f"{url}/health/ready", timeout=STEP_S)
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "no_model"
    assert "SECRET" not in reply.text
    serving, _, _ = server
    ready = httpx.get(f"{serving}/health/ready", timeout=STEP_S)
    assert ready.status_code == 200 and ready.json()["model"]["version"] == "v1"


def test_health_detail_needs_a_token_and_quotes_no_file(broken_server) -> None:
    url, _ = broken_server
    assert httpx.get(f"{url}/health/detail", timeout=STEP_S).status_code == 401
    detail = httpx.get(f"{url}/health/detail", headers=auth(), timeout=STEP_S)
    assert detail.status_code == 200
    assert "symlink" in detail.json()["model"]["last_error"]
    assert "SECRET" not in detail.text


# 7. document_id ---------------------------------------------------------------------------------


def _race(url: str, limiter, first: str, second: str, attempt: int) -> tuple[list[str], bool]:
    """A long completion by ``first`` and, while it decodes, a short one by ``second`` on the same
    document; the first one's finish reasons, and whether the second was sent before the first
    ended (a cancelled first one ends just after the second arrives)."""
    done: dict[str, float] = {}
    replies: dict[str, dict] = {}
    document = f"doc-{attempt}-{time.monotonic_ns()}"

    def long() -> None:
        body = {
            "prefix": f"def f{attempt}(x):\n    ",
            "n": 16,
            "max_tokens": 200,
            "temperature": 2.0,
            "mode": "block",
            "seed": attempt,
            "document_id": document,
        }
        replies["long"] = httpx.post(f"{url}/complete", headers=auth(first), json=body, timeout=STEP_S).json()
        done["long"] = time.monotonic()

    thread = threading.Thread(target=long)
    thread.start()
    while thread.is_alive() and not limiter.pending:  # until the long one is in the engine
        time.sleep(0.002)
    short = {"prefix": "y = ", "max_tokens": 1, "document_id": document, "seed": attempt}
    second_sent = time.monotonic()
    assert httpx.post(f"{url}/complete", headers=auth(second), json=short, timeout=STEP_S).status_code == 200
    thread.join()
    reasons = [c["finish_reason"] for c in replies["long"]["candidates"]]
    return reasons, second_sent < done["long"]


def _overlapping_race(url: str, limiter, first: str, second: str) -> list[str]:
    for attempt in range(8):
        reasons, overlapped = _race(url, limiter, first, second, attempt)
        if overlapped:
            return reasons
    pytest.skip("the long completion always ended before the second request: no race to judge")


def test_another_token_cannot_cancel_a_completion(server) -> None:
    url, _, app = server
    limiter = app.state.services.limiter
    # The same caller's newer request does cancel (latest wins): the race is real.
    assert "cancelled" in _overlapping_race(url, limiter, USER, USER)
    assert "cancelled" not in _overlapping_race(url, limiter, USER, OTHER)


# 8. body limits and overload --------------------------------------------------------------------


def test_an_oversized_chunked_body_gets_413(server) -> None:
    url, settings, _ = server

    def chunks() -> Iterator[bytes]:
        yield b'{"prefix": "'
        for _ in range(settings.max_body_bytes // 10_000 + 5):
            yield b"x" * 10_000
        yield b'"}'

    for path in ("/complete", "/feedback"):
        reply = httpx.post(f"{url}{path}", headers=auth(), content=chunks(), timeout=STEP_S)
        assert reply.status_code == 413, (path, reply.text)
        assert reply.json()["error"]["code"] == "body_too_large"


def test_a_full_queue_answers_before_the_body(server) -> None:
    """The 503 comes while the client has sent only headers: no body is read for a refused request."""
    url, _, app = server
    limiter = app.state.services.limiter
    taken = 0
    while limiter.pending < limiter.limit:  # fill it from inside, as in test_server's 503 test
        limiter.acquire()
        taken += 1
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /complete HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + USER.encode() + b"\r\nContent-Length: 5000\r\n\r\n"
            )
            head = b""
            while b'"}}' not in head:  # the headers and the JSON body may come in two reads
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    finally:
        for _ in range(taken):
            limiter.release()
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b'"overloaded"' in head


# 9. cycles --------------------------------------------------------------------------------------

STAND_IN = textwrap.dedent(
    """
    import json, sys, time
    import redis
    from editloop.feedback import control

    client = redis.Redis.from_url(sys.argv[1])
    cycle_id = sys.argv[2]
    with control.cycle_lock(client):
        control.beat(client, 600)  # a trainer's heartbeat, alive until the test ends
        state = {"cycle_id": cycle_id, "stage": "sft", "status": "running", "progress": 0.25,
                 "message": "SFT on 40 feedback samples", "started_at": time.time(),
                 "parent": "v1", "version": None, "reports": {"trigger": "feedback"}}
        control.publish_state(client, state)
        print("running", flush=True)
        sys.stdin.readline()  # the test says when the cycle "ends"
        final = {**state, "stage": "gate", "status": "rejected", "progress": 1.0,
                 "message": "gate: no gain", "finished_at": time.time()}
        control.publish_state(client, final)
    control.record_final(client, final, None)
    print("finished", flush=True)
    """
)


def _stand_in(redis_url: str, cycle_id: str) -> subprocess.Popen:
    """A trainer's part a real process plays: holds the lock, beats, publishes a running state."""
    process = subprocess.Popen(
        [sys.executable, "-c", STAND_IN, redis_url, cycle_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "running"
    return process


def _editloop(env: dict, *args: str, timeout: float = STEP_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "editloop", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _cli_env(home: Path, redis_url: str) -> dict[str, str]:
    return {**os.environ, "EDITLOOP_HOME": str(home), "EDITLOOP_REDIS_URL": redis_url}


def test_admin_status_names_the_current_version(server) -> None:
    """On main the cycle's state overwrote "current": null while v1 was current."""
    url, _, _ = server
    status = httpx.get(f"{url}/admin/status", headers=auth(ADMIN), timeout=STEP_S).json()
    assert status["current"] == "v1" and status["model"]["version"] == "v1"


def test_a_killed_trainers_cycle_shows_interrupted_everywhere(server, feedback_redis, tmp_path) -> None:
    url, settings, _ = server
    client = redis.Redis.from_url(feedback_redis)
    stand_in = _stand_in(feedback_redis, "cycle-killed")
    env = _cli_env(settings.home, feedback_redis)
    try:
        assert "running: cycle-killed" in _editloop(env, "status").stdout
        stand_in.send_signal(signal.SIGKILL)
        stand_in.wait(timeout=STEP_S)
        cli = _editloop(env, "status")
        assert cli.returncode == 0, cli.stderr
        assert "interrupted: cycle-killed" in cli.stdout and "running: cycle-killed" not in cli.stdout
        status = httpx.get(f"{url}/admin/status", headers=auth(ADMIN), timeout=STEP_S).json()
        assert status["current"] == "v1"
        assert status["cycle"]["status"] == "interrupted" and not status["running"]
        assert "interrupted during sft" in status["cycle"]["message"]
        board = httpx.get(f"{url}/dashboard/data", headers=auth(), timeout=STEP_S).json()["cycles"]
        assert board["cycle"]["status"] == "interrupted" and not board["running"]
    finally:
        stand_in.kill()
        client.delete(control.STATE, control.LOCK, control.HEARTBEAT)


def test_retrain_wait_attaches_to_the_running_cycle(feedback_redis, tmp_path) -> None:
    """On main `retrain --wait` queued a request no one would take while the trainer was busy, and
    failed; an operator expects it to wait for the cycle already running and report it."""
    client = redis.Redis.from_url(feedback_redis)
    stand_in = _stand_in(feedback_redis, "cycle-started-by-trainer")
    try:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "editloop", "retrain", "--wait", "--json", "--timeout", "120"],
            env=_cli_env(tmp_path / "home", feedback_redis),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert waiting.stderr is not None
        note = waiting.stderr.readline()  # printed once it attached
        assert "cycle-started-by-trainer" in note and "already running" in note, note
        assert stand_in.stdin is not None
        stand_in.stdin.write("end\n")
        stand_in.stdin.flush()
        out, _ = waiting.communicate(timeout=STEP_S)
        result = json.loads(out)
        assert result["cycle_id"] == "cycle-started-by-trainer" and result["status"] == "rejected"
        assert waiting.returncode == 0
    finally:
        stand_in.kill()
        client.delete(control.STATE, control.LOCK, control.HEARTBEAT, control.HISTORY)


# 4. editloop lsp --------------------------------------------------------------------------------


def _frame(message: dict, length_error: int = 0) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % (len(body) + length_error) + body


async def _read_frame(stream: asyncio.StreamReader) -> dict:
    length = None
    while True:
        line = await stream.readline()
        if not line:
            raise EOFError("the server closed its output")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line == b"\r\n" and length is not None:
            return json.loads(await stream.readexactly(length))


async def _reply(stream: asyncio.StreamReader, msg_id: int) -> dict:
    """The response to request ``msg_id`` (notifications such as window/logMessage pass by)."""
    while True:
        message = await asyncio.wait_for(_read_frame(stream), STEP_S)
        if message.get("id") == msg_id and "method" not in message:
            return message


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"processId": None, "rootUri": None, "capabilities": {}},
}
SHUTDOWN = {"jsonrpc": "2.0", "id": 2, "method": "shutdown"}
EXIT = {"jsonrpc": "2.0", "method": "exit"}


def _lsp_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "EDITLOOP_HOME": str(tmp_path / "lsp-home"),
        "EDITLOOP_FEEDBACK_ENABLED": "false",
        "EDITLOOP_LSP_TELEMETRY": "false",
        **extra,
    }


async def _start_lsp(tmp_path: Path, *args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "editloop",
        "lsp",
        *args,
        env=_lsp_env(tmp_path, **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _finish(process: asyncio.subprocess.Process) -> str:
    """shutdown → reply, exit → the process ends 0; its stderr."""
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.write(_frame(SHUTDOWN))
    assert (await _reply(process.stdout, 2)).get("result", "missing") is None
    process.stdin.write(_frame(EXIT))
    await process.stdin.drain()
    assert await asyncio.wait_for(process.wait(), STEP_S) == 0
    return (await process.stderr.read()).decode()


def _did_open(text: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "method": "textDocument/didOpen",
        "params": {
            "textDocument": {"uri": "file:///w/a.py", "languageId": "python", "version": 1, "text": text}
        },
    }


@pytest.mark.asyncio(loop_scope="function")
async def test_lsp_skips_an_absurd_content_length(tmp_path) -> None:
    """On main `Content-Length: 999999999999` killed the server (MemoryError)."""
    process = await _start_lsp(tmp_path)
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"Content-Length: 999999999999\r\n\r\n" + b'{"jsonrpc": "2.0", "method": "x"}')
        process.stdin.write(_frame(INITIALIZE))
        assert "capabilities" in (await _reply(process.stdout, 1))["result"]
        stderr = await _finish(process)
        assert "999999999999 bytes is over the limit" in stderr
    finally:
        if process.returncode is None:
            process.kill()


@pytest.mark.parametrize("error", [+40, -7], ids=["length-too-long", "length-too-short"])
@pytest.mark.asyncio(loop_scope="function")
async def test_lsp_resyncs_after_a_wrong_content_length(tmp_path, error: int) -> None:
    """On main one wrong Content-Length swallowed every later message: `shutdown` and `exit` too."""
    process = await _start_lsp(tmp_path)
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(_frame(INITIALIZE))
        await _reply(process.stdout, 1)
        process.stdin.write(_frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
        process.stdin.write(_frame(_did_open("import os\n" * 20), length_error=error))
        stderr = await _finish(process)
        assert "LSP" in stderr  # the broken frame is reported
    finally:
        if process.returncode is None:
            process.kill()


def test_lsp_tcp_refuses_the_network_without_tokens(tmp_path) -> None:
    """On main `editloop lsp --tcp 0.0.0.0:PORT` listened to the network with no authentication."""
    env = _lsp_env(tmp_path)
    env.pop("EDITLOOP_API_TOKENS", None)
    try:
        done = _editloop(env, "lsp", "--tcp", f"0.0.0.0:{free_port()}", timeout=STEP_S)
    except subprocess.TimeoutExpired:
        pytest.fail("editloop lsp --tcp 0.0.0.0 started listening without tokens")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("error: --tcp 0.0.0.0") and "EDITLOOP_API_TOKENS" in lines[0]
    )


async def _tcp_initialize(port: int, options: dict | None) -> dict:
    for _ in range(600):  # until it listens
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("editloop lsp --tcp never listened")
    params = {**INITIALIZE["params"], "initializationOptions": options} if options else INITIALIZE["params"]
    writer.write(_frame({**INITIALIZE, "params": params}))
    await writer.drain()
    try:
        return await _reply(reader, 1)
    finally:
        writer.close()


@pytest.mark.asyncio(loop_scope="function")
async def test_lsp_tcp_with_tokens_wants_one_in_initialize(tmp_path) -> None:
    port = free_port()
    process = await _start_lsp(
        tmp_path, "--tcp", f"127.0.0.1:{port}", EDITLOOP_API_TOKENS=json.dumps(["tcp-tok"])
    )
    try:
        refused = await _tcp_initialize(port, None)
        assert refused["error"]["code"] == -32001 and "authToken" in refused["error"]["message"]
        wrong = await _tcp_initialize(port, {"authToken": "nope"})
        assert "error" in wrong
        accepted = await _tcp_initialize(port, {"editloop": {"authToken": "tcp-tok"}})
        assert "capabilities" in accepted["result"]
    finally:
        process.kill()
        await process.wait()
