"""The starter model shipped in the repository: its files match their manifest, it loads in
llama.cpp and completes, and `editloop run` on an empty home imports it (sha256-checked) and
serves it without training.

The tests run against every folder committed under ``editloop/starter/shipped/``; where none is,
against a tiny build shipped by ``editloop models ship`` into a scratch folder, so the mechanism
is tested either way.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from editloop.cli import app
from editloop.completion.types import CompletionRequest
from editloop.errors import CorruptVersionError, ModelError
from editloop.eval.engine import open_engine, top_text
from editloop.models.registry import Registry
from editloop.models.shipped import MANIFEST, read_shipped
from editloop.server.background import free_port
from editloop.settings import Settings, load_settings
from editloop.starter import SHIPPED_DIR
from editloop.starter.bootstrap import ensure_starter_model

COMMITTED = sorted(p.name for p in SHIPPED_DIR.glob("*") if (p / MANIFEST).is_file())
STAND_IN = "tiny-stand-in"


def ship(home: Path, version: str, dest: Path, *flags: str):
    env = {"EDITLOOP_HOME": str(home)}
    return CliRunner().invoke(app, ["models", "ship", version, "--to", str(dest), *flags], env=env)


@pytest.fixture(scope="module", params=COMMITTED or [STAND_IN])
def shipped(request, tiny_settings: Settings, tiny_version, tmp_path_factory) -> Path:
    if request.param != STAND_IN:
        return SHIPPED_DIR / request.param
    dest = tmp_path_factory.mktemp("shipped") / "tiny"
    result = ship(tiny_settings.home, tiny_version.name, dest)
    assert result.exit_code == 0, result.output
    return dest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_files_match_their_manifest(shipped: Path) -> None:
    manifest = read_shipped(shipped)
    on_disk = {p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()}
    assert on_disk == {*manifest.files, MANIFEST}
    for rel, expected in manifest.files.items():
        assert sha256(shipped / rel) == expected, rel
    # What an adopter needs to serve it, retrain it and know where it came from.
    assert set(manifest.gguf) == {"q8_0"}  # f16 stays out: Q8_0 serves, HF weights retrain
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        Path(rel).name for rel in manifest.files if rel.startswith(f"{manifest.hf_dir}/")
    }
    assert manifest.recipe and manifest.recipe.startswith("editloop bootstrap-model --size ")
    assert manifest.corpus_digest and len(manifest.corpus_digest) == 64
    assert "heldout_fim" in manifest.metrics and manifest.checks


def test_run_imports_the_shipped_starter_without_training(shipped: Path, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", starter_dir=shipped)
    version = ensure_starter_model(settings)
    registry = Registry(settings.models_dir)
    assert registry.current() is not None and registry.current().name == version.name
    assert registry.verify(version.name).manifest.training_data["shipped"]["from"] == str(shipped.resolve())
    assert not settings.runs_dir.exists()  # nothing was trained
    # The served GGUF is byte for byte the shipped one.
    manifest = read_shipped(shipped)
    assert sha256(version.gguf_path()) == manifest.files[manifest.gguf["q8_0"]]
    # A second start serves what is there instead of importing again.
    assert ensure_starter_model(settings).name == version.name and len(registry.versions()) == 1
    # It loads in llama.cpp as the server loads it, and completes a FIM prompt.
    with open_engine(load_settings(home=settings.home, model_threads=1)) as engine:
        request = CompletionRequest(prefix="def add(a, b):\n    return ", suffix="\n", max_tokens=8)
        result = engine.complete(request)
    assert result.model_version == version.name
    assert result.candidates and result.candidates[0].logprobs, result  # llama.cpp decoded tokens
    if shipped.parent == SHIPPED_DIR:  # a committed starter completes; the tiny stand-in may not
        assert top_text(result).strip(), result


@pytest.mark.parametrize("damage", ["flip a byte", "delete"])
def test_a_damaged_shipped_file_is_refused(shipped: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "shipped"
    shutil.copytree(shipped, copy)
    gguf = copy / read_shipped(copy).gguf["q8_0"]
    if damage == "delete":
        gguf.unlink()
    else:
        data = bytearray(gguf.read_bytes())
        data[len(data) // 2] ^= 0xFF
        gguf.write_bytes(bytes(data))
    settings = load_settings(home=tmp_path / "home", starter_dir=copy)
    with pytest.raises(CorruptVersionError) as refused:
        ensure_starter_model(settings)
    assert gguf.name in refused.value.message and "editloop bootstrap-model" in refused.value.message
    registry = Registry(settings.models_dir)
    assert registry.current() is None and registry.versions() == []


def test_a_folder_without_manifest_is_refused(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", starter_dir=tmp_path)
    with pytest.raises(ModelError, match="editloop models ship"):
        ensure_starter_model(settings)


def test_ship_will_not_overwrite_without_force(tiny_settings: Settings, tiny_version, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    assert ship(tiny_settings.home, tiny_version.name, dest).exit_code == 0
    again = ship(tiny_settings.home, tiny_version.name, dest)
    assert again.exit_code == 1 and "--force" in str(again.exception or again.output)
    assert ship(tiny_settings.home, tiny_version.name, dest, "--force").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]  # no work folder left


def test_editloop_run_serves_the_shipped_starter_and_says_what_next(
    shipped: Path, tmp_path: Path, redis_url: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "EDITLOOP_HOME": str(tmp_path / "empty-home"),
        "EDITLOOP_STARTER_DIR": str(shipped),
        "EDITLOOP_PORT": str(port),
        "EDITLOOP_REDIS_URL": redis_url,
        "EDITLOOP_TRAINER": "false",
        "EDITLOOP_MODEL_THREADS": "1",
    }
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "editloop", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        text = wait_for(log, "Ctrl-C stops the server", proc, timeout_s=180)
        url = f"http://127.0.0.1:{port}"
        assert f"API        POST {url}/complete" in text
        assert f"open the dashboard: {url}/dashboard" in text
        assert f"editloop lsp --server {url}" in text
        assert f"EDITLOOP_HOME={env['EDITLOOP_HOME']} " in text and "editloop demo" in text
        reply = httpx.post(f"{url}/complete", json={"prefix": "def f(x):\n    return ", "n": 2}, timeout=60)
        assert reply.status_code == 200 and reply.json()["model_version"] == "v1", reply.text
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def wait_for(log: Path, marker: str, proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if marker in text:
            return text
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {marker!r} within {timeout_s} s:\n{log.read_text()[-3000:]}")
