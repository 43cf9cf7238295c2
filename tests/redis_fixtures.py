"""A real ``redis-server`` for tests: a free loopback port, AOF fsynced always in a temp dir.

Import the fixtures in a test module (pytest finds fixtures imported into the module)::

    from tests.redis_fixtures import redis_proc, redis_url  # noqa: F401

    def test_x(redis_proc):
        store = FeedbackStore.from_url(redis_proc.url)
        ...
        redis_proc.kill()      # SIGKILL, as a crash
        redis_proc.start()     # same dir, same port: replays the AOF

or, outside pytest fixtures, ``with running_redis(tmp_path) as proc: ...``.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from editloop.feedback.redis_server import RedisServer
from editloop.server.background import free_port


@contextmanager
def running_redis(data_dir: Path, **config: str) -> Iterator[RedisServer]:
    """A started redis-server on a free port with AOF in ``data_dir``; stopped (or killed) after.

    ``config`` adds or overrides redis.conf lines: ``running_redis(d, **{"aof-use-rdb-preamble": "no"})``.
    """
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer(data_dir, port=free_port(), config=dict(config))
    server.start()
    try:
        yield server
    finally:
        server.stop(timeout_s=5)
        server.kill()


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server per test: ``.url``, ``.kill()`` (SIGKILL), ``.start()``, ``.aof_files()``."""
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_url(redis_proc: RedisServer) -> str:
    return redis_proc.url
