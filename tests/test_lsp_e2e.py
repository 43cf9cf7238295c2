"""``editloop lsp`` end to end: a pytest-lsp client drives the real server in a subprocess, on the real
tiny model, and the feedback events it sends are read back from a real ``redis-server``.

Each test starts its own ``editloop lsp`` (in-process engine unless it says ``--server``) over a
private copy of the tiny model's registry and writes to its own feedback project.
"""

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import JsonRPCRequestMessage
from pytest_lsp import ClientServerConfig, LanguageClient, make_test_lsp_client

from editloop.feedback.events import FeedbackEvent
from editloop.feedback.store import FeedbackStore
from editloop.lsp.tracking import similarity
from editloop.server.background import free_port
from editloop.settings import Settings
from tests.redis_fixtures import running_redis
from tests.server_fixtures import USER, copy_home, running_server, server_env
from tests.test_context import make_project

ROOT = "file:///work/project"
URI = f"{ROOT}/example.py"
DOC = "import os\n\n\ndef add(a, b):\n    return \n\n\ndef main():\n    path = \n    print(path)\n"
RETURN_AT = types.Position(line=4, character=11)  # "    return |"
PATH_AT = types.Position(line=8, character=11)  # "    path = |"
STEP_S = 30  # one round trip, generous for a busy 2-core machine
HORIZONS = [0.5, 1.0]
SETTLE_S = 0.5
INVOKED = types.InlineCompletionTriggerKind.Invoked
AUTOMATIC = types.InlineCompletionTriggerKind.Automatic

CAPABILITIES = types.ClientCapabilities(
    text_document=types.TextDocumentClientCapabilities(
        synchronization=types.TextDocumentSyncClientCapabilities(),
        inline_completion=types.InlineCompletionClientCapabilities(),
        completion=types.CompletionClientCapabilities(),
    ),
    workspace=types.WorkspaceClientCapabilities(configuration=True),
)

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture(scope="module")
def feedback_redis(tmp_path_factory) -> str:
    with running_redis(tmp_path_factory.mktemp("lsp-redis")) as server:
        yield server.url


@pytest.fixture(scope="module")
def home(tiny_settings: Settings, tiny_version, tmp_path_factory) -> Path:
    return copy_home(tiny_settings, tmp_path_factory.mktemp("lsp-home"))


@pytest.fixture
def project(request) -> str:
    return request.node.name.replace("[", "-").replace("]", "")[:100]


@asynccontextmanager
async def lsp(
    env: dict[str, str], options: dict, *args: str, root: str = ROOT, document: tuple[str, str] = (URI, DOC)
) -> AsyncIterator[LanguageClient]:
    """``editloop lsp [args]`` as an editor starts it: initialized, then shut down and exited."""
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "editloop", "lsp", *args], server_env=env
    )
    client = await config.start()
    try:
        params = types.InitializeParams(
            capabilities=CAPABILITIES, root_uri=root, initialization_options=options
        )
        result = await asyncio.wait_for(client.initialize_session(params), STEP_S)
        assert result.capabilities.inline_completion_provider is not None
        assert "editloop.accept" in result.capabilities.execute_command_provider.commands
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(document[0], "python", 1, document[1]))
        )
        yield client
        await asyncio.wait_for(client.shutdown_session(), STEP_S)
    finally:
        await stop(client)


async def stop(client: LanguageClient) -> None:
    """pygls' ``stop`` waits for the server to exit: after a failed test it never would."""
    process = client._server  # pygls keeps the child private
    if process is not None and process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), 5)
        except TimeoutError:
            process.kill()
    await asyncio.wait_for(client.stop(), STEP_S)


def options_for(project: str, **overrides) -> dict:
    return {
        "debounceMs": 0,
        "candidates": 4,
        "retentionHorizonsS": HORIZONS,
        "editSettleS": SETTLE_S,
        "project": project,
        "user": "tester",
        **overrides,
    }


async def inline(
    client: LanguageClient, at: types.Position, trigger=INVOKED, uri: str = URI
) -> list[types.InlineCompletionItem]:
    params = types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=trigger),
        text_document=types.TextDocumentIdentifier(uri),
        position=at,
    )
    reply = await asyncio.wait_for(client.text_document_inline_completion_async(params), STEP_S)
    return list(reply.items if isinstance(reply, types.InlineCompletionList) else reply or [])


def insert(client: LanguageClient, version: int, at: types.Position, text: str) -> None:
    """An incremental didChange inserting single-line ``text`` at ``at``."""
    change = types.TextDocumentContentChangePartial(range=types.Range(at, at), text=text)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
            content_changes=[change],
        )
    )


async def execute(client: LanguageClient, command: types.Command):
    params = types.ExecuteCommandParams(command=command.command, arguments=command.arguments)
    return await asyncio.wait_for(client.workspace_execute_command_async(params), STEP_S)


async def stored(
    feedback_redis: str, project: str, done: Callable[[list[FeedbackEvent]], bool], timeout_s: float = 20
) -> list[FeedbackEvent]:
    """The project's events once ``done`` holds for them (fails with what arrived otherwise)."""
    store = FeedbackStore.from_url(feedback_redis)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            events = [s.event for s in store.events(project)]
            if done(events) or loop.time() > deadline:
                assert done(events), [(e.type, e.model_dump(exclude={"prefix", "suffix"})) for e in events]
                return events
            await asyncio.sleep(0.1)
    finally:
        store.close()


async def send_untyped(client: LanguageClient, method: str, params: dict):
    """A request with whatever params, as a buggy editor might send: the typed client refuses to."""
    msg_id = f"untyped-{uuid.uuid4().hex[:8]}"
    future: Future = Future()
    client.protocol._request_futures[msg_id] = future
    client.protocol._send_data(JsonRPCRequestMessage(id=msg_id, method=method, jsonrpc="2.0", params=params))
    return await asyncio.wrap_future(future)


async def eventually(attempt: Callable[[], Awaitable], timeout_s: float = 5.0):
    """The first truthy result of ``attempt`` within ``timeout_s`` (else the last one)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (result := await attempt()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return result


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def of(events: list[FeedbackEvent], kind: str) -> list:
    return [e for e in events if e.type == kind]


async def test_accepted_completion_is_followed_to_its_retention_horizons(
    home, feedback_redis, project
) -> None:
    async with lsp(server_env(home, feedback_redis), options_for(project)) as client:
        items = await inline(client, RETURN_AT)
        assert items, "the tiny model offered nothing at `return `"
        completion_id = items[0].command.arguments[0]
        assert [list(i.command.arguments) for i in items] == [[completion_id, n] for n in range(len(items))]
        assert all(i.range == types.Range(RETURN_AT, RETURN_AT) for i in items)
        text = items[0].insert_text
        assert "\n" not in text  # `return |` completes a line

        assert await execute(client, items[0].command) is None  # the editor runs the item's command
        insert(client, 2, RETURN_AT, text)  # ...and inserts its text
        edited = text[:1] + "Q" + text[1:]
        insert(client, 3, types.Position(line=4, character=RETURN_AT.character + utf16(text[:1])), "Q")
        insert(client, 4, types.Position(line=0, character=0), "import sys\n")  # above: moves it down

        def complete(events):
            return len(of(events, "retained")) == 2 and of(events, "edited")

        events = await stored(feedback_redis, project, complete)

    (completion,) = of(events, "completion")
    assert completion.completion_id == completion_id
    assert (completion.source, completion.language, completion.filepath) == ("lsp", "python", "example.py")
    assert completion.prefix == DOC[: DOC.index("return ") + len("return ")]
    assert [c.text for c in completion.candidates if c.shown] == [i.insert_text for i in items]
    assert completion.model_version == "v1" and completion.latency_ms > 0
    assert [(e.completion_id, e.choice) for e in of(events, "shown")] == [(completion_id, 0)]
    (accepted,) = of(events, "accepted")
    assert (accepted.completion_id, accepted.choice, accepted.accepted_length) == (completion_id, 0, None)
    retained = sorted(of(events, "retained"), key=lambda e: e.horizon_s)
    assert [r.horizon_s for r in retained] == HORIZONS
    assert all(r.text == edited for r in retained)
    assert retained[0].similarity == pytest.approx(similarity(text, edited)) and retained[0].similarity < 1
    (after,) = of(events, "edited")
    assert (after.after, after.text, after.completion_id) == ("accepted", edited, completion_id)
    assert {(e.user, e.project) for e in events} == {("tester", project)}
    assert not of(events, "rejected")


async def test_typing_something_else_is_rejected_then_reported(home, feedback_redis, project) -> None:
    async with lsp(server_env(home, feedback_redis), options_for(project)) as client:
        (item,) = await inline(client, PATH_AT, AUTOMATIC)  # automatic: the best one only
        # Type what the suggestion does not start with (else typing it would agree with it).
        written = next(w for w in ("os.getcwd()", "str(path)") if not item.insert_text.startswith(w[0]))
        completion_id = item.command.arguments[0]
        insert(client, 2, PATH_AT, written[:4])
        insert(client, 3, types.Position(line=8, character=15), written[4:])
        events = await stored(feedback_redis, project, lambda events: of(events, "edited"))

    (rejected,) = of(events, "rejected")
    assert (rejected.completion_id, rejected.choice, rejected.reason) == (completion_id, 0, "dismissed")
    (edited,) = of(events, "edited")
    assert (edited.after, edited.text, edited.completion_id) == ("rejected", written, completion_id)
    assert not of(events, "accepted")


async def test_cancel_request_and_the_server_stays_up(home, feedback_redis, project) -> None:
    # a long debounce keeps the automatic request in flight while it is cancelled
    async with lsp(server_env(home, feedback_redis), options_for(project, debounceMs=3000)) as client:
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=AUTOMATIC),
            text_document=types.TextDocumentIdentifier(URI),
            position=RETURN_AT,
        )
        pending = asyncio.create_task(
            client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="slow")
        )
        await asyncio.sleep(0.3)
        client.cancel_request(types.CancelParams(id="slow"))
        with pytest.raises(JsonRpcException) as cancelled:
            await asyncio.wait_for(pending, STEP_S)
        assert cancelled.value.code == -32800  # RequestCancelled
        assert await inline(client, RETURN_AT)  # invoked: no debounce, and still serving
    events = await stored(feedback_redis, project, lambda events: of(events, "completion"))
    assert len(of(events, "completion")) == 1  # the cancelled one never reached the model


async def test_a_newer_request_supersedes_older_ones(home, feedback_redis, project) -> None:
    async with lsp(server_env(home, feedback_redis), options_for(project, debounceMs=400)) as client:
        debounced = asyncio.create_task(inline(client, RETURN_AT, AUTOMATIC))  # waits 400 ms first
        await asyncio.sleep(0.1)
        generating = asyncio.create_task(inline(client, PATH_AT))  # starts decoding at once
        await asyncio.sleep(0)  # let it be sent first
        newest = await inline(client, RETURN_AT)
        assert await debounced == [] and await generating == []
        assert newest
    events = await stored(feedback_redis, project, lambda events: of(events, "shown"))
    assert [e.completion_id for e in of(events, "shown")] == [newest[0].command.arguments[0]]


async def test_completion_fallback_for_clients_without_inline_completion(
    home, feedback_redis, project
) -> None:
    async with lsp(server_env(home, feedback_redis), options_for(project)) as client:
        params = types.CompletionParams(
            text_document=types.TextDocumentIdentifier(URI),
            position=RETURN_AT,
            context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
        )
        reply = await asyncio.wait_for(client.text_document_completion_async(params), STEP_S)
        assert isinstance(reply, types.CompletionList) and reply.is_incomplete
        assert reply.items
        for item in reply.items:
            assert item.text_edit.range == types.Range(RETURN_AT, RETURN_AT)
            assert "\n" not in item.text_edit.new_text and item.text_edit.new_text.strip()
            assert item.insert_text_format == types.InsertTextFormat.PlainText
            assert item.insert_text_mode == types.InsertTextMode.AsIs
            assert item.command.command == "editloop.accept"
        await execute(client, reply.items[0].command)
        events = await stored(feedback_redis, project, lambda events: of(events, "accepted"))
    (accepted,) = of(events, "accepted")
    assert accepted.completion_id == reply.items[0].command.arguments[0]


async def test_bad_input_gets_an_error_or_nothing_and_the_server_stays_up(
    home, feedback_redis, project
) -> None:
    async with lsp(server_env(home, feedback_redis), options_for(project)) as client:
        malformed = {"textDocument": {"uri": 5}, "position": "here", "context": {"triggerKind": 1}}
        with pytest.raises(JsonRpcException) as invalid:
            await asyncio.wait_for(
                send_untyped(client, types.TEXT_DOCUMENT_INLINE_COMPLETION, malformed), STEP_S
            )
        assert invalid.value.code == -32602  # InvalidParams

        unopened = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=INVOKED),
            text_document=types.TextDocumentIdentifier(f"{ROOT}/never-opened.py"),
            position=RETURN_AT,
        )
        assert await client.text_document_inline_completion_async(unopened) is None
        bad_accept = types.Command(title="", command="editloop.accept", arguments=["only-an-id"])
        assert await execute(client, bad_accept) is None
        logged = [m.message for m in client.log_messages]
        assert any("never-opened.py" in m for m in logged), logged
        assert any("editloop.accept needs" in m for m in logged), logged

        assert await inline(client, RETURN_AT)  # still serving


async def test_copilot_style_notifications_and_configuration_changes(home, feedback_redis, project) -> None:
    async with lsp(server_env(home, feedback_redis), options_for(project)) as client:
        items = await inline(client, RETURN_AT)
        item = items[-1]
        completion_id, choice = item.command.arguments
        echoed = {
            "insertText": item.insert_text,
            "command": {"title": "", "command": "editloop.accept", "arguments": [completion_id, choice]},
        }
        client.protocol.notify("textDocument/didShowCompletion", {"item": echoed})
        client.protocol.notify(
            "textDocument/didPartiallyAcceptCompletion", {"item": echoed, "acceptedLength": 1}
        )

        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"editloop": {"languages": ["rust"]}})
        )
        assert await inline(client, RETURN_AT) == []  # python is no longer completed
        client.set_configuration({"languages": ["python"]}, section="editloop")
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        # the server pulls the options through workspace/configuration: a round trip of its own
        assert await eventually(lambda: inline(client, RETURN_AT))
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"editloop": {"debounceMs": -5}})
        )
        assert await inline(client, RETURN_AT)  # a bad value keeps the previous options
        assert any("debounce_ms" in m.message for m in client.log_messages)

        events = await stored(feedback_redis, project, lambda events: of(events, "accepted"))
    assert (completion_id, choice) in [(e.completion_id, e.choice) for e in of(events, "shown")]
    (accepted,) = of(events, "accepted")
    assert (accepted.completion_id, accepted.choice, accepted.accepted_length) == (completion_id, choice, 1)


async def test_telemetry_off_sends_nothing(home, feedback_redis, project) -> None:
    async with lsp(server_env(home, feedback_redis), options_for(project, telemetry=False)) as client:
        items = await inline(client, RETURN_AT)
        assert items
        await execute(client, items[0].command)
    assert await stored(feedback_redis, project, lambda events: True, timeout_s=0) == []


async def test_server_mode_completes_and_reports_through_the_server(home, feedback_redis, project) -> None:
    with running_server(home, abstain_threshold=0.0, redis_url=feedback_redis) as (url, _, _):
        env = {
            **server_env(home, feedback_redis),
            "EDITLOOP_REDIS_URL": "redis://127.0.0.1:1/0",
        }  # not its own
        async with lsp(env, options_for(project), "--server", url, "--token", USER) as client:
            items = await inline(client, RETURN_AT)
            assert items
            completion_id = items[0].command.arguments[0]
            await execute(client, items[0].command)
            insert(client, 2, RETURN_AT, items[0].insert_text)

            def complete(events):
                return of(events, "completion") and len(of(events, "retained")) == len(HORIZONS)

            events = await stored(feedback_redis, project, complete)
    (completion,) = of(events, "completion")  # recorded by the server as it served /complete
    assert (completion.completion_id, completion.source, completion.user) == (
        completion_id,
        "complete",
        "tester",
    )
    assert [e.completion_id for e in of(events, "accepted")] == [completion_id]
    assert [r.text for r in of(events, "retained")] == [items[0].insert_text] * len(HORIZONS)


async def test_context_from_the_workspace_folders(home, feedback_redis, project, tmp_path) -> None:
    """The workspace is indexed in the background; its snippets and copies reach prompt and event."""
    root = make_project(tmp_path)
    uri = (root / "shop" / "receipt.py").as_uri()
    text = "from shop.money import Money, format_price\n\n\ndef receipt(items):\n    lines = [format_pr\n"
    at = types.Position(line=4, character=len("    lines = [format_pr"))

    def with_context(events: list[FeedbackEvent]) -> bool:
        return any(e.type == "completion" and e.context for e in events)

    env = server_env(home, feedback_redis)
    async with lsp(env, options_for(project), root=root.as_uri(), document=(uri, text)) as client:

        async def attempt() -> bool:  # the first request may come before the index is built
            await inline(client, at, uri=uri)
            return with_context(await stored(feedback_redis, project, lambda events: True, timeout_s=0))

        await eventually(attempt, timeout_s=20)
        events = await stored(feedback_redis, project, with_context)
    completion = next(e for e in of(events, "completion") if e.context)
    paths = {s.filepath for s in completion.context}
    assert paths and paths <= {"shop/money.py", "shop/cart.py"}, paths
    assert all(s.text and s.text_hash for s in completion.context)
    copies = [c.text for c in completion.candidates if c.source == "codebase"]
    assert "ice(item.price) for item in items]" in copies
    assert all("OUTSIDE_ONLY" not in s.text for s in completion.context)


async def test_context_off_sends_none(home, feedback_redis, project, tmp_path) -> None:
    root = make_project(tmp_path)
    uri = (root / "shop" / "receipt.py").as_uri()
    text = "from shop.money import Money, format_price\n\n\ndef receipt(items):\n    lines = [format_pr\n"
    env = server_env(home, feedback_redis)
    options = options_for(project, context=False)
    async with lsp(env, options, root=root.as_uri(), document=(uri, text)) as client:
        await inline(client, types.Position(line=4, character=22), uri=uri)
        events = await stored(feedback_redis, project, lambda events: of(events, "completion"))
    (completion,) = of(events, "completion")
    assert completion.context == [] and all(c.source == "model" for c in completion.candidates)


async def test_tcp_transport(home, feedback_redis, project) -> None:
    port = free_port()
    env = server_env(home, feedback_redis)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "editloop", "lsp", "--tcp", f"127.0.0.1:{port}", env=env
    )
    client = make_test_lsp_client()
    try:
        for _ in range(200):  # until it listens
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        params = types.InitializeParams(
            capabilities=CAPABILITIES, root_uri=ROOT, initialization_options=options_for(project)
        )
        await asyncio.wait_for(client.initialize_session(params), STEP_S)
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(URI, "python", 1, DOC))
        )
        assert await inline(client, RETURN_AT)
        await asyncio.wait_for(client.shutdown_async(None), STEP_S)
        client.exit(None)
        assert await asyncio.wait_for(process.wait(), STEP_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(client.stop(), STEP_S)


async def test_without_a_model_there_are_no_items_and_a_reason(tmp_path, feedback_redis, project) -> None:
    async with lsp(server_env(tmp_path / "no-model-home", feedback_redis), options_for(project)) as client:
        assert await inline(client, RETURN_AT) == []
        reply = await client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(URI), position=RETURN_AT)
        )
        assert list(reply.items) == []
        assert any("no model is loaded" in m.message for m in client.log_messages), client.log_messages
