"""Where the LSP gets completions: the engine in this process, or a running ``editloop serve``.

Both answer a :class:`CompletionRequest` with the engine's :class:`CompletionResult`, so the LSP
handlers do not know which one they talk to.

>>> completer = RemoteCompleter("http://127.0.0.1:8765", token="t")  # doctest: +SKIP
>>> result = await completer.complete(CompletionRequest(prefix="x = "), threading.Event())  # doctest: +SKIP
"""

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx

from editloop.clients import bearer
from editloop.completion.builder import build_engine, build_models
from editloop.completion.context.workspace import Workspace
from editloop.completion.types import MAX_EXTRA, CompletionRequest, CompletionResult
from editloop.errors import BackendError, ModelError
from editloop.settings import Settings

log = logging.getLogger(__name__)


class Completer(Protocol):
    records_completions: bool  # True: the far side stores the `completion` event itself

    async def complete(
        self, request: CompletionRequest, cancel: threading.Event, workspace: Workspace | None = None
    ) -> CompletionResult:
        """Ranked candidates; setting ``cancel`` stops the decode (the result then comes back early).

        ``workspace``: the editor's project, whose context joins the request.
        """
        ...

    async def close(self) -> None: ...


class LocalCompleter:
    """The engine on the registry's current model, following hot-swaps like the server does."""

    records_completions = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = build_models(settings)
        self.engine = build_engine(settings, self.models)
        # Two workers: a superseded decode finishes its last step while the newer one starts.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="editloop-lsp-engine")
        self._ready: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Load (and validate) the model in the background; the first completion waits for it."""
        if self._ready is None:
            loop = asyncio.get_running_loop()
            self._ready = loop.run_in_executor(self._pool, self.models.start, self.settings.registry_poll_s)

    async def complete(
        self, request: CompletionRequest, cancel: threading.Event, workspace: Workspace | None = None
    ) -> CompletionResult:
        self.start()
        assert self._ready is not None
        await asyncio.shield(self._ready)
        if self.models.version is None:
            raise ModelError("no model is loaded: " + (self.models.last_error or "none is active"))
        budget_ms = int(self.settings.request_timeout_s * 1000)
        request = request.model_copy(
            update={"time_budget_ms": min(request.time_budget_ms or budget_ms, budget_ms)}
        )
        loop = asyncio.get_running_loop()
        # The engine gathers the workspace's snippets and proposes its codebase continuations.
        return await loop.run_in_executor(self._pool, self.engine.complete, request, cancel, workspace)

    async def close(self) -> None:
        if self._ready is not None:
            await asyncio.gather(self._ready, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._pool, self.models.close)
        self._pool.shutdown(wait=False)


class RemoteCompleter:
    """A client of ``POST /complete``; the server stops a decode whose client hung up or was superseded."""

    records_completions = True

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        headers = bearer(token)
        self.url = url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)

    async def complete(
        self, request: CompletionRequest, cancel: threading.Event, workspace: Workspace | None = None
    ) -> CompletionResult:
        if workspace is not None:  # the server may not read this machine's files: they go as `extra`
            gathered = await asyncio.to_thread(
                workspace.gather, request.filepath, request.prefix, request.suffix
            )
            request = request.model_copy(update={"extra": [*request.extra, *gathered][:MAX_EXTRA]})
        try:
            reply = await self.http.post("/complete", json=request.model_dump(exclude_none=True))
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.url}/complete: {exc!r}") from exc
        if reply.status_code != 200:
            raise BackendError(f"{self.url}/complete answered {reply.status_code}: {_error_code(reply)}")
        return CompletionResult.model_validate(reply.json())

    async def close(self) -> None:
        await self.http.aclose()


def _error_code(reply: httpx.Response) -> str:
    try:
        error = reply.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return reply.text[:200]
