"""What the simulated developer types: whole files, or each commit's added lines, in order.

A file's split (train or held-out) is a hash of its path, so the two never mix whatever
the seed, the glob or the order of the walk.
"""

import fnmatch
import hashlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from editloop.completion.syntax import language_for_path
from editloop.errors import BadRequestError

Split = Literal["train", "heldout", "all"]
MAX_FILE_BYTES = 200_000


@dataclass(frozen=True)
class Hunk:
    """Replace ``removed`` characters at ``offset`` of the document, then type ``added`` there."""

    offset: int
    removed: int
    added: str


@dataclass(frozen=True)
class TypingTask:
    path: str  # relative to the replayed root: what events and splits see
    language: str
    before: str  # the document when the developer opens it
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def typed_chars(self) -> int:
        return sum(len(h.added) for h in self.hunks)


def split_of(path: str, ratio: float) -> Literal["train", "heldout"]:
    """``train`` for the first ``ratio`` of path-hash space, ``heldout`` for the rest."""
    digest = hashlib.sha256(f"replay:{path}".encode()).digest()
    return "train" if int.from_bytes(digest[:8], "big") / 2**64 < ratio else "heldout"


def _wanted(path: str, glob: str | None, split: Split, ratio: float) -> bool:
    if language_for_path(path) is None:
        return False
    if glob and not fnmatch.fnmatch(path, glob):
        return False
    return split == "all" or split_of(path, ratio) == split


def file_tasks(root: Path, glob: str | None, split: Split, ratio: float) -> list[TypingTask]:
    """Every source file under ``root`` (tracked files in a git repository), typed from scratch."""
    if root.is_file():
        paths = [root.name]
        root = root.parent
    elif (root / ".git").exists():
        paths = _git(root, "ls-files").splitlines()
    else:
        paths = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    tasks = []
    for rel in sorted(paths):
        full = root / rel
        if not _wanted(rel, glob, split, ratio) or not full.is_file():
            continue
        if full.stat().st_size > MAX_FILE_BYTES:
            continue
        text = full.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n")
        if text.strip():
            tasks.append(TypingTask(rel, language_for_path(rel) or "text", "", [Hunk(0, 0, text)]))
    return tasks


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def commit_tasks(root: Path, commits: str, glob: str | None, split: Split, ratio: float) -> list[TypingTask]:
    """One task per (commit, file) in ``commits`` (a git range, oldest first): its hunks applied in order."""
    if not (root / ".git").exists():
        raise BadRequestError(f"--commits needs a git repository; {root} is not one")
    shas = _git(root, "rev-list", "--reverse", "--no-merges", commits).split()
    tasks = []
    for sha in shas:
        changed = _git(root, "diff-tree", "--no-commit-id", "-r", "--name-only", "--diff-filter=AM", sha)
        for rel in changed.splitlines():
            if _wanted(rel, glob, split, ratio):
                task = _commit_task(root, sha, rel)
                if task is not None:
                    tasks.append(task)
    return tasks


def _commit_task(root: Path, sha: str, rel: str) -> TypingTask | None:
    before = _git(root, "show", f"{sha}^:{rel}", check=False)
    diff = _git(root, "diff", "-U0", f"{sha}^", sha, "--", rel, check=False)
    hunks, shift = [], 0
    lines_before = before.split("\n")
    current: list = []
    for line in diff.splitlines():
        match = _HUNK.match(line)
        if match:
            current = [int(match.group(1)), int(match.group(2) or 1), []]
            hunks.append(current)
        elif current and line.startswith("+") and not line.startswith("+++"):
            current[2].append(line[1:])
    result = []
    for start, removed_lines, added in hunks:
        first = start - 1 if removed_lines else start  # git names the line before a pure insertion
        offset = sum(len(x) + 1 for x in lines_before[:first]) + shift
        removed = sum(len(x) + 1 for x in lines_before[first : first + removed_lines])
        text = "".join(a + "\n" for a in added)
        result.append(Hunk(max(0, offset), removed, text))
        shift += len(text) - removed
    result = [h for h in result if h.added.strip()]
    if not result or len(before) > MAX_FILE_BYTES:
        return None
    return TypingTask(f"{rel}@{sha[:10]}", language_for_path(rel) or "text", before, result)


def _git(root: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, errors="replace")
    if check and done.returncode != 0:
        raise BadRequestError(f"git {' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done.stdout if done.returncode == 0 else ""
