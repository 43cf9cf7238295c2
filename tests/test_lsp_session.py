"""The session's latency rules on the real in-process engine: cancel, supersede, stale, debounce.

The completer is the real :class:`LocalCompleter` on the tiny model, observed from outside so the
test can see how the decode it started ended (``cancelled`` when the cancel event reached it).
"""

import asyncio
import threading

import pytest
import pytest_asyncio

from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.lsp.completer import LocalCompleter
from editloop.lsp.config import LspConfig
from editloop.lsp.session import Session

URI = "file:///p/m.py"
DOC = "import os\n\n\ndef add(a, b):\n    return \n\n\ndef main():\n    path = \n    print(path)\n"
RETURN_AT, PATH_AT = (4, 11), (8, 11)

pytestmark = pytest.mark.asyncio(loop_scope="function")


class Observed:
    """The real completer; each decode runs to its own end even when the request awaiting it is cancelled."""

    records_completions = False

    def __init__(self, inner: LocalCompleter) -> None:
        self.inner = inner
        self.started = asyncio.Event()
        self.decodes: list[asyncio.Task] = []

    async def complete(
        self, request: CompletionRequest, cancel: threading.Event, workspace=None
    ) -> CompletionResult:
        decode = asyncio.ensure_future(self.inner.complete(request, cancel, workspace))
        self.decodes.append(decode)
        self.started.set()
        return await asyncio.shield(decode)

    async def close(self) -> None:
        await self.inner.close()


@pytest_asyncio.fixture
async def session(tiny_settings, tiny_version):
    shows_anything = tiny_settings.model_copy(update={"abstain_threshold": 0.0})  # the tiny model scores low
    completer = Observed(LocalCompleter(shows_anything))
    config = LspConfig.from_settings(tiny_settings).model_copy(update={"debounce_ms": 300, "candidates": 4})
    session = Session(config, completer, pump=None)
    session.open(URI, "python", 1, DOC)
    await session.complete(URI, RETURN_AT, automatic=False)  # loads the model
    completer.started.clear()
    completer.decodes.clear()
    yield session
    await completer.close()


def finish_reasons(decode: asyncio.Task) -> set[str]:
    return {c.finish_reason for c in decode.result().candidates}


async def test_a_cancelled_request_stops_its_decode(session) -> None:
    request = asyncio.ensure_future(session.complete(URI, PATH_AT, automatic=False))
    await session.completer.started.wait()
    request.cancel()  # what pygls does on $/cancelRequest
    with pytest.raises(asyncio.CancelledError):
        await request
    (decode,) = session.completer.decodes
    await decode
    # The cancel reached the decode; a candidate that had already ended before it keeps its reason.
    assert "cancelled" in finish_reasons(decode)
    assert session.inflight == {}


async def test_a_newer_request_supersedes_one_that_is_decoding(session) -> None:
    older = asyncio.ensure_future(session.complete(URI, PATH_AT, automatic=False))
    await session.completer.started.wait()
    newer = await session.complete(URI, RETURN_AT, automatic=False)
    assert await older is None
    assert newer is not None and newer.choices
    first, _ = session.completer.decodes
    assert "cancelled" in finish_reasons(first)


async def test_a_request_whose_document_changed_meanwhile_returns_nothing(session) -> None:
    request = asyncio.ensure_future(session.complete(URI, PATH_AT, automatic=False))
    await session.completer.started.wait()
    session.change(URI, 2, [((0, 0), (0, 0), "#\n")])
    assert await request is None
    (decode,) = session.completer.decodes
    await decode
    # not cancelled: it runs to its end and fills the cache that the next request may hit
    assert "cancelled" not in finish_reasons(decode)


async def test_typing_during_the_debounce_never_reaches_the_model(session) -> None:
    request = asyncio.ensure_future(session.complete(URI, PATH_AT, automatic=True))
    await asyncio.sleep(0.05)
    session.change(URI, 2, [(PATH_AT, PATH_AT, "o")])
    assert await request is None
    assert session.completer.decodes == []
