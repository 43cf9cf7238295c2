"""Two `editloop serve` replicas over one registry and one Redis: a new version reaches both at once."""

import time
from contextlib import ExitStack

import httpx

from editloop.feedback import control
from editloop.feedback.log import open_feedback
from editloop.models.registry import Registry
from tests.server_fixtures import auth, copy_home, running_server


def _serving(url: str) -> str | None:
    return httpx.get(f"{url}/health", headers=auth(), timeout=10).json()["model"]["version"]


def test_an_announced_version_reaches_every_replica(tiny_settings, tiny_version, tmp_path) -> None:
    home = copy_home(tiny_settings, tmp_path)
    with ExitStack() as stack:
        # A registry poll of an hour: only the pub/sub announcement can make them swap this fast.
        replicas = [stack.enter_context(running_server(home, registry_poll_s=3600)) for _ in range(2)]
        urls = [url for url, _settings, _app in replicas]
        assert [_serving(u) for u in urls] == [tiny_version.name] * 2
        registry = Registry(home / "models")
        new = registry.import_gguf(tiny_version.gguf_path(), tiny_version.hf_path())
        registry.activate(new.name)
        with open_feedback(replicas[0][1], replay=False) as feedback:
            assert control.announce_model(feedback.store.client, new.name) == 2  # both replicas listen
        deadline = time.monotonic() + 30
        while [_serving(u) for u in urls] != [new.name] * 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [_serving(u) for u in urls] == [new.name] * 2
