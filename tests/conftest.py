"""Session fixtures: one tiny starter model, built by the real pipeline, shared by every test."""

from pathlib import Path

import pytest

from editloop.models.registry import ModelVersion, Registry
from editloop.settings import Settings, load_settings
from editloop.starter.bootstrap import BootstrapOptions, bootstrap
from tests.redis_fixtures import redis_proc, redis_url  # noqa: F401  (a real redis-server per test)


@pytest.fixture(scope="session")
def tiny_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(home=tmp_path_factory.mktemp("editloop-home"))


@pytest.fixture(scope="session")
def tiny_version(tiny_settings: Settings) -> ModelVersion:
    """The tiny starter model: stdlib corpus, tokenizer, 60 training steps, GGUF, registry."""
    return bootstrap(tiny_settings, BootstrapOptions(size="tiny"))


@pytest.fixture(scope="session")
def tiny_registry(tiny_settings: Settings, tiny_version: ModelVersion) -> Registry:
    return Registry(tiny_settings.models_dir)


@pytest.fixture(scope="session")
def tiny_hf_dir(tiny_version: ModelVersion) -> Path:
    path = tiny_version.hf_path()
    assert path is not None
    return path
