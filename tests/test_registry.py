"""The model registry: publish, verify, activate, roll back, import; crash safety and the CLI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from editloop.errors import (
    CorruptVersionError,
    ModelError,
    NoFimTokensError,
    RegistryError,
    UnknownVersionError,
)
from editloop.models.fim import QWEN
from editloop.models.registry import ModelVersion, Registry

REPO_ROOT = Path(__file__).resolve().parents[1]
FIM_TOKENS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>"]
PLAIN_TOKENS = ["<unk>", "<s>", "</s>", "def", "return", " ", "\n", "x"]


def write_gguf(path: Path, tokens: list[str], file_type: int | None = 7) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_token_list(tokens)
    writer.add_tensor(
        "token_embd.weight", np.arange(len(tokens) * 4, dtype=np.float32).reshape(len(tokens), 4)
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny GGUF files: one with Qwen FIM tokens, one without, one that is not a GGUF at all."""
    root = tmp_path_factory.mktemp("ggufs")
    garbage = root / "garbage.gguf"
    garbage.write_bytes(b"this is not a gguf file\x00\x01\x02" * 10)
    return {
        "fim": write_gguf(root / "tiny-fim.gguf", PLAIN_TOKENS + FIM_TOKENS),
        "plain": write_gguf(root / "tiny-plain.gguf", PLAIN_TOKENS),
        "garbage": garbage,
    }


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models")


def publish_fake(registry: Registry, payload: bytes = b"gguf bytes", **kwargs: object) -> ModelVersion:
    """Publish a version whose 'GGUF' is opaque bytes; the registry never parses published files."""
    with registry.stage() as staging:
        (staging / "model-f16.gguf").write_bytes(payload)
        (staging / "hf").mkdir()
        (staging / "hf" / "config.json").write_text("{}")
        (staging / "hf" / "tokenizer.json").write_text("{}")
        return registry.publish(
            staging,
            kind="retrain",
            fim=QWEN,
            gguf={"f16": "model-f16.gguf"},
            hf_dir="hf",
            tokenizer="hf/tokenizer.json",
            **kwargs,  # type: ignore[arg-type]
        )


def version_names(registry: Registry) -> list[str]:
    return [v.name for v in registry.versions()]


def pointer(registry: Registry) -> dict:
    return json.loads(registry.pointer_file.read_text())


# -- publish, activate, get ------------------------------------------------------------------


def test_publish_numbers_versions_and_records_hashes(registry: Registry) -> None:
    v1 = publish_fake(registry, b"one", metrics={"exact_match": 0.5})
    v2 = publish_fake(registry, b"two", parent="v1")
    assert (v1.name, v2.name) == ("v1", "v2")
    assert version_names(registry) == ["v1", "v2"]
    manifest = json.loads((v2.path / "manifest.json").read_text())
    assert manifest["parent"] == "v1" and manifest["kind"] == "retrain"
    assert set(manifest["files"]) == {"model-f16.gguf", "hf/config.json", "hf/tokenizer.json"}
    assert registry.get("v1").manifest.metrics == {"exact_match": 0.5}
    assert registry.current() is None  # publishing never activates
    assert list(registry.staging_dir.iterdir()) == []


def test_activate_sets_current_and_previous_stack(registry: Registry) -> None:
    publish_fake(registry, b"one")
    publish_fake(registry, b"two")
    assert registry.activate("v1").name == "v1"
    assert registry.activate("v2").name == "v2"
    assert registry.current().name == "v2"
    assert pointer(registry) == {"version": "v2", "previous": ["v1"]}
    assert registry.get("current").name == "v2"
    assert registry.load_verified_current().name == "v2"
    registry.activate("v2")  # re-activating the current version does not grow the stack
    assert pointer(registry) == {"version": "v2", "previous": ["v1"]}


def test_model_version_paths(registry: Registry) -> None:
    version = publish_fake(registry)
    assert version.gguf_path() == version.path / "model-f16.gguf"
    assert version.gguf_path("f16").is_file()
    assert version.hf_path() == version.path / "hf"
    assert version.tokenizer_path() == version.path / "hf" / "tokenizer.json"
    with pytest.raises(ModelError, match=r"has no q4_k_m GGUF file \(it has: f16\)"):
        version.gguf_path("q4_k_m")


def test_gguf_path_prefers_q8_0(registry: Registry) -> None:
    with registry.stage() as staging:
        for quant in ("f16", "q8_0", "q4_k_m"):
            (staging / f"model-{quant}.gguf").write_bytes(quant.encode())
        quants = {q: f"model-{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
        version = registry.publish(staging, kind="export", fim=QWEN, gguf=quants)
    assert version.gguf_path().name == "model-q8_0.gguf"
    assert version.hf_path() is None and version.tokenizer_path() is None


def test_stage_is_removed_when_not_published(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.stage() as staging:
        (staging / "partial.gguf").write_bytes(b"half")
        raise RuntimeError("training failed")
    assert not staging.exists()
    assert version_names(registry) == []


@pytest.mark.parametrize(
    ("gguf_map", "extra"),
    [
        ({"f16": "missing.gguf"}, {}),
        ({}, {}),
        ({"f16": "../outside.gguf"}, {}),
        ({"f16": "model-f16.gguf"}, {"tokenizer": "hf/tokenizer.json"}),
        ({"f16": "model-f16.gguf"}, {"kind": "mystery"}),
    ],
)
def test_publish_refuses_inconsistent_versions(registry: Registry, gguf_map: dict, extra: dict) -> None:
    with registry.stage() as staging:
        (staging / "model-f16.gguf").write_bytes(b"x")
        (staging.parent / "outside.gguf").write_bytes(b"x")
        kwargs = {"kind": "retrain", **extra}
        with pytest.raises(RegistryError):
            registry.publish(staging, fim=QWEN, gguf=gguf_map, **kwargs)
    assert version_names(registry) == []


def test_publish_refuses_a_directory_outside_staging(registry: Registry, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "m.gguf").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"Registry\.stage"):
        registry.publish(elsewhere, kind="retrain", fim=QWEN, gguf={"f16": "m.gguf"})


def test_get_unknown_version_lists_known_ones(registry: Registry) -> None:
    publish_fake(registry)
    with pytest.raises(UnknownVersionError, match="known versions: v1"):
        registry.get("v7")
    with pytest.raises(UnknownVersionError):
        registry.get("../models")
    with pytest.raises(RegistryError, match="bootstrap-model"):
        registry.get("current")
    with pytest.raises(RegistryError, match="bootstrap-model"):
        registry.load_verified_current()


def test_version_without_manifest_is_skipped_but_not_reused(registry: Registry) -> None:
    publish_fake(registry)
    (registry.versions_dir / "v2").mkdir()
    assert version_names(registry) == ["v1"]
    with pytest.raises(CorruptVersionError, match=r"manifest\.json"):
        registry.get("v2")
    assert publish_fake(registry).name == "v3"


# -- corruption ------------------------------------------------------------------------------


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [flip_byte, Path.unlink], ids=["flipped-byte", "deleted"])
def test_corrupt_version_is_refused_and_current_unchanged(registry: Registry, damage: object) -> None:
    publish_fake(registry, b"one")
    v2 = publish_fake(registry, b"two" * 100)
    registry.activate("v1")
    damage(v2.path / "model-f16.gguf")  # type: ignore[operator]
    with pytest.raises(CorruptVersionError, match=r"model-f16\.gguf.*re-publish it or delete"):
        registry.verify("v2")
    with pytest.raises(CorruptVersionError):
        registry.activate("v2")
    assert pointer(registry) == {"version": "v1", "previous": []}
    assert registry.verify("v1").name == "v1"


def test_corrupt_current_fails_verified_load(registry: Registry) -> None:
    v1 = publish_fake(registry)
    registry.activate("v1")
    flip_byte(v1.path / "hf" / "tokenizer.json")
    assert registry.current().name == "v1"  # unverified lookup still works, for `show`
    with pytest.raises(CorruptVersionError, match=r"tokenizer\.json"):
        registry.load_verified_current()


@pytest.mark.parametrize("target", ["model-f16.gguf", "hf", "manifest.json"])
def test_verification_refuses_symlinks(registry: Registry, tmp_path: Path, target: str) -> None:
    """Issue 26 #10: a symlink in a version (to identical bytes outside it) verified on main."""
    v1 = publish_fake(registry)
    outside = tmp_path / "outside" / target
    outside.parent.mkdir()
    os.rename(v1.path / target, outside)  # same bytes, so every sha256 still matches
    os.symlink(outside, v1.path / target)
    with pytest.raises(CorruptVersionError, match="symlink"):
        registry.verify("v1")


def test_a_manifest_error_does_not_quote_the_file(registry: Registry, tmp_path: Path) -> None:
    """Issue 26 #6: the error of a manifest that is some other file showed that file's content."""
    v1 = publish_fake(registry)
    (v1.path / "manifest.json").write_text("root:x:0:0:SECRET-LINE:/root:/bin/bash\n")
    with pytest.raises(CorruptVersionError) as raised:
        registry.verify("v1")
    assert "SECRET-LINE" not in str(raised.value)


def test_rollback_to_corrupt_version_is_refused(registry: Registry) -> None:
    v1 = publish_fake(registry, b"one")
    publish_fake(registry, b"two")
    registry.activate("v1")
    registry.activate("v2")
    (v1.path / "model-f16.gguf").unlink()
    with pytest.raises(CorruptVersionError):
        registry.rollback()
    assert pointer(registry) == {"version": "v2", "previous": ["v1"]}


# -- rollback --------------------------------------------------------------------------------


def test_rollback_returns_to_previous_version(registry: Registry) -> None:
    publish_fake(registry, b"one")
    publish_fake(registry, b"two")
    registry.activate("v1")
    registry.activate("v2")
    assert registry.rollback().name == "v1"
    assert pointer(registry) == {"version": "v1", "previous": []}
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    assert registry.current().name == "v1"


def test_rollback_without_current_version(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="nothing to roll back to: no version is current"):
        registry.rollback()


def test_reactivating_an_older_version_keeps_stack_unique(registry: Registry) -> None:
    for payload in (b"1", b"2", b"3"):
        publish_fake(registry, payload)
    for name in ("v1", "v2", "v3", "v1"):
        registry.activate(name)
    assert pointer(registry) == {"version": "v1", "previous": ["v3", "v2"]}


# -- crash safety: really kill a child process at each step ---------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path

from editloop.models import registry as reg
from editloop.models.fim import QWEN

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

root, action, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if point == "replace":
    os.replace = die
elif point == "rename":
    os.rename = die
elif point == "hash":
    reg._sha256 = die
elif point == "manifest":
    reg._write_durably = die
registry = reg.Registry(root)
if action == "publish":
    with registry.stage() as staging:
        (staging / "model-f16.gguf").write_bytes(b"new model")
        registry.publish(staging, kind="retrain", fim=QWEN, gguf={"f16": "model-f16.gguf"})
elif action == "activate":
    registry.activate(sys.argv[4])
elif action == "rollback":
    registry.rollback()
sys.exit(3)  # only reached when the kill point was never hit
"""


def run_killed_child(root: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_concurrent_publishes_get_distinct_versions(registry: Registry) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", CHILD, str(registry.root), "publish", "no-kill"]
    children = [subprocess.Popen(command, env=env) for _ in range(4)]
    assert [child.wait(timeout=60) for child in children] == [3] * 4
    assert version_names(registry) == ["v1", "v2", "v3", "v4"]
    assert all(registry.verify(name) for name in version_names(registry))


@pytest.fixture
def two_active(registry: Registry) -> Registry:
    """v1 current, v2 published but not active."""
    publish_fake(registry, b"one")
    publish_fake(registry, b"two")
    registry.activate("v1")
    return registry


def assert_v1_still_serves(registry: Registry) -> None:
    assert registry.current().name == "v1"
    assert registry.load_verified_current().name == "v1"
    assert registry.verify("v2").name == "v2"


def test_kill_during_activate_leaves_previous_current(two_active: Registry) -> None:
    run_killed_child(two_active.root, "activate", "replace", "v2")
    assert_v1_still_serves(two_active)
    assert two_active.activate("v2").name == "v2"  # the dead process's lock was released


def test_kill_during_rollback_leaves_current_unchanged(two_active: Registry) -> None:
    two_active.activate("v2")
    run_killed_child(two_active.root, "rollback", "replace")
    assert pointer(two_active) == {"version": "v2", "previous": ["v1"]}
    assert two_active.rollback().name == "v1"


@pytest.mark.parametrize("point", ["hash", "manifest", "rename"])
def test_kill_during_publish_leaves_no_half_version(two_active: Registry, point: str) -> None:
    run_killed_child(two_active.root, "publish", point)
    assert version_names(two_active) == ["v1", "v2"]
    assert_v1_still_serves(two_active)
    assert publish_fake(two_active, b"three").name == "v3"


# -- import ----------------------------------------------------------------------------------


def test_import_gguf_with_fim_tokens(registry: Registry, ggufs: dict[str, Path]) -> None:
    version = registry.import_gguf(ggufs["fim"])
    manifest = version.manifest
    assert (version.name, manifest.kind, manifest.arch) == ("v1", "import", "llama")
    assert manifest.fim.family == "qwen2.5-coder"
    assert manifest.fim.eos == ("<|endoftext|>",) and manifest.fim.file_sep is None
    assert manifest.gguf == {"q8_0": "model-q8_0.gguf"}
    assert version.gguf_path().read_bytes() == ggufs["fim"].read_bytes()
    assert registry.current() is None
    assert registry.verify("v1").name == "v1"


def test_import_with_hf_dir(registry: Registry, ggufs: dict[str, Path], tmp_path: Path) -> None:
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    (hf / "tokenizer.json").write_text("{}")
    version = registry.import_gguf(ggufs["fim"], hf_dir=hf)
    assert version.hf_path() == version.path / "hf"
    assert version.tokenizer_path().read_text() == "{}"
    assert "hf/config.json" in version.manifest.files


def test_import_refuses_hf_dir_without_config(
    registry: Registry, ggufs: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match=r"config\.json"):
        registry.import_gguf(ggufs["fim"], hf_dir=tmp_path)
    assert version_names(registry) == []


@pytest.mark.parametrize(("file_type", "quant"), [(1, "f16"), (15, "q4_k_m"), (0, "f32"), (999, "ftype999")])
def test_import_names_quant_from_file_type(
    registry: Registry, tmp_path: Path, file_type: int, quant: str
) -> None:
    path = write_gguf(tmp_path / "m.gguf", PLAIN_TOKENS + FIM_TOKENS, file_type=file_type)
    assert list(registry.import_gguf(path).manifest.gguf) == [quant]


def test_import_without_file_type_uses_tensor_type(registry: Registry, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", PLAIN_TOKENS + FIM_TOKENS, file_type=None)
    assert list(registry.import_gguf(path).manifest.gguf) == ["f32"]


def test_import_without_fim_tokens_publishes_nothing(registry: Registry, ggufs: dict[str, Path]) -> None:
    with pytest.raises(NoFimTokensError, match=r"tiny-plain\.gguf"):
        registry.import_gguf(ggufs["plain"])
    assert version_names(registry) == []
    assert not registry.versions_dir.exists() or list(registry.versions_dir.iterdir()) == []


def test_import_garbage_is_a_model_error(registry: Registry, ggufs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        registry.import_gguf(ggufs["garbage"])
    with pytest.raises(ModelError):
        registry.import_gguf(tmp_path / "absent.gguf")
    assert version_names(registry) == []


# -- CLI, end to end through `python -m editloop` -----------------------------------------------


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    env |= {"EDITLOOP_HOME": str(home), "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "editloop", "models", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr


def test_cli_import_activate_rollback_and_show_json(tmp_path: Path, ggufs: dict[str, Path]) -> None:
    registry = Registry(tmp_path / "models")
    assert cli(tmp_path, "import", str(ggufs["fim"])).returncode == 0
    shown = cli(tmp_path, "show", "current", "--json")
    assert shown.returncode == 0, shown.stderr
    described = json.loads(shown.stdout)
    assert described["version"] == "v1" and described["current"] is True
    assert Path(described["gguf"]["q8_0"]).is_absolute() and Path(described["gguf"]["q8_0"]).is_file()
    assert described["hf_dir"] is None and described["tokenizer"] is None
    assert described["manifest"]["fim"]["family"] == "qwen2.5-coder"
    registry.import_gguf(ggufs["fim"])
    assert cli(tmp_path, "import", str(ggufs["fim"]), "--activate").returncode == 0
    assert registry.current().name == "v3"
    assert cli(tmp_path, "rollback").returncode == 0
    assert registry.current().name == "v1"


def test_cli_human_output(tmp_path: Path, ggufs: dict[str, Path]) -> None:
    registry = Registry(tmp_path / "models")
    registry.activate(registry.import_gguf(ggufs["fim"]).name)
    registry.import_gguf(ggufs["fim"])
    listed = cli(tmp_path, "list")
    assert listed.returncode == 0 and "v2" in listed.stdout and "qwen2.5-coder" in listed.stdout
    shown = cli(tmp_path, "show", "v1")
    assert shown.returncode == 0 and "model-q8_0.gguf" in shown.stdout
    assert cli(tmp_path, "import", str(ggufs["fim"]), "--no-activate").returncode == 0
    assert [v["version"] for v in json.loads(cli(tmp_path, "list", "--json").stdout)] == ["v1", "v2", "v3"]
    assert registry.current().name == "v1"


@pytest.mark.parametrize(
    "args", [("show", "v9"), ("rollback",)], ids=["unknown-version", "nothing-to-roll-back"]
)
def test_cli_errors_are_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    assert_one_line_error(cli(tmp_path, *args))


def test_cli_refuses_bad_imports(tmp_path: Path, ggufs: dict[str, Path]) -> None:
    assert_one_line_error(cli(tmp_path, "import", str(ggufs["garbage"])))
    assert_one_line_error(cli(tmp_path, "import", str(ggufs["plain"])))
    assert Registry(tmp_path / "models").versions() == []
