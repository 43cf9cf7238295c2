"""docker/: compose.yaml is a valid Compose file with what the loop needs, the images install what
scripts/install.sh installs (same torch), and their healthchecks work against a real server and Redis.

No Docker engine runs here, so the images are not built: these checks are what can fail offline.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

from editloop.feedback import control
from editloop.feedback.store import redis_client
from editloop.server.background import free_port
from tests.server_fixtures import copy_home, running_server

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
ENV = {"EDITLOOP_API_TOKENS": '["user-token"]', "EDITLOOP_ADMIN_TOKEN": "admin-token"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def dockerfile(name: str) -> str:
    return (DOCKER / name).read_text()


def torch_pin_of_install_sh() -> str:
    pins = re.findall(r"torch==([0-9][0-9.]*)", (ROOT / "scripts/install.sh").read_text())
    assert len(set(pins)) == 1, pins
    return pins[0]


def image_healthcheck(text: str) -> str:
    """The Python code of a Dockerfile's ``HEALTHCHECK ... CMD python -c "..."``."""
    match = re.search(r'^HEALTHCHECK [^\n]*\\\n\s+CMD python -c "(.*)"$', text, re.MULTILINE)
    assert match, "no HEALTHCHECK running python -c"
    return match.group(1)


def compose_healthcheck(compose: dict, service: str) -> str:
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return test[3]


def test_compose_follows_the_compose_specification() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    parsed = PyCompose.from_yaml(text)  # the compose_spec crate: unknown keys and bad values fail
    parsed.validate()
    assert parsed.service_names() == ["redis", "server", "trainer"]
    with pytest.raises(ValueError, match="restrat"):  # and it does reject a typo
        PyCompose.from_yaml(text.replace("restart: unless-stopped", "restrat: unless-stopped", 1))


def test_compose_wires_redis_the_registry_volume_and_the_gpu(compose: dict) -> None:
    services, volumes = compose["services"], compose["volumes"]
    assert set(volumes) == {"redis-data", "editloop-home"}
    for name, service in services.items():
        assert "test" in service["healthcheck"], name
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in volumes, (name, mount)

    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--appendfsync") + 1] == "always"  # editloop refuses Redis otherwise
    assert "redis-data:/data" in services["redis"]["volumes"]

    for name in ("server", "trainer"):
        env = services[name]["environment"]
        assert f"editloop-home:{env['EDITLOOP_HOME']}" in services[name]["volumes"]
        assert env["EDITLOOP_REDIS_URL"].startswith("redis://redis:")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["server"]["environment"]["EDITLOOP_TRAINER"] == "false"  # the GPU service trains
    assert services["trainer"]["depends_on"]["server"]["condition"] == "service_healthy"
    (device,) = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services["server"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["trainer"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"


def test_images_install_the_torch_that_install_sh_pins() -> None:
    pin = torch_pin_of_install_sh()
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = dockerfile(name)
        assert f"ARG TORCH_VERSION={pin}\n" in text, f"{name} drifted from scripts/install.sh's torch=={pin}"
        assert 'torch==${TORCH_VERSION}"' in text and "pip install ." in text, name
        assert "CMAKE_BUILD_PARALLEL_LEVEL" in text, name  # llama.cpp compiles, as in install.sh
    cpu = dockerfile("Dockerfile")
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu  # never a CUDA build on CPU
    assert "FROM python:${PYTHON_VERSION}-slim" in cpu and "ARG PYTHON_VERSION=3.11\n" in cpu
    for package in ("redis-server", "bubblewrap"):  # what install.sh installs with apt
        assert package in cpu and package in (ROOT / "scripts/install.sh").read_text()
    gpu = dockerfile("Dockerfile.gpu")
    assert "FROM ${CUDA_IMAGE}" in gpu and "nvidia/cuda:" in gpu and "vllm==${VLLM_VERSION}" in gpu
    assert "PIP_CONSTRAINT" in gpu  # vllm may not swap the pinned torch
    assert 'CMD ["editloop", "trainer"]' in gpu


def test_images_copy_only_what_exists_and_ignore_the_heavy_parts() -> None:
    for name in ("Dockerfile", "Dockerfile.gpu"):
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile(name), re.MULTILINE):
            for path in source.split():
                assert (ROOT / path).exists(), (name, path)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/node_modules", "**/*.gguf"} <= set(ignored)


def test_image_and_compose_healthchecks_are_the_same(compose: dict) -> None:
    assert image_healthcheck(dockerfile("Dockerfile")) == compose_healthcheck(compose, "server")
    assert image_healthcheck(dockerfile("Dockerfile.gpu")) == compose_healthcheck(compose, "trainer")


def run_check(code: str, **env: str) -> int:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, timeout=60
    ).returncode


def test_server_healthcheck_passes_on_a_serving_server_and_fails_without_one(
    compose: dict, tiny_settings, tiny_version, tmp_path: Path
) -> None:
    code = compose_healthcheck(compose, "server")
    home = copy_home(tiny_settings, tmp_path)
    with running_server(home, feedback_enabled=False) as (url, settings, _):
        assert run_check(code, EDITLOOP_PORT=str(settings.port)) == 0, url
    assert run_check(code, EDITLOOP_PORT=str(free_port())) != 0  # nothing listening


def test_trainer_healthcheck_follows_the_heartbeat(compose: dict, redis_url: str) -> None:
    code = compose_healthcheck(compose, "trainer")
    env = {"EDITLOOP_REDIS_URL": redis_url}
    assert run_check(code, **env) != 0  # no trainer has beaten
    control.beat(redis_client(redis_url), ttl_s=30)
    assert run_check(code, **env) == 0


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_reads_it(tmp_path: Path) -> None:
    """docker-compose 1.29 (Debian's) as a second parser; it predates the top-level ``name``."""
    text = (DOCKER / "compose.yaml").read_text()
    assert text.count("\nname: editloop\n") == 1
    (tmp_path / "compose.yaml").write_text(text.replace("\nname: editloop\n", "\n"))
    shutil.copytree(DOCKER, tmp_path / "docker", ignore=shutil.ignore_patterns("compose.yaml"))
    done = subprocess.run(
        ["docker-compose", "-f", str(tmp_path / "compose.yaml"), "config", "--quiet"],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    missing = subprocess.run(
        ["docker-compose", "-f", str(tmp_path / "compose.yaml"), "config", "--quiet"],
        env={k: v for k, v in os.environ.items() if k not in ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "EDITLOOP_API_TOKENS" in missing.stderr  # tokens are required
