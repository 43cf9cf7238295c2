"""Which files of a root the context may read: inside it (symlinks resolved), not ignored, not huge.

>>> inside(Path("/srv/repo"), "../etc/passwd") is None
True
"""

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from editloop.completion.syntax import EXTENSIONS

SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox", ".mypy_cache"}
)


def inside(root: Path, path: str | Path) -> Path | None:
    """``path`` (relative to ``root``, or absolute) resolved, if it lies inside the resolved ``root``."""
    candidate = Path(path)
    candidate = candidate if candidate.is_absolute() else root / candidate
    try:
        resolved = candidate.resolve()
        base = root.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL in the name
        return None
    return resolved if resolved.is_relative_to(base) else None


def within_any(roots: list[Path], path: str | Path) -> Path | None:
    """The resolved root among ``roots`` that holds ``path`` (itself resolved), else None."""
    for root in roots:
        if inside(root, path) is not None:
            return root.resolve()
    return None


@dataclass(frozen=True)
class _Rule:
    base: str  # the directory of its .gitignore, relative to the root ("" at the top)
    pattern: re.Pattern
    negated: bool
    directory_only: bool
    anchored: bool


def _glob_regex(glob: str) -> re.Pattern:
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and "]" in glob[i + 1 :]:
            end = glob.index("]", i + 1)
            out.append("[" + glob[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def parse_gitignore(text: str, base: str) -> list[_Rule]:
    """The rules of one ``.gitignore`` in directory ``base`` (relative to the root)."""
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line[1:] if negated else line
        directory_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        line = line.lstrip("/")
        if line:
            rules.append(_Rule(base, _glob_regex(line), negated, directory_only, anchored))
    return rules


def ignored(rules: list[_Rule], rel: str, is_dir: bool) -> bool:
    """Whether ``rel`` (relative to the root, '/'-separated) is ignored; the last matching rule wins."""
    verdict = False
    for rule in rules:
        if rule.directory_only and not is_dir:
            continue
        if rule.base and not rel.startswith(rule.base + "/"):
            continue
        local = rel[len(rule.base) + 1 :] if rule.base else rel
        subject = local if rule.anchored else local.rsplit("/", 1)[-1]
        if rule.pattern.match(subject):
            verdict = not rule.negated
    return verdict


def source_files(root: Path, max_files: int, max_file_bytes: int) -> Iterator[Path]:
    """Source files under ``root`` (resolved), at most ``max_files``, none over ``max_file_bytes``.

    Symlinks are followed only where they stay inside the root; ``.gitignore`` files apply to
    their directory and below.
    """
    root = root.resolve()
    count = 0
    rules: list[_Rule] = []
    for directory, dirs, names in os.walk(root):
        here = Path(directory)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        if ".gitignore" in names:
            with contextlib.suppress(OSError):
                rules += parse_gitignore((here / ".gitignore").read_text(errors="replace"), rel_dir)
        dirs[:] = sorted(
            d for d in dirs if d not in SKIPPED_DIRS and not ignored(rules, _join(rel_dir, d), is_dir=True)
        )
        for name in sorted(names):
            if Path(name).suffix.lower() not in EXTENSIONS or ignored(rules, _join(rel_dir, name), False):
                continue
            path = inside(root, here / name)
            if path is None or not _small_file(path, max_file_bytes):
                continue
            yield path
            count += 1
            if count >= max_files:
                return


def _join(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name


def _small_file(path: Path, max_bytes: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size <= max_bytes
    except OSError:
        return False


def read_text(path: Path, max_bytes: int) -> str | None:
    """The file's text, or None if it is unreadable, binary or over ``max_bytes``."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError:
        return None
    if len(data) > max_bytes or b"\0" in data[:4096]:
        return None
    return data.decode("utf-8", "replace")
