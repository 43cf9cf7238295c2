"""Corpus loading: the sources a user can point at, and a split that never mixes."""

import subprocess
import zipfile
from pathlib import Path

import pytest

from editloop.corpus import heldout_bucket, load_corpus
from editloop.errors import CorpusError

CODE = "def f(x):\n    return x + 1\n\n\n" * 20


def _write_tree(root: Path, n: int = 40) -> None:
    for i in range(n):
        (root / f"pkg{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 4}" / f"m{i}.py").write_text(CODE.replace("f(", f"f{i}("))


def test_directory_split_is_by_path_hash_and_disjoint(tmp_path: Path) -> None:
    _write_tree(tmp_path / "proj", 200)
    corpus = load_corpus([str(tmp_path / "proj")], {"python"}, heldout_fraction=0.2)
    train, held = {f.path for f in corpus.train}, {f.path for f in corpus.heldout}
    assert not train & held and len(train) + len(held) == 200
    assert all(heldout_bucket(p) < 0.2 for p in held)


def test_git_repository_reads_tracked_files_only(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _write_tree(repo, 60)
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pkg0", "pkg1"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    corpus = load_corpus([str(repo)], {"python"}, heldout_fraction=0.2)
    paths = [f.path for f in corpus.train + corpus.heldout]
    assert len(paths) == 30 and all(p.startswith(("repo/pkg0/", "repo/pkg1/")) for p in paths)


def test_zip_and_language_filter_and_exclude(tmp_path: Path) -> None:
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(60):
            z.writestr(f"java/base/A{i}.java", "class A {\n  int f() { return 1; }\n}\n" * 10)
            z.writestr(f"py/m{i}.py", CODE)
    corpus = load_corpus([str(archive)], {"java"}, heldout_fraction=0.2, exclude=("src/java/base/A1*",))
    assert all(f.language == "java" for f in corpus.train + corpus.heldout)
    assert {f.path for f in corpus.excluded} == {f"src/java/base/A{i}.java" for i in [1, *range(10, 20)]}


def test_missing_path_and_empty_corpus_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus([str(tmp_path / "nope")], {"python"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no python source files found"):
        load_corpus([str(tmp_path / "empty")], {"python"})
    with pytest.raises(CorpusError, match="unknown language"):
        load_corpus(["stdlib"], {"cobol"})
