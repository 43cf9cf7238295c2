"""What the server refuses before reading a body: an oversized one (413), and any completion while
the completion queue is full (503)."""

import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The routes that take a completion slot (``Limiter``); their overload answer must not wait on a body.
COMPLETION_PATHS = frozenset({"/complete", "/infill", "/v1/completions", "/tabby/v1/completions"})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` itself: FastAPI re-raises an HTTPException met while parsing a body
    (any other error there becomes its own 400), and the app's handler answers it as 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes")


class BodyLimit:
    """ASGI middleware: Content-Length over the limit, or a chunked body that grows past it, gets 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, 413, "body_too_large", f"request body over {self.max_bytes} bytes")
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # read outside a route (a middleware): answer it here
            if not started:
                await send_error(send, 413, "body_too_large", str(exc.detail))


class Admission:
    """ASGI middleware: a completion request meets a full queue with 503 at once, body unread.

    ``is_full`` reads the live limiter (the services exist only once the lifespan ran). The route
    still takes its slot through ``Limiter.acquire``, which stays the authority under a race.
    """

    def __init__(self, app: ASGIApp, is_full: Callable[[Scope], bool]) -> None:
        self.app = app
        self.is_full = is_full

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in COMPLETION_PATHS and self.is_full(scope):
            await send_error(send, 503, "overloaded", "the completion queue is full; retry shortly")
            return
        await self.app(scope, receive, send)


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """The server's JSON error body, sent from below the app (where no exception handler runs)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
