"""The real ``tabby-agent`` 1.5.0, Tabby's editor-side LSP, completing from editloop's ``/tabby`` routes.

What 1.5.0 actually does (read from its bundled ``dist/cli.js``): it speaks LSP only as
``tabby-agent --lsp --stdio`` (``--stdio`` alone runs its JSON-lines protocol, ``--lsp`` alone exits
for want of a transport); it answers ``textDocument/completion``, not
``textDocument/inlineCompletion`` (that came with later versions); it takes its server only from
``~/.tabby-client/agent/config.toml``: the LSP ``initialize`` ignores ``initializationOptions`` and
there is no ``workspace/didChangeConfiguration`` handler. So each agent runs with its own HOME.
It calls ``GET /v1/health`` while initializing (a 401 or 403 there makes it "unauthorized") and
``POST /v1/completions`` per request; ``/v1beta/server_setting`` only for servers reporting
version >= 0.9.0 (ours reports ``editloop-0.1.0``), and never ``/v1/events`` in LSP mode. Its
JSON-lines mode (``--stdio`` alone, what Tabby's editor plugins drive) has ``postEvent``, which
posts ``{type: view|select|dismiss, completion_id, choice_index, view_id, elapsed}`` (plus
``?select_kind=line``) to ``/v1/events``: the last test checks those land in the feedback log.
"""

import asyncio
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from lsprotocol import types
from pygls.lsp.client import LanguageClient

from tests.server_fixtures import USER, auth, copy_home, running_server

AGENT = Path(__file__).parent / "clients" / "node_modules" / ".bin" / "tabby-agent"
STEP_S = 20  # one LSP round trip, generous for a cold node start on a busy 2-core machine

CONFIG = """\
[server]
endpoint = "{endpoint}"
token = "{token}"

[anonymousUsageTracking]
disable = true

[logs]
level = "debug"
"""  # the agent's log, under HOME/.tabby-client/agent/logs, says why it dropped a choice

DOCUMENT = "import os\n\n\ndef add(a, b):\n    return \n\n\ndef main():\n    path = \n    print(path)\n"
CURSORS = [
    types.Position(line=4, character=11),
    types.Position(line=8, character=11),
]  # "return |", "path = |"
URI = "file:///project/example.py"
Items = list[types.CompletionItem]

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="tabby-agent needs node, not installed")


@pytest.fixture(scope="module")
def server(tiny_settings, tiny_version, tmp_path_factory):
    if not AGENT.exists():
        pytest.fail(f"{AGENT} is missing: run `npm install --prefix tests/clients` (or `make install`)")
    home = copy_home(tiny_settings, tmp_path_factory.mktemp("tabby-agent-home"))
    with running_server(home, abstain_threshold=0.0) as (url, _, app):
        yield url, app


@dataclass
class Hit:
    method: str
    path: str
    request: bytes = b""
    status: int = 0
    body: bytes = b""


@contextmanager
def recorded_requests(app: FastAPI) -> Iterator[list[Hit]]:
    """Every HTTP request the live app answers meanwhile, with its body, status and reply.

    Wraps the app's built middleware stack, so nothing in the server changes; the server was
    started already, which is what built the stack.
    """
    inner, hits = app.middleware_stack, []
    assert inner is not None

    async def spy(scope, receive, send) -> None:
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        hit = Hit(scope["method"], scope["path"])

        async def read() -> dict:
            message = await receive()
            hit.request += message.get("body", b"")
            return message

        async def record(message) -> None:
            if message["type"] == "http.response.start":
                hit.status = message["status"]
            elif message["type"] == "http.response.body":
                hit.body += message.get("body", b"")
            await send(message)

        await inner(scope, read, record)
        hits.append(hit)

    app.middleware_stack = spy
    try:
        yield hits
    finally:
        app.middleware_stack = inner


@dataclass
class Agent:
    client: LanguageClient
    initialized: types.InitializeResult
    messages: list[types.ShowMessageParams]


@asynccontextmanager
async def tabby_agent(home: Path, endpoint: str, token: str) -> AsyncIterator[Agent]:
    """``tabby-agent --lsp --stdio`` as an editor starts it, initialized; shut down and exited after."""
    config = home / ".tabby-client" / "agent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG.format(endpoint=endpoint, token=token))
    client, messages = LanguageClient("editloop-tests", "0"), []

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(params: types.ShowMessageParams) -> None:
        messages.append(params)

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def log_message(params: types.LogMessageParams) -> None:
        pass  # its console, which --stdio turns into logMessage; the log file under HOME has it all

    # cwd: the agent drops its log-rotation audit.json in the working directory.
    await client.start_io(
        str(AGENT), "--lsp", "--stdio", env={**os.environ, "HOME": str(home)}, cwd=str(home)
    )
    try:
        capabilities = types.ClientCapabilities(
            text_document=types.TextDocumentClientCapabilities(
                completion=types.CompletionClientCapabilities(),
                inline_completion=types.InlineCompletionClientCapabilities(),  # offered; 1.5.0 ignores it
            )
        )
        initialized = await asyncio.wait_for(
            client.initialize_async(
                types.InitializeParams(
                    capabilities=capabilities,
                    process_id=os.getpid(),
                    client_info=types.ClientInfo(name="editloop-tests", version="0"),
                )
            ),
            STEP_S,
        )
        client.initialized(types.InitializedParams())
        yield Agent(client, initialized, messages)
        await asyncio.wait_for(client.shutdown_async(None), STEP_S)
        client.exit(None)
    finally:
        await _stop(client)


async def _stop(client: LanguageClient) -> None:
    process = client._server  # pygls keeps the child private; an agent that ignores `exit` is killed
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), 5)
    except TimeoutError:
        process.kill()
    await asyncio.wait_for(client.stop(), STEP_S)


async def complete_at(client: LanguageClient, position: types.Position) -> Items:
    reply = await asyncio.wait_for(
        client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=URI),
                position=position,
                context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
            )
        ),
        STEP_S,
    )
    return list(reply.items if isinstance(reply, types.CompletionList) else reply or [])


async def edit_session(home: Path, endpoint: str, token: str) -> tuple[Agent, list[Items]]:
    async with tabby_agent(home, endpoint, token) as agent:
        agent.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=URI, language_id="python", version=1, text=DOCUMENT)
            )
        )
        replies = [await complete_at(agent.client, cursor) for cursor in CURSORS]
    return agent, replies


def tabby_latency_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r'^editloop_request_seconds_count\{endpoint="tabby"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def split_at(cursor: types.Position) -> tuple[str, str]:
    lines = DOCUMENT.splitlines(keepends=True)
    offset = sum(len(line) for line in lines[: cursor.line]) + cursor.character
    return DOCUMENT[:offset], DOCUMENT[offset:]


def warm_cache(url: str, prefix: str, suffix: str) -> list[str]:
    """Sixteen samples via /complete, so the server's shared cache holds the best for this cursor.

    A Tabby request gets one greedy candidate, and the tiny test model's greedy text is nearly
    always empty or repetitive, which the engine drops; the cache (keyed by model, language,
    mode, prefix and suffix, not by dialect) then answers the agent's identical request.
    """
    request = {"prefix": prefix, "suffix": suffix, "language": "python", "n": 16, "temperature": 1.0}
    reply = httpx.post(f"{url}/complete", headers=auth(), json=request, timeout=30)
    assert reply.status_code == 200, reply.text
    return [choice["text"] for choice in reply.json()["choices"]]


def test_agent_completes_from_our_server(server, tmp_path) -> None:
    url, app = server
    splits = [split_at(cursor) for cursor in CURSORS]
    assert all([warm_cache(url, prefix, suffix) for prefix, suffix in splits]), "the model kept no sample"
    before = tabby_latency_count(url)
    with recorded_requests(app) as hits:
        agent, replies = asyncio.run(edit_session(tmp_path, f"{url}/tabby", USER))

    assert agent.initialized.server_info.name == "tabby-agent"
    assert agent.initialized.capabilities.completion_provider is not None
    assert not agent.messages, f"the agent warned: {agent.messages}"  # "Tabby agent status: disconnected"
    assert ("GET", "/tabby/v1/health", 200) in [(h.method, h.path, h.status) for h in hits]
    assert {h.path for h in hits} == {"/tabby/v1/health", "/tabby/v1/completions"}, hits

    completions = [h for h in hits if h.path == "/tabby/v1/completions"]
    assert [h.status for h in completions] == [200] * len(CURSORS)
    sent = [json.loads(h.request)["segments"] for h in completions]
    assert [(s["prefix"], s["suffix"]) for s in sent] == splits
    assert tabby_latency_count(url) - before == len(CURSORS)

    ours = {r["id"]: [c["text"] for c in r["choices"]] for r in (json.loads(h.body) for h in completions)}
    items = [item for reply in replies for item in reply]
    assert items, f"the agent dropped every choice we sent: {ours}"  # its log under tmp_path says why
    for item in items:
        first_line = next(line.strip() for line in item.text_edit.new_text.splitlines() if line.strip())
        assert any(first_line in text for text in ours[item.data["completionId"]]), (item, ours)


def test_agent_reports_a_wrong_token_as_unauthorized(server, tmp_path) -> None:
    url, app = server
    with recorded_requests(app) as hits:
        agent, replies = asyncio.run(edit_session(tmp_path, f"{url}/tabby", "not-the-token"))
    assert {m.message for m in agent.messages} == {"Tabby agent status: unauthorized"}  # once or twice
    assert ("GET", "/tabby/v1/health", 401) in [(h.method, h.path, h.status) for h in hits]
    assert replies == [[]] * len(CURSORS)  # the completion 401 is logged by the agent, not shown


class JsonLinesAgent:
    """``tabby-agent --stdio`` without ``--lsp``: its JSON-lines protocol, the one Tabby's editor
    plugins drive and the only one where it posts ``/v1/events``. A request is
    ``[id, {"func": name, "args": [...]}]``, its answer ``[id, result]``; ``[0, event]`` lines are
    agent events (status changes), skipped here."""

    def __init__(self, home: Path) -> None:
        self.process = subprocess.Popen(
            [str(AGENT), "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(home)},
            cwd=str(home),
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 1

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("["):  # its log lines go to stdout too
                self.lines.put(line)

    def call(self, func: str, *args: object) -> object:
        request_id, self.next_id = self.next_id, self.next_id + 1
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps([request_id, {"func": func, "args": list(args)}]) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + STEP_S
        while time.monotonic() < deadline:
            try:
                answer_id, result = json.loads(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                break
            if answer_id == request_id:
                return result
        raise AssertionError(f"tabby-agent did not answer {func} within {STEP_S} s")

    def close(self) -> None:
        self.process.terminate()  # it finalizes on SIGTERM
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_agent_telemetry_lands_in_the_feedback_log(server, tmp_path) -> None:
    """view → shown, select (line) → accepted, each under the completion the agent got from us."""
    url, app = server
    config = tmp_path / ".tabby-client" / "agent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG.format(endpoint=f"{url}/tabby", token=USER))
    agent = JsonLinesAgent(tmp_path)
    prefix, _ = split_at(CURSORS[0])
    git = {"root": "/project", "remotes": [{"name": "origin", "url": "https://github.com/example/demo.git"}]}
    try:
        assert (
            agent.call("initialize", {"clientProperties": {"session": {"client": "editloop-tests"}}}) is True
        )
        with recorded_requests(app) as hits:
            completion = agent.call(
                "provideCompletions",
                {
                    "filepath": "/project/example.py",
                    "language": "python",
                    "text": DOCUMENT,
                    "position": len(prefix),
                    "manually": True,
                    "git": git,
                },
            )
            completion_id = completion["id"]
            view = {"type": "view", "completion_id": completion_id, "choice_index": 0, "view_id": "v1"}
            select = {**view, "type": "select", "elapsed": 700, "select_kind": "line"}
            assert agent.call("postEvent", view) is True
            assert agent.call("postEvent", select) is True
            assert agent.call("postEvent", view) is True  # the same view again: stored once
    finally:
        agent.close()

    posted = [h for h in hits if h.path == "/tabby/v1/events"]
    assert [(h.status, json.loads(h.request)["type"]) for h in posted] == [
        (202, "view"),
        (202, "select"),
        (202, "view"),
    ]
    store = app.state.services.feedback.log.store
    project = "github.com_example_demo"  # from the git remote the agent sent as segments.git_url

    def recorded() -> list:
        return [s.event for s in store.events(project) if s.event.completion_id == completion_id]

    deadline = time.monotonic() + STEP_S  # the completion event is written off the request path
    while len(events := recorded()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(e.type for e in events) == ["accepted", "completion", "shown"]
    by_type = {e.type: e for e in events}
    assert by_type["completion"].source == "tabby" and by_type["completion"].prefix == prefix
    assert by_type["accepted"].partial == "line" and by_type["accepted"].choice == 0
    assert by_type["shown"].event_id.startswith("tabby-")
