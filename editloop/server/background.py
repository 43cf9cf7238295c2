"""Run the server in a background thread of this process: for the demo, benchmarks and tests.

>>> with background_server(settings) as (url, app):  # doctest: +SKIP
...     httpx.post(f"{url}/complete", json={"prefix": "x = "})
"""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from editloop.errors import EditloopError
from editloop.server.app import create_app
from editloop.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def background_server(settings: Settings, start_timeout_s: float = 120) -> Iterator[tuple[str, FastAPI]]:
    """Serve ``settings`` on 127.0.0.1:settings.port; yield (base URL, app); stop on exit."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="editloop-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise EditloopError(f"the server did not start on 127.0.0.1:{settings.port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
