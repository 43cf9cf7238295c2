"""``editloop lsp``: the pygls layer over :class:`Session` — parse, call, shape; nothing else.

Speaks ``textDocument/inlineCompletion`` (LSP 3.18) with an accept command per item, a
``textDocument/completion`` fallback, Copilot-style ``textDocument/didShowCompletion`` and
``textDocument/didPartiallyAcceptCompletion``, and incremental document sync for edit tracking.
Bad input gets an empty result and a log line (a request whose params do not even parse gets
JSON-RPC's InvalidParams); the server never goes down for one request.

>>> serve(load_settings(), server_url=None, token=None, tcp=None)  # doctest: +SKIP
"""

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

from lsprotocol import types
from pygls.capabilities import ServerCapabilitiesBuilder, get_capability
from pygls.exceptions import JsonRpcException
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from editloop import __version__
from editloop.completion.builder import context_limits
from editloop.completion.context.workspace import Workspace
from editloop.errors import BadRequestError, EditloopError, quoted
from editloop.feedback.spool import Spool
from editloop.lsp.completer import Completer, LocalCompleter, RemoteCompleter
from editloop.lsp.config import LspConfig, project_name
from editloop.lsp.document import Change, Encoding, code_points
from editloop.lsp.framing import FrameReader
from editloop.lsp.session import Offered, Session, file_path
from editloop.lsp.sinks import EventPump, HttpSink
from editloop.settings import Settings

log = logging.getLogger(__name__)

ACCEPT_COMMAND = "editloop.accept"
DID_SHOW = "textDocument/didShowCompletion"
DID_PARTIALLY_ACCEPT = "textDocument/didPartiallyAcceptCompletion"
ENCODINGS: dict[str, Encoding] = {"utf-8": "utf-8", "utf-16": "utf-16", "utf-32": "utf-32"}
READ_CHUNK = 65536
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
UNAUTHORIZED = -32001  # JSON-RPC's range for server errors; LSP defines no authentication code


class EditloopProtocol(LanguageServerProtocol):
    """pygls drops a request whose params fail to parse without replying; answer it instead."""

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" in data and "method" in data:
                log.warning(
                    "invalid params for %s: %s", quoted(data["method"]), quoted(exc.__cause__ or exc, 300)
                )
                return _Unparsable(data["id"], exc)
            raise

    def handle_message(self, message):
        if isinstance(message, _Unparsable):
            self._send_response(message.id, error=message.error.to_response_error())
            return
        super().handle_message(message)


class _Unparsable:
    def __init__(self, msg_id: int | str, error: JsonRpcException) -> None:
        self.id, self.error = msg_id, error


class EditloopServer(LanguageServer):
    def __init__(self, settings: Settings, server_url: str | None, token: str | None) -> None:
        super().__init__("editloop", __version__, protocol_cls=EditloopProtocol)
        self.settings = settings
        self.launch = (server_url, token)
        self.session: Session | None = None
        self.ticker: asyncio.Task | None = None

    def note(self, message: str, level: int = logging.WARNING) -> None:
        """A log line here and in the editor's LSP log: how bad input is reported.

        Messages quote the client (a URI, a language id): a control character in them is escaped,
        so it cannot start a forged line.
        """
        message = CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], message)
        log.log(level, "%s", message)
        kind = types.MessageType.Warning if level >= logging.WARNING else types.MessageType.Info
        self.window_log_message(types.LogMessageParams(type=kind, message=f"editloop: {message}"))

    # Transports: pygls's start_io/start_tcp, with frames read by FrameReader (bounded, resyncing)

    def run_stdio(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout))
        try:
            asyncio.run(self._pump(_stdin_reader(stdin)))
        except BrokenPipeError:
            log.error("the client closed the connection")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    def run_tcp(self, host: str, port: int) -> None:
        """Listen on host:port; with API tokens set, a client's ``initialize`` must carry one."""
        self._stop_event = threading.Event()
        tokens = self.settings.api_tokens

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)  # has write() and close()
            if await self._pump(lambda: reader.read(READ_CHUNK), tokens=tokens, writer=writer):
                self.shutdown()  # as pygls: the session's end ends the server; a refused one does not

        async def listen() -> None:
            self._server = await asyncio.start_server(connection, host, port)
            log.info("editloop lsp listening on %s:%d", host, port)
            async with self._server:
                await self._server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):  # shutdown() closes the listener
            asyncio.run(listen())

    async def _pump(
        self,
        read: Callable[[], Awaitable[bytes]],
        tokens: list[str] | None = None,
        writer: asyncio.StreamWriter | None = None,
    ) -> bool:
        """Handle frames until the input ends; False if the client was refused (bad or no token)."""
        frames = FrameReader(read, self.settings.lsp_max_message_bytes, lambda m: self.note(m))
        authenticated = not tokens
        while self._stop_event is not None and not self._stop_event.is_set():
            body = await frames.next()
            if body is None:
                break
            if not authenticated:
                if not _authenticates(body, tokens or []):
                    log.warning("LSP connection refused: its first message was no initialize with a token")
                    if writer is not None:
                        writer.write(_unauthorized(body))
                        await writer.drain()
                        writer.close()
                    return False
                authenticated = True
            self._handle(body)
        return True

    def _handle(self, body: bytes) -> None:
        try:
            message = json.loads(body, object_hook=self.protocol.structure_message)
        except (ValueError, RecursionError) as exc:
            self.note(f"an LSP message of {len(body)} bytes is not JSON ({type(exc).__name__}): skipped")
            return
        try:
            self.protocol.handle_message(message)
        except Exception as exc:  # what pygls's own loop does: log, report, keep serving
            log.exception("cannot handle an LSP message")
            self.report_server_error(exc, JsonRpcException)


# Lifecycle


def initialize(ls: EditloopServer, params: types.InitializeParams) -> None:
    config = LspConfig.from_settings(ls.settings, *ls.launch)
    config = config.model_copy(update={"project": project_name(params.root_uri or params.root_path)})
    try:
        config = config.update(params.initialization_options)
    except EditloopError as exc:
        ls.note(exc.message)
    if config.project is None:
        config = config.model_copy(update={"project": ls.settings.feedback_default_project})
    ls.session = Session(
        config, make_completer(ls.settings, config), make_pump(ls.settings, config), warn=ls.note
    )
    ls.session.encoding = negotiated_encoding(params.capabilities)
    ls.session.root = params.root_uri
    if config.context:
        ls.session.watch(workspaces(ls.settings, params))


def workspaces(settings: Settings, params: types.InitializeParams) -> list[Workspace]:
    """One context workspace per workspace folder (or the root), each a local directory."""
    uris = [f.uri for f in params.workspace_folders or []] or ([params.root_uri] if params.root_uri else [])
    paths = [file_path(uri) for uri in uris]
    limits = context_limits(settings)
    return [Workspace(path, limits) for path in dict.fromkeys(paths) if path is not None and path.is_dir()]


def negotiated_encoding(capabilities: types.ClientCapabilities) -> Encoding:
    """The position encoding pygls announces for these capabilities (the client's first we know)."""
    chosen = ServerCapabilitiesBuilder.choose_position_encoding(capabilities)
    return ENCODINGS.get(getattr(chosen, "value", str(chosen)), "utf-16")


def initialized(ls: EditloopServer, params: types.InitializedParams) -> None:
    session = _session(ls)
    if isinstance(session.completer, LocalCompleter):
        session.completer.start()  # load the model now, not on the first keystroke
    ls.ticker = asyncio.ensure_future(_tick(session))


async def shutdown(ls: EditloopServer, params: None) -> None:
    await close_session(ls)


async def close_session(ls: EditloopServer) -> None:
    if ls.ticker is not None:
        ls.ticker.cancel()
    session, ls.session = ls.session, None
    if session is not None:
        session.tick()
        await session.completer.close()
        if session.pump is not None:
            await asyncio.to_thread(session.pump.close)


async def _tick(session: Session) -> None:
    """Retention horizons and settled rejections fire from here, at a fifth of the shortest wait."""
    while True:
        shortest = min([*session.config.retention_horizons_s, session.config.edit_settle_s])
        await asyncio.sleep(max(0.02, min(1.0, shortest / 5)))
        session.tick()


async def did_change_configuration(ls: EditloopServer, params: types.DidChangeConfigurationParams) -> None:
    session = _session(ls)
    options = params.settings
    if options is None and get_capability(ls.client_capabilities, "workspace.configuration", False):
        section = types.ConfigurationItem(section="editloop")
        options = (await ls.workspace_configuration_async(types.ConfigurationParams(items=[section])))[0]
    try:
        config = session.config.update(options)
    except EditloopError as exc:
        ls.note(exc.message)
        return
    before = session.config
    session.reconfigure(config)
    if (config.server_url, config.token) != (before.server_url, before.token):
        old_completer, session.completer = session.completer, make_completer(ls.settings, config)
        await old_completer.close()
    if (config.server_url, config.token, config.telemetry) != (
        before.server_url,
        before.token,
        before.telemetry,
    ):
        old_pump, session.pump = session.pump, make_pump(ls.settings, config)
        if old_pump is not None:
            await asyncio.to_thread(old_pump.close)


# Documents


def did_open(ls: EditloopServer, params: types.DidOpenTextDocumentParams) -> None:
    doc = params.text_document
    _session(ls).open(doc.uri, doc.language_id, doc.version, doc.text)


def did_change(ls: EditloopServer, params: types.DidChangeTextDocumentParams) -> None:
    changes: list[Change] = []
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            r = change.range
            changes.append(((r.start.line, r.start.character), (r.end.line, r.end.character), change.text))
        else:
            changes.append((None, None, change.text))
    _session(ls).change(params.text_document.uri, params.text_document.version, changes)


def did_save(ls: EditloopServer, params: types.DidSaveTextDocumentParams) -> None:
    _session(ls).save(params.text_document.uri)


def did_close(ls: EditloopServer, params: types.DidCloseTextDocumentParams) -> None:
    _session(ls).close(params.text_document.uri)


# Completions


async def inline_completion(
    ls: EditloopServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList | None:
    automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
    offered = await _complete(ls, params.text_document.uri, params.position, automatic)
    if offered is None:
        return None
    at = _position(offered)
    items = [
        types.InlineCompletionItem(
            insert_text=choice.text,
            range=types.Range(at, at),
            command=_accept_command(offered.completion_id, choice.index),
        )
        for choice in offered.choices
    ]
    return types.InlineCompletionList(items=items)


async def completion(ls: EditloopServer, params: types.CompletionParams) -> types.CompletionList:
    """For editors without inline completion: each choice's first line as a plain-text item."""
    invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
    offered = await _complete(ls, params.text_document.uri, params.position, automatic=not invoked)
    if offered is None:
        return types.CompletionList(is_incomplete=True, items=[])
    at = _position(offered)
    items = []
    for rank, choice in enumerate(offered.choices):
        line = choice.text.splitlines()[0] if choice.text else ""
        if not line.strip():
            continue
        partial = len(line) if line != choice.text else None
        items.append(
            types.CompletionItem(
                label=line.strip(),
                kind=types.CompletionItemKind.Text,
                detail="editloop",
                sort_text=f"{rank:02d}",
                filter_text=line,
                text_edit=types.TextEdit(range=types.Range(at, at), new_text=line),
                insert_text_format=types.InsertTextFormat.PlainText,
                insert_text_mode=types.InsertTextMode.AsIs,
                command=_accept_command(offered.completion_id, choice.index, partial),
            )
        )
    return types.CompletionList(is_incomplete=True, items=items)


async def _complete(
    ls: EditloopServer, uri: str, position: types.Position, automatic: bool
) -> Offered | None:
    session = _session(ls)
    try:
        return await session.complete(uri, (position.line, position.character), automatic)
    except EditloopError as exc:
        ls.note(f"no completion for {uri}: {exc.message}")
        return None


def _position(offered: Offered) -> types.Position:
    return types.Position(line=offered.position[0], character=offered.position[1])


def _accept_command(completion_id: str, choice: int, length: int | None = None) -> types.Command:
    arguments: list[Any] = [completion_id, choice] + ([length] if length is not None else [])
    return types.Command(title="editloop: accepted", command=ACCEPT_COMMAND, arguments=arguments)


# What the editor did with a completion


def accept(ls: EditloopServer, *arguments: Any) -> None:
    """``workspace/executeCommand editloop.accept [completion_id, choice, accepted_length?]``."""
    parsed = _command_arguments(list(arguments))
    if parsed is None:
        ls.note(f"{ACCEPT_COMMAND} needs [completion_id, choice, length?], got {list(arguments)!r}")
        return
    _session(ls).accept(*parsed)


def did_show(ls: EditloopServer, params: Any) -> None:
    parsed = _item_arguments(params)
    if parsed is None:
        ls.note(f"{DID_SHOW}: no editloop item in {params!r}")
        return
    _session(ls).shown(parsed[0], parsed[1])


def did_partially_accept(ls: EditloopServer, params: Any) -> None:
    parsed = _item_arguments(params)
    length = _field(params, "acceptedLength")
    if parsed is None or not isinstance(length, int) or length < 0:
        ls.note(f"{DID_PARTIALLY_ACCEPT}: no editloop item or acceptedLength in {params!r}")
        return
    session = _session(ls)
    text = _field(_field(params, "item"), "insertText")
    points = code_points(text, length, session.encoding) if isinstance(text, str) else length
    session.accept(parsed[0], parsed[1], points)


def _command_arguments(arguments: list[Any]) -> tuple[str, int, int | None] | None:
    if len(arguments) not in (2, 3) or not isinstance(arguments[0], str) or not arguments[0]:
        return None
    if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in arguments[1:]):
        return None
    return arguments[0], arguments[1], arguments[2] if len(arguments) == 3 else None


def _item_arguments(params: Any) -> tuple[str, int, int | None] | None:
    """Our command's arguments inside the ``item`` a Copilot-style notification echoes back."""
    command = _field(_field(params, "item"), "command")
    if _field(command, "command") != ACCEPT_COMMAND:
        return None
    arguments = _field(command, "arguments")
    return _command_arguments(arguments) if isinstance(arguments, list) else None


def _field(value: Any, name: str) -> Any:
    """A field of a notification's params, parsed (attrs) or not (dict)."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _session(ls: EditloopServer) -> Session:
    if ls.session is None:
        raise EditloopError("the client sent a request before initialize")
    return ls.session


# Wiring


def make_completer(settings: Settings, config: LspConfig) -> Completer:
    if config.server_url:
        return RemoteCompleter(config.server_url, config.token, timeout_s=settings.request_timeout_s + 5)
    return LocalCompleter(settings)


def make_pump(settings: Settings, config: LspConfig) -> EventPump | None:
    if not config.telemetry:
        return None
    if config.server_url:
        url, token = config.server_url, config.token
        return EventPump(lambda: HttpSink(url, token), Spool(settings.feedback_dir / "lsp-spool.jsonl"))
    if not settings.feedback_enabled:
        return None
    from editloop.feedback.log import open_feedback

    return EventPump(lambda: open_feedback(settings))


def build_server(
    settings: Settings, server_url: str | None = None, token: str | None = None
) -> EditloopServer:
    server = EditloopServer(settings, server_url, token)
    features: list[tuple[str, Any, Any]] = [
        (types.INITIALIZE, initialize, None),
        (types.INITIALIZED, initialized, None),
        (types.SHUTDOWN, shutdown, None),
        (types.WORKSPACE_DID_CHANGE_CONFIGURATION, did_change_configuration, None),
        (types.TEXT_DOCUMENT_DID_OPEN, did_open, None),
        (types.TEXT_DOCUMENT_DID_CHANGE, did_change, None),
        (types.TEXT_DOCUMENT_DID_SAVE, did_save, None),
        (types.TEXT_DOCUMENT_DID_CLOSE, did_close, None),
        (types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_completion, types.InlineCompletionOptions()),
        (types.TEXT_DOCUMENT_COMPLETION, completion, types.CompletionOptions()),
        (DID_SHOW, did_show, None),
        (DID_PARTIALLY_ACCEPT, did_partially_accept, None),
    ]
    for name, handler, options in features:
        server.feature(name, options)(handler)
    server.command(ACCEPT_COMMAND)(accept)
    return server


def serve(settings: Settings, server_url: str | None, token: str | None, tcp: tuple[str, int] | None) -> None:
    """Run until the client exits: over stdio, or TCP when ``tcp`` is (host, port)."""
    if tcp is not None:
        check_tcp_bind(settings, tcp[0])
    server = build_server(settings, server_url, token)
    try:
        if tcp is not None:
            server.run_tcp(*tcp)
        else:
            stdout = _claim_stdout()
            server.run_stdio(sys.stdin.buffer, stdout)
    finally:
        _close_now(server)


def check_tcp_bind(settings: Settings, host: str) -> None:
    """``editloop serve``'s rule: beyond loopback only with tokens, which clients must then send."""
    from editloop.settings import is_loopback

    if not settings.api_tokens and not is_loopback(host):
        raise BadRequestError(
            f"--tcp {host}: the language server would be open to the network without authentication; "
            "bind 127.0.0.1, or set EDITLOOP_API_TOKENS (clients then send one as "
            "initializationOptions.authToken)"
        )


def _stdin_reader(stdin: BinaryIO) -> Callable[[], Awaitable[bytes]]:
    """Reads of stdin on a daemon thread: a read blocked on a silent client never holds up exit
    (pygls reads on its thread pool, which is joined at shutdown)."""
    chunks: asyncio.Queue[bytes] | None = None
    loop: asyncio.AbstractEventLoop | None = None

    fd = stdin.fileno()

    def pump(queue: asyncio.Queue[bytes], on: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                # os.read, not stdin.read1: a daemon thread blocked inside a buffered reader holds
                # its lock, and the interpreter aborts at exit when it finds that lock taken.
                chunk = os.read(fd, READ_CHUNK)
            except OSError:
                chunk = b""
            try:
                on.call_soon_threadsafe(queue.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: the server is going away
                return
            if not chunk:
                return

    async def read() -> bytes:
        nonlocal chunks, loop
        if chunks is None:
            chunks, loop = asyncio.Queue(), asyncio.get_running_loop()
            threading.Thread(target=pump, args=(chunks, loop), name="lsp-stdin", daemon=True).start()
        return await chunks.get()

    return read


def _initialize_token(message: Any) -> Any:
    if not isinstance(message, dict) or message.get("method") != "initialize":
        return None
    options = (message.get("params") or {}).get("initializationOptions")
    if not isinstance(options, dict):
        return None
    nested = options.get("editloop")
    section = nested if isinstance(nested, dict) else options
    token = section.get("authToken")
    return token if isinstance(token, str) else None


def _authenticates(body: bytes, tokens: list[str]) -> bool:
    try:
        token = _initialize_token(json.loads(body))
    except (ValueError, RecursionError):
        return False
    return isinstance(token, str) and any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens)


def _unauthorized(body: bytes) -> bytes:
    """A JSON-RPC error frame answering the refused request (if it had an id)."""
    try:
        message = json.loads(body)
        msg_id = message.get("id") if isinstance(message, dict) else None
    except (ValueError, RecursionError):
        msg_id = None
    reply = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": msg_id if isinstance(msg_id, int | str) else None,
            "error": {
                "code": UNAUTHORIZED,
                "message": "unauthorized: send one of the server's EDITLOOP_API_TOKENS as "
                "initializationOptions.authToken in initialize",
            },
        }
    ).encode()
    return b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply)


def _close_now(server: EditloopServer) -> None:
    """The client went away without ``shutdown``: deliver what is queued, free the model."""
    session, server.session = server.session, None
    if session is None:
        return
    session.tick()
    if session.pump is not None:
        session.pump.close()
    if isinstance(session.completer, LocalCompleter):
        session.completer.models.close()


def _claim_stdout():
    """Keep the real stdout for LSP frames; anything else printing there (C libraries) goes to stderr."""
    lsp_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return lsp_out


def parse_tcp(value: str) -> tuple[str, int]:
    """``HOST:PORT`` for ``--tcp`` (``PORT`` alone means 127.0.0.1); raises BadRequestError otherwise."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequestError(f"--tcp {value!r}: expected HOST:PORT, e.g. 127.0.0.1:2087")
    return host or "127.0.0.1", int(port)
