"""A real editloop server on a free loopback port, over a private copy of the tiny registry."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI

from editloop.server.background import background_server, free_port
from editloop.settings import Settings, load_settings

USER, ADMIN = "user-token", "admin-token"


def server_env(home: Path, feedback_redis: str) -> dict[str, str]:
    """The environment of an ``editloop`` child (the LSP server) on ``home``'s tiny model."""
    return {
        **os.environ,
        "EDITLOOP_HOME": str(home),
        "EDITLOOP_REDIS_URL": feedback_redis,
        "EDITLOOP_ABSTAIN_THRESHOLD": "0",  # the tiny model scores low: show what it has
        "EDITLOOP_MODEL_THREADS": "1",
    }


def copy_home(source: Settings, target: Path) -> Path:
    shutil.copytree(source.models_dir, target / "models", ignore=shutil.ignore_patterns(".staging"))
    return target


@contextmanager
def running_server(home: Path, **overrides: object) -> Iterator[tuple[str, Settings, FastAPI]]:
    defaults = {"port": free_port(), "api_tokens": [USER], "admin_token": ADMIN, "registry_poll_s": 0.2}
    settings = load_settings(home=home, **{**defaults, **overrides})
    with background_server(settings) as (url, app):
        yield url, settings, app


def auth(token: str = USER) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30)
