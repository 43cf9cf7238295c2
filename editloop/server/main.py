"""``editloop serve``: uvicorn over the app, loopback-only unless tokens protect it."""

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from editloop.server.app import create_app
from editloop.settings import Settings, is_loopback

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def effective_host(settings: Settings) -> str:
    """The address to bind: without tokens, anything but loopback would open the server to the network."""
    if settings.api_tokens or is_loopback(settings.host):
        return settings.host
    log.warning(
        "no EDITLOOP_API_TOKENS set: binding 127.0.0.1 instead of %s (set tokens to serve the network)",
        settings.host,
    )
    return "127.0.0.1"


def _as_sidecar() -> None:
    """In the child: the CPU only when the server leaves it idle, and SIGTERM when the server dies
    however it dies.

    SCHED_IDLE, not just a nice level: a niced trainer still takes its share of a busy core, and
    a completion waits for it (p95 9.9 s beside an SFT step on 2 cores). Under SCHED_IDLE the
    kernel runs it only where nothing else wants the core and preempts it at once when a request
    arrives; its threads (torch's among them) inherit the policy. uvicorn re-raises the SIGTERM it
    handled, so the server's own cleanup may never run.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: a nice level is what there is
        os.nice(10)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def trainer_sidecar(settings: Settings) -> Iterator[subprocess.Popen | None]:
    """``editloop trainer`` beside the server, at lower CPU priority so completions stay fast."""
    if not (settings.trainer and settings.feedback_enabled):
        yield None
        return
    env = {**os.environ, "EDITLOOP_HOME": str(settings.home)}
    child = subprocess.Popen([sys.executable, "-m", "editloop", "trainer"], env=env, preexec_fn=_as_sidecar)
    log.info("trainer started beside the server (pid %d); EDITLOOP_TRAINER=false turns it off", child.pid)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def serve(settings: Settings, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until stopped; ``on_ready(url)`` runs once the model is loaded and the port answers."""
    host = effective_host(settings)
    if not settings.api_tokens:
        log.warning("no API tokens configured: open to local users only, on %s:%d", host, settings.port)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        url = f"http://{_reachable(host)}:{settings.port}"
        threading.Thread(target=_when_started, args=(server, url, on_ready), daemon=True).start()
    with trainer_sidecar(settings):
        server.run()
    if not server.started:
        sys.exit(3)  # what uvicorn.run does when startup failed (port taken, lifespan error)


def _reachable(host: str) -> str:
    """An address to print for ``host``: a wildcard bind is reachable on loopback too."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _when_started(server: uvicorn.Server, url: str, on_ready: Callable[[str], None]) -> None:
    # uvicorn sets `started` after the lifespan (model load, feedback log) and the socket bind.
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.1)
    on_ready(url)
