"""The LSP editor path of the replay: ``editloop lsp`` in a subprocess, driven like an editor would.

The simulated developer's keystrokes become ``didChange`` notifications (incremental, UTF-16
positions), suggestions come from ``textDocument/inlineCompletion`` (Automatic trigger), and an
accept runs the item's command — so the feedback is whatever editloop's own LSP server reports,
edit tracking and retention included, through the same ``--server`` the HTTP path talks to.
Retention horizons are shortened (a replay types far faster than a person), and each file stays
open until they have passed.
"""

import asyncio
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from lsprotocol import types
from pygls.lsp.client import LanguageClient

from editloop.errors import BackendError
from editloop.eval.replay import Suggestion
from editloop.eval.replay_tasks import TypingTask
from editloop.settings import Settings

HORIZONS_S = (0.2, 0.4)
SETTLE_S = 0.2
STEP_TIMEOUT_S = 120
ROOT_URI = "file:///replay"


class _Loop:
    """An asyncio loop in a thread, so the (synchronous) simulator can await the LSP client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="replay-lsp", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = STEP_TIMEOUT_S) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function, *args) -> Any:
        async def wrapped():
            return function(*args)

        return self.run(wrapped())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def _position(text: str, offset: int) -> types.Position:
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    character = sum(2 if ord(c) > 0xFFFF else 1 for c in text[start:offset])
    return types.Position(line=line, character=character)


class LspEditor:
    def __init__(
        self, loop: _Loop, client: LanguageClient, model_version: str, root_uri: str = ROOT_URI
    ) -> None:
        self.loop, self.client, self.model_version, self.root_uri = loop, client, model_version, root_uri
        self.doc, self.cursor, self.version, self.uri = "", 0, 0, ""
        self._item: types.InlineCompletionItem | None = None

    def open(self, task: TypingTask) -> None:
        self.uri = f"{self.root_uri}/{task.path.split('@')[0]}"
        self.doc, self.cursor, self.version = task.before, 0, 1
        item = types.TextDocumentItem(uri=self.uri, language_id=task.language, version=1, text=task.before)
        self.loop.call(
            self.client.text_document_did_open, types.DidOpenTextDocumentParams(text_document=item)
        )

    def replace(self, offset: int, removed: int, text: str) -> None:
        if not (text or removed):
            self.cursor = offset
            return
        change = types.TextDocumentContentChangePartial(
            range=types.Range(_position(self.doc, offset), _position(self.doc, offset + removed)), text=text
        )
        self.version += 1
        self.doc = self.doc[:offset] + text + self.doc[offset + removed :]
        self.cursor = offset + len(text)
        params = types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
            content_changes=[change],
        )
        self.loop.call(self.client.text_document_did_change, params)

    def type(self, text: str) -> None:
        self.replace(self.cursor, 0, text)

    def suggest(self) -> Suggestion | None:
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=self.uri),
            position=_position(self.doc, self.cursor),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        started = time.perf_counter()
        reply = self.loop.run(self.client.text_document_inline_completion_async(params))
        latency = (time.perf_counter() - started) * 1000
        items = (reply.items if isinstance(reply, types.InlineCompletionList) else reply) or []
        self._item = items[0] if items else None
        if self._item is None or self._item.command is None:
            return Suggestion("", "", latency, self.model_version)
        text = self._item.insert_text
        text = text if isinstance(text, str) else text.value
        completion_id = str((self._item.command.arguments or [""])[0])
        return Suggestion(completion_id, text, latency, self.model_version)

    def accept(self, suggestion: Suggestion, length: int) -> None:
        assert self._item is not None and self._item.command is not None
        arguments = list(self._item.command.arguments or [])
        if length < len(suggestion.text):
            arguments = [*arguments[:2], length]
        # Editors insert the text and then run the item's command.
        self.type(suggestion.text[:length])
        params = types.ExecuteCommandParams(command=self._item.command.command, arguments=arguments)
        self.loop.run(self.client.workspace_execute_command_async(params))

    def advance(self, seconds: float) -> None:
        pass  # the LSP server keeps its own (real) clock; see HORIZONS_S

    def close(self) -> None:
        time.sleep(max(HORIZONS_S) + SETTLE_S + 0.3)  # let retention and rejections come due
        self.loop.call(
            self.client.text_document_did_close,
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=self.uri)),
        )


@contextmanager
def lsp_editor(
    client: httpx.Client, settings: Settings, run_key: str, project: str, root: str | None = None
) -> Iterator[LspEditor]:
    """``editloop lsp --server`` (the server ``client`` talks to) as a subprocess, initialized.

    With ``root`` the documents live in that workspace folder, which the LSP indexes for context.
    """
    root_uri = Path(root).as_uri() if root else ROOT_URI
    version = client.get("/health").json()["model"]["version"]
    token = client.headers.get("Authorization", "").removeprefix("Bearer ") or None
    args = ["-m", "editloop", "lsp", "--server", str(client.base_url)] + (["--token", token] if token else [])
    loop = _Loop()
    lsp = LanguageClient("editloop-replay", "1")
    try:
        loop.run(lsp.start_io(sys.executable, *args, env=_env(settings)))
        options = {
            "debounceMs": 0,
            "retentionHorizonsS": list(HORIZONS_S),
            "editSettleS": SETTLE_S,
            "project": project,
            "user": "replay",
        }
        capabilities = types.ClientCapabilities(
            text_document=types.TextDocumentClientCapabilities(
                synchronization=types.TextDocumentSyncClientCapabilities(),
                inline_completion=types.InlineCompletionClientCapabilities(),
            )
        )
        init = types.InitializeParams(
            capabilities=capabilities, root_uri=root_uri, initialization_options=options
        )
        loop.run(lsp.initialize_async(init))
        loop.call(lsp.initialized, types.InitializedParams())
        yield LspEditor(loop, lsp, version, root_uri)
        loop.run(lsp.shutdown_async(None))
        loop.call(lsp.exit, None)
    except (OSError, TimeoutError) as exc:
        raise BackendError(f"the LSP replay path failed: {exc}") from exc
    finally:
        try:
            loop.run(lsp.stop(), timeout=30)
        finally:
            loop.close()


def _env(settings: Settings) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "EDITLOOP_HOME": str(Path(settings.home)),
        "EDITLOOP_LSP_CONTEXT": "true" if settings.lsp_context else "false",
    }
