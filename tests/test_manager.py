"""Hot-swap ownership: leases keep the old model alive; a bad version never replaces a good one."""

import pytest

from editloop.completion.served import load_served, validate_served
from editloop.models.fim import QWEN
from editloop.models.llama import LlamaBackend
from editloop.models.manager import ModelManager
from editloop.models.registry import Registry
from tests.server_fixtures import copy_home


@pytest.fixture
def registry(tiny_settings, tiny_version, tmp_path) -> Registry:
    return Registry(copy_home(tiny_settings, tmp_path) / "models")


def _manager(registry: Registry) -> ModelManager:
    return ModelManager(
        registry, lambda v: load_served(v, LlamaBackend.from_version(v, max_candidates=4)), validate_served
    )


def _republish(registry: Registry, name: str = "v1") -> str:
    """A second version with the same files (a retrain that changed nothing)."""
    return registry.republish(name).name


def test_old_model_serves_leased_requests_until_they_end(registry) -> None:
    models = _manager(registry)
    models.reload()
    v2 = _republish(registry)
    with models.lease() as old:
        registry.activate(v2)
        assert models.reload()
        assert models.version == v2
        assert old.version == "v1"
        assert old.backend.tokenize("x = 1")  # still usable: not closed under the lease
        with models.lease() as new:
            assert new.version == v2
    with pytest.raises(Exception, match="closed"):
        old.backend.tokenize("x")  # closed once its last lease ended
    models.close()


def test_unloadable_version_keeps_the_old_model_and_says_why(registry) -> None:
    models = _manager(registry)
    models.reload()
    with registry.stage() as staging:
        (staging / "model-q8_0.gguf").write_bytes(b"GGUF" + b"\x00" * 64)  # valid hash, unloadable model
        broken = registry.publish(staging, kind="retrain", fim=QWEN, gguf={"q8_0": "model-q8_0.gguf"}).name
    registry.activate(broken)
    assert not models.reload()
    assert models.version == "v1"
    status = models.status()
    assert status["failed_swaps"] == 1 and status["last_error"]
    with models.lease() as backend:
        assert backend.version == "v1"
    models.close()


def test_corrupted_file_is_refused_before_loading(registry) -> None:
    models = _manager(registry)
    models.reload()
    v2 = _republish(registry)
    registry.activate(v2)
    gguf = registry.get(v2).gguf_path()
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    assert not models.reload()
    assert models.version == "v1" and "sha256" in (models.status()["last_error"] or "")
    models.close()


def test_watcher_follows_the_registry(registry) -> None:
    import time

    models = _manager(registry)
    models.start(poll_s=0.05)
    v2 = _republish(registry)
    registry.activate(v2)
    deadline = time.monotonic() + 30
    while models.version != v2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert models.version == v2
    models.close()


def test_a_corrupt_current_version_at_start_falls_back_loudly(registry, caplog) -> None:
    """Issue 26 #10: on main, a restart with a corrupt current version served nothing (503s) while
    the version before it verified."""
    v2 = _republish(registry)
    registry.activate(v2)
    gguf = registry.get(v2).gguf_path()
    gguf.write_bytes(gguf.read_bytes()[:-1] + b"\x00")
    models = _manager(registry)
    with caplog.at_level("ERROR", logger="editloop.models.manager"):
        models.start(poll_s=0.05)
    try:
        assert models.version == "v1"
        status = models.status()
        assert status["fallback"]["from"] == v2 and status["fallback"]["to"] == "v1"
        assert "sha256" in status["fallback"]["reason"] and "sha256" in status["last_error"]
        assert any("serving v1 instead" in r.getMessage() for r in caplog.records)
        registry.activate("v1")  # the operator picks a version: the fallback is over
        assert models.reload() is False and models.version == "v1"
        assert models.status()["fallback"] is None and models.status()["last_error"] is None
    finally:
        models.close()
