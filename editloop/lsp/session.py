"""One editor session: open documents, completions with latest-wins, edit tracking, events out.

Everything the LSP handlers do goes through here, in the editor's terms (URIs, positions,
versions) but without pygls, so the pygls layer only parses and shapes. Positions are in the
session's encoding (UTF-16 unless the client negotiated another).

Latency rules for :meth:`Session.complete`: a newer request for the same document makes older
ones return nothing; automatic requests wait ``debounce_ms`` first; a request whose document
changed meanwhile returns nothing. Stopping the older one's decode is the engine's latest-wins
(one per ``document_id``, in-process or on the server), not repeated here.
"""

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from editloop.completion.context.workspace import Workspace
from editloop.completion.types import Choice, CompletionRequest, CompletionResult, plain_language
from editloop.feedback.completions import completion_event
from editloop.feedback.events import FeedbackEvent
from editloop.lsp.completer import Completer
from editloop.lsp.config import LspConfig
from editloop.lsp.document import Change, Document, Encoding, Position
from editloop.lsp.sinks import EventPump
from editloop.lsp.tracking import EditTracker

log = logging.getLogger(__name__)

# Context sent per request, in lines around the cursor (llama.vim's defaults). Cut at line
# starts, so the prefix keeps its start while the user types and type-ahead still hits the cache.
LINES_BEFORE = 256
LINES_AFTER = 64


@dataclass
class Ticket:
    """One completion request in flight for a document."""

    uri: str
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Offered:
    """A completion to show: ranked choices at ``position``, to be inserted there."""

    completion_id: str
    choices: list[Choice]
    position: Position
    result: CompletionResult


def context_window(text: str, cursor: int) -> tuple[int, int]:
    """``(begin, end)`` sent around the cursor: ``LINES_BEFORE`` lines above, ``LINES_AFTER`` below.

    The replay's HTTP path asks with the same window, so both editor paths ask the same thing.
    """
    line_start = text.rfind("\n", 0, cursor) + 1
    begin = line_start
    for _ in range(LINES_BEFORE):
        if begin == 0:
            break
        begin = text.rfind("\n", 0, begin - 1) + 1
    end = cursor
    for _ in range(LINES_AFTER + 1):
        nxt = text.find("\n", end)
        if nxt < 0:
            return begin, len(text)
        end = nxt + 1
    return begin, end


class Session:
    def __init__(
        self,
        config: LspConfig,
        completer: Completer,
        pump: EventPump | None,
        clock: Callable[[], float] = time.monotonic,
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        self.config = config
        self.warn = warn  # bad input from the editor: a log line, there and here
        self.completer = completer
        self.pump = pump
        self.clock = clock
        self.encoding: Encoding = "utf-16"
        self.root: str | None = None
        self.documents: dict[str, Document] = {}
        self.tracker = EditTracker(config.retention_horizons_s, config.edit_settle_s)
        self.inflight: dict[str, Ticket] = {}
        self.id = uuid.uuid4().hex[:12]  # server-side latest-wins key: this session's documents only
        self.workspaces: list[Workspace] = []  # one per workspace folder, when context is on
        self._indexing: set[asyncio.Future] = set()

    # Context from the workspace folders, gathered off the event loop

    def watch(self, workspaces: list[Workspace]) -> None:
        """Index these folders in the background; completions use what is indexed so far."""
        self.workspaces = workspaces
        for workspace in workspaces:
            self._background(functools.partial(workspace.refresh, force=True))

    def workspace_of(self, uri: str) -> Workspace | None:
        path = file_path(uri)
        if path is None:
            return None
        return next((w for w in self.workspaces if w.index.relative(path) is not None), None)

    def _visited(self, doc: Document, offset: int, edited: bool) -> None:
        workspace, path = self.workspace_of(doc.uri), file_path(doc.uri)
        if workspace is None or path is None:
            return
        text, line = doc.text, doc.text.count("\n", 0, offset)
        self._background(lambda: workspace.visited(path, text, line, edited=edited))

    def _background(self, work: Callable[[], object]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no editor loop (a test driving the session directly): now
            work()
            return
        future = loop.run_in_executor(None, work)
        self._indexing.add(future)
        future.add_done_callback(self._indexed)

    def _indexed(self, future: asyncio.Future) -> None:
        self._indexing.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self.warn(f"context: indexing failed: {future.exception()!r}")

    # Documents

    def open(self, uri: str, language_id: str, version: int, text: str) -> None:
        self.documents[uri] = doc = Document(uri, language_id, version, text, self.encoding)
        self._visited(doc, 0, edited=True)  # the buffer, not the disk, is what the user sees

    def save(self, uri: str) -> None:
        doc = self.documents.get(uri)
        if doc is not None:
            self._visited(doc, 0, edited=True)

    def change(self, uri: str, version: int, changes: list[Change]) -> None:
        doc = self.documents.get(uri)
        if doc is None:
            self.warn(f"didChange for {uri}, which was never opened: ignored")
            return
        edits = doc.apply(version, changes)
        self.report(self.tracker.edit(doc, edits, self.clock()))
        if edits:  # the ring takes the edited chunk now; the index the whole buffer on save
            self._visited(doc, edits[-1].start, edited=False)

    def close(self, uri: str) -> None:
        doc = self.documents.pop(uri, None)
        if doc is not None:
            self.report(self.tracker.close(doc))
        ticket = self.inflight.pop(uri, None)
        if ticket is not None:
            ticket.cancel.set()

    # Completions

    async def complete(self, uri: str, position: Position, automatic: bool) -> Offered | None:
        """Ranked choices at ``position``, or None (unknown document, superseded, abstained, ...)."""
        doc = self.documents.get(uri)
        if doc is None:
            self.warn(f"completion asked for {uri}, which is not open: no items")
            return None
        if not self.config.completes(doc.language_id):
            return None
        ticket = self._begin(uri)
        version = doc.version
        try:
            if automatic and self.config.debounce_ms:
                await asyncio.sleep(self.config.debounce_ms / 1000)
            if self._stale(ticket, doc, version):
                return None
            offset = doc.offset_at(*position)
            workspace = self.workspace_of(uri)
            request = self._request(doc, offset, workspace)
            result = await self.completer.complete(request, ticket.cancel, workspace)
            if self._stale(ticket, doc, version):
                return None
            return self._offer(doc, request, offset, result, automatic)
        except asyncio.CancelledError:  # $/cancelRequest: stop the decode too
            ticket.cancel.set()
            raise
        finally:
            self._end(ticket)

    def _offer(
        self,
        doc: Document,
        request: CompletionRequest,
        offset: int,
        result: CompletionResult,
        automatic: bool,
    ) -> Offered | None:
        choices = result.choices[:1] if automatic else result.choices
        if not self.completer.records_completions:
            self.report([completion_event(request, result, source="lsp", shown=len(choices))])
        if not choices:
            self.report(self.tracker.abstain(doc, result.id, result.mode, offset, self.clock()))
            return None
        self.report(self.tracker.offer(doc, result.id, [c.text for c in choices], result.mode, offset))
        return Offered(result.id, choices, doc.position_at(offset), result)

    def _request(self, doc: Document, offset: int, workspace: Workspace | None = None) -> CompletionRequest:
        begin, end = context_window(doc.text, offset)
        path = file_path(doc.uri)
        in_workspace = workspace.index.relative(path) if workspace is not None and path else None
        return CompletionRequest(
            prefix=doc.text[begin:offset],
            suffix=doc.text[offset:end],
            language=plain_language(doc.language_id),
            filepath=in_workspace or self.relative_path(doc.uri),
            mode="auto",
            n=self.config.candidates,
            document_id=f"{self.id}:{doc.uri}",
            project=self.config.project,
            user=self.config.user,
        )

    def _begin(self, uri: str) -> Ticket:
        ticket = Ticket(uri)
        self.inflight[uri] = ticket  # an older ticket is stale from now on
        return ticket

    def _end(self, ticket: Ticket) -> None:
        if self.inflight.get(ticket.uri) is ticket:
            del self.inflight[ticket.uri]

    def _stale(self, ticket: Ticket, doc: Document, version: int) -> bool:
        superseded = self.inflight.get(ticket.uri) is not ticket
        changed = doc.version != version or self.documents.get(doc.uri) is not doc
        return superseded or changed or ticket.cancel.is_set()

    # What the editor tells us about a completion

    def shown(self, completion_id: str, choice: int) -> None:
        self.report(self.tracker.shown(completion_id, choice))

    def accept(self, completion_id: str, choice: int, length: int | None = None) -> None:
        self.report(self.tracker.accept(completion_id, choice, self.clock(), length))

    def tick(self) -> None:
        self.report(self.tracker.tick(self.documents, self.clock()))

    def reconfigure(self, config: LspConfig) -> None:
        self.config = config
        self.tracker.horizons = tuple(config.retention_horizons_s)
        self.tracker.settle_s = config.edit_settle_s

    # Events

    def report(self, events: list[FeedbackEvent]) -> None:
        if self.pump is None or not self.config.telemetry or not events:
            return
        origin = {"user": self.config.user} | (
            {"project": self.config.project} if self.config.project else {}
        )
        self.pump.put([e.model_copy(update=origin) for e in events])

    def relative_path(self, uri: str) -> str | None:
        """The document's path relative to the session's root (absolute outside it)."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return None
        path = PurePosixPath(unquote(parsed.path))
        root = PurePosixPath(unquote(urlparse(self.root).path)) if self.root else None
        if root is not None and path.is_relative_to(root):
            return str(path.relative_to(root))
        return str(path)


def file_path(uri: str | None) -> Path | None:
    """The local path of a ``file://`` URI, else None."""
    if not uri:
        return None
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None
