"""Cold start: FIM samples from a codebase's syntax trees, SFT on them, publishing the result."""

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from editloop.corpus import SourceFile, read_files
from editloop.models.registry import ModelVersion, Registry
from editloop.settings import Settings, load_settings
from editloop.training.coldstart import (
    KINDS,
    ColdStartOptions,
    cold_start,
    extract_samples,
    file_samples,
    fim_spans,
)
from editloop.training.sft import SftConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def kinds_found(files: list[SourceFile]) -> Counter:
    return Counter({kind: len(spans) for f in files for kind, spans in fim_spans(f).items()})


def test_stdlib_package_gives_every_kind_of_span() -> None:
    files = read_files([str(STDLIB / "json")], {"python"})
    assert set(kinds_found(files)) == set(KINDS)
    for f in files:
        for sample in file_samples(f, per_file=50, seed=0):
            assert sample.reference.strip() == sample.reference and sample.reference
            # prefix + kept text + suffix is the file (trimmed far from the cursor).
            assert sample.prefix + sample.reference + sample.suffix in f.text
            assert sample.language == "python" and sample.filepath == f.path.split("/", 1)[1]


def test_body_skips_the_docstring() -> None:
    text = 'def area(w, h):\n    """The area."""\n    product = w * h\n    return product\n'
    f = SourceFile("pkg/geometry.py", "python", text)
    data = text.encode()
    bodies = [data[a:b].decode() for a, b in fim_spans(f)["body"]]
    assert bodies == ["product = w * h\n    return product"]


def test_extraction_is_deterministic_and_capped() -> None:
    files = read_files([str(STDLIB / "json")], {"python"})
    first = extract_samples(files, max_samples=20, per_file=8, seed=3)
    assert first == extract_samples(files, max_samples=20, per_file=8, seed=3)
    assert len(first) == 20 and first != extract_samples(files, max_samples=20, per_file=8, seed=4)
    per_file = Counter(s.filepath for s in extract_samples(files, 10_000, per_file=3, seed=0))
    assert max(per_file.values()) == 3


def test_rust_spans() -> None:
    text = (
        "use std::collections::HashMap;\n\n"
        "pub fn count(words: &[&str]) -> HashMap<String, usize> {\n"
        "    let mut counts = HashMap::new();\n"
        "    for w in words {\n"
        "        *counts.entry(w.to_string()).or_insert(0) += 1;\n"
        "    }\n"
        "    counts\n"
        "}\n"
    )
    found = fim_spans(SourceFile("crate/src/lib.rs", "rust", text))
    data = text.encode()
    assert "let mut counts = HashMap::new();" in [data[a:b].decode() for a, b in found["statement"]]
    assert "HashMap::new()" in [data[a:b].decode() for a, b in found["expression"]]
    assert "0" in [data[a:b].decode() for a, b in found["arguments"]]
    assert found["body"] and data[slice(*found["body"][0])].decode().startswith("let mut counts")


@pytest.mark.skipif(not glob.glob("/usr/lib/jvm/*/lib/src.zip"), reason="no JDK sources")
def test_java_spans_from_the_jdk(tmp_path: Path) -> None:
    for path in sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip")):
        if os.path.isfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("java/util/StringJoiner.java")]
                if names:
                    (tmp_path / "StringJoiner.java").write_bytes(archive.read(names[0]))
                    break
    else:
        pytest.skip("no readable JDK src.zip with java.util.StringJoiner")
    files = read_files([str(tmp_path)], {"java"})
    assert set(kinds_found(files)) == set(KINDS)


def test_git_repository_uses_tracked_files_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(STDLIB / "textwrap.py", repo / "textwrap.py")
    shutil.copy(STDLIB / "shlex.py", repo / "scratch.py")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "textwrap.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    samples = extract_samples(read_files([str(repo)], {"python"}), 100, 100, 0)
    assert samples and {s.filepath for s in samples} == {"textwrap.py"}


def test_cold_start_trains_and_measures(tiny_settings: Settings, tiny_version: ModelVersion) -> None:
    options = ColdStartOptions(
        repo=STDLIB / "json",
        languages=("python",),
        max_samples=64,
        heldout_fraction=0.3,
        sft=SftConfig(max_steps=3, batch_size=4, learning_rate=1e-3, max_new_tokens=32, tensorboard=False),
    )
    report = cold_start(tiny_settings, options)
    assert report.base_version == tiny_version.name and report.published is None
    assert report.train_samples > 0 and report.heldout_samples > 0 and report.sft.steps == 3
    assert 0 < report.context_samples < report.train_samples  # about half carry repository context
    assert report.heldout_loss_before is not None and report.heldout_loss_after is not None
    assert report.heldout_loss_after != report.heldout_loss_before  # the adapter changed the model
    assert sum(report.samples_by_lines.values()) == report.train_samples
    assert json.loads(json.dumps(report.to_dict(), default=str))["sft"]["steps"] == 3


def editloop(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDITLOOP_HOME": str(home), "EDITLOOP_TORCH_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "editloop", *args], capture_output=True, text=True, env=env, timeout=600
    )


def copy_registry(version: ModelVersion, home: Path) -> Path:
    """A home whose registry holds (a copy of) the tiny version, active."""
    models = load_settings(home=home).models_dir
    shutil.copytree(version.path, models / "versions" / version.name)
    (models / "current.json").write_text(json.dumps({"version": version.name, "previous": []}))
    return home


def test_train_cli_publishes_a_version(tiny_version: ModelVersion, tmp_path: Path) -> None:
    home = copy_registry(tiny_version, tmp_path / "home")
    result = editloop(
        "train", "--repo", str(STDLIB / "json"), "--steps", "2", "--languages", "python",
        "--publish", "--activate", home=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    registry = Registry(load_settings(home=home).models_dir)
    published = registry.verify(report["published"])
    assert published.manifest.parent == tiny_version.name and published.manifest.kind == "retrain"
    assert published.manifest.training_data["source"] == "coldstart"
    assert registry.current().name == published.name
    assert (published.path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train"], "--repo is required"),
        (["train", "--repo", "/nonexistent/code"], "does not exist"),
        (["train", "--repo", ".", "--steps", "0"], "--steps"),
    ],
)
def test_train_cli_bad_input(
    tmp_path: Path, tiny_version: ModelVersion, args: list[str], needle: str
) -> None:
    result = editloop(*args, home=copy_registry(tiny_version, tmp_path / "home"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]


def test_train_cli_without_a_model(tmp_path: Path) -> None:
    result = editloop("train", "--repo", str(STDLIB / "json"), home=tmp_path)
    assert (
        result.returncode == 1 and result.stderr.startswith("error: ") and "bootstrap-model" in result.stderr
    )
