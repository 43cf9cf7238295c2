"""The Redis editloop runs itself when ``EDITLOOP_REDIS_URL`` is unset, and its supervisor.

One ``redis-server`` per data directory, shared by every editloop process on the machine that
uses that home (server, LSP, trainer, CLI): it listens on a unix socket only (mode 700, so only
this user reaches it), keeps an append-only file fsynced on every write in ``home/redis``, and
whichever process finds it dead restarts it (a file lock keeps two from starting it at once).

>>> embedded = EmbeddedRedis(settings.redis_dir)  # doctest: +SKIP
>>> embedded.start()            # starts it, or joins the one another process started
>>> redis.Redis.from_url(embedded.url).ping()
>>> embedded.stop()             # stops it only if this process started it
"""

import atexit
import hashlib
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from editloop.errors import FeedbackError
from editloop.filelock import file_lock

log = logging.getLogger(__name__)

# Durability first: every acknowledged write is in the fsynced AOF; no RDB snapshots on a timer
# (the AOF is the record); never evict a feedback event to make room.
DURABLE_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "always",
    "no-appendfsync-on-rewrite": "no",
    "aof-load-truncated": "yes",
    "maxmemory-policy": "noeviction",
    "save": '""',
    "protected-mode": "yes",
    "daemonize": "no",
}
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux


def socket_path(data_dir: Path) -> Path:
    """``data_dir/redis.sock``, or a stable short path under the temp dir when that is too long."""
    path = data_dir.resolve() / "redis.sock"
    if len(str(path)) <= SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"editloop-redis-{digest}.sock"


@dataclass
class RedisServer:
    """One ``redis-server`` process with AOF in ``data_dir``: on a loopback ``port``, or a unix socket.

    Tests use it directly (start, SIGKILL, restart); editloop wraps it in :class:`EmbeddedRedis`.
    """

    data_dir: Path
    port: int = 0
    binary: str = "redis-server"
    config: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return socket_path(self.data_dir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket}"

    @property
    def aof_dir(self) -> Path:
        return self.data_dir / "appendonlydir"

    def config_text(self) -> str:
        settings = {**DURABLE_CONFIG, "dir": str(self.data_dir.resolve()), "logfile": "redis.log"}
        if self.port:
            settings |= {"port": str(self.port), "bind": "127.0.0.1"}
        else:
            settings |= {"port": "0", "unixsocket": str(self.socket), "unixsocketperm": "700"}
        settings |= self.config
        return "".join(f"{key} {value}\n" for key, value in settings.items())

    def start(self, timeout_s: float = 20.0, die_with_parent: bool = False) -> None:
        """Start and wait until it answers. ``die_with_parent``: SIGTERM it (a clean AOF shutdown) when
        the thread that started it ends, so a crashed editloop leaves no stray redis-server."""
        binary = shutil.which(self.binary)
        if binary is None:
            raise FeedbackError(
                f"{self.binary} not found: install it (apt-get install redis-server) "
                "or point EDITLOOP_REDIS_URL at a Redis server"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "redis.conf"
        conf.write_text(self.config_text())
        # Its own session: a Ctrl-C in the terminal reaches editloop, which flushes, then stops Redis.
        command = [binary, str(conf)]
        setpriv = shutil.which("setpriv")
        if die_with_parent and setpriv:
            command = [setpriv, "--pdeathsig", "TERM", *command]  # setpriv execs redis-server
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise FeedbackError(f"redis-server exited at start: {self._log_tail()}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise FeedbackError(f"redis-server did not answer within {timeout_s:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        path = self.data_dir / "redis.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(lines[-3:]) or "no log"

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            # PING answers while an AOF is still loading is refused (LOADING): not ready yet.
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError):
            return False
        finally:
            client.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Graceful: SIGTERM makes Redis fsync and close its AOF."""
        if not self.running():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, no final fsync beyond what each write did."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, timeout_s: float = 20.0) -> None:
        self.stop()
        self.start(timeout_s)

    def aof_files(self) -> list[Path]:
        return sorted(p for p in self.aof_dir.glob("*") if p.is_file()) if self.aof_dir.exists() else []


class EmbeddedRedis:
    """The per-home Redis: started unless running, watched, restarted if it dies, stopped by its starter."""

    def __init__(self, data_dir: Path, binary: str = "redis-server", check_s: float = 1.0) -> None:
        self.server = RedisServer(data_dir, binary=binary)
        self.check_s = check_s
        self.restarts = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def owned(self) -> bool:
        """This process started the running redis-server (and so stops it)."""
        return self.server.running()

    def ensure_running(self) -> bool:
        """Start it unless it answers; True when it answers afterwards."""
        if self.server.ping():
            return True
        with file_lock(self.server.data_dir / "supervisor.lock"):
            if self.server.ping():  # another process started it while we waited for the lock
                return True
            self.server.kill()  # ours, if any, is dead or hung: reap it before starting anew
            try:
                self.server.start(die_with_parent=True)
            except FeedbackError as exc:
                self.last_error = exc.message
                raise
        self.last_error = None
        return True

    def start(self, timeout_s: float = 30.0) -> None:
        """Start (or join) it from the watcher thread, which lives as long as this object is started:
        the redis-server it spawns dies with that thread, never with a short-lived pool thread."""
        self._stop.clear()
        ready, failure = threading.Event(), list[str]()
        self._watcher = threading.Thread(
            target=self._watch, args=(ready, failure), name="editloop-redis-watch", daemon=True
        )
        self._watcher.start()
        if not ready.wait(timeout_s):
            failure.append(f"redis-server did not start within {timeout_s:.0f} s")
        if failure:
            self.stop()
            raise FeedbackError(failure[0])
        # A forced exit (a second Ctrl-C) skips the app's shutdown: still stop what we started.
        atexit.register(self.stop)

    def _watch(self, ready: threading.Event, failure: list[str]) -> None:
        try:
            self.ensure_running()
        except FeedbackError as exc:
            failure.append(exc.message)
            return
        finally:
            ready.set()
        while not self._stop.wait(self.check_s):
            if self.server.ping():
                continue
            log.warning("embedded redis-server is not answering; restarting it")
            try:
                self.ensure_running()
                self.restarts += 1
            except FeedbackError as exc:
                log.error("cannot restart redis-server: %s", exc.message)
        self.server.stop()  # from this thread, before its end would send the death signal

    def status(self) -> dict:
        return {
            "mode": "embedded",
            "url": self.url,
            "owned": self.owned,
            "restarts": self.restarts,
            "last_error": self.last_error,
        }

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None
        self.server.stop()
