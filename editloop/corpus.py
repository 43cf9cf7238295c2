"""Real code found on the machine, read into memory for tokenizer and model training.

Sources are named (``stdlib``, ``jdk``, ``rust-crates``) or paths: a directory, a git
repository (its tracked files only), a zip of sources, or one file. Files are split into
train and held-out by a hash of their path, so the split never depends on order or seed.
"""

import fnmatch
import glob
import hashlib
import subprocess
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from editloop.errors import CorpusError

# One stdlib package stays out of the starter's training so a demo can replay code the model never saw.
DEFAULT_EXCLUDE = ("stdlib/email/*",)

LANGUAGES = {".py": "python", ".java": "java", ".rs": "rust"}
# Skipped directory names: build output, vendored environments and caches are not "our" code.
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    "site-packages",
    "target",
    "build",
    "dist",
}
MIN_BYTES, MAX_BYTES, MAX_LINE = 200, 256_000, 400


@dataclass(frozen=True)
class SourceFile:
    path: str  # logical path, "<source>/<relative path>", stable across machines
    language: str
    text: str


@dataclass(frozen=True)
class Corpus:
    train: list[SourceFile]
    heldout: list[SourceFile]
    excluded: list[SourceFile]  # kept out of training entirely (e.g. a package the demo replays)

    def describe(self) -> dict:
        def stats(files: list[SourceFile]) -> dict:
            return {"files": len(files), "bytes": sum(len(f.text.encode()) for f in files)}

        return {"train": stats(self.train), "heldout": stats(self.heldout), "excluded": stats(self.excluded)}

    def digest(self) -> str:
        """sha256 over every file's split, path and text: names the exact corpus a model saw."""
        h = hashlib.sha256()
        for split, files in (("train", self.train), ("heldout", self.heldout), ("excluded", self.excluded)):
            for f in files:
                text = hashlib.sha256(f.text.encode()).hexdigest()
                h.update(f"{split}\0{f.path}\0{text}\n".encode())
        return h.hexdigest()


def heldout_bucket(path: str) -> float:
    """A path's position in [0, 1); files below the held-out fraction are held out."""
    digest = hashlib.sha256(path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_corpus(
    sources: list[str],
    languages: set[str],
    *,
    heldout_fraction: float = 0.05,
    exclude: tuple[str, ...] = (),
    max_bytes: int | None = None,
) -> Corpus:
    """Read every usable source file of ``sources``; raise :class:`CorpusError` if none is."""
    unknown = languages - set(LANGUAGES.values())
    if unknown:
        raise CorpusError(f"unknown language(s) {sorted(unknown)}; choose from {sorted(LANGUAGES.values())}")
    files = _unique(f for source in sources for f in _read_source(source, languages))
    if max_bytes is not None:
        files = _cap(files, max_bytes)
    if not files:
        raise CorpusError(
            f"no {'/'.join(sorted(languages))} source files found in {', '.join(sources)}; "
            "pass --corpus with a directory holding code in those languages"
        )
    excluded = [f for f in files if any(fnmatch.fnmatch(f.path, pat) for pat in exclude)]
    excluded_paths = {f.path for f in excluded}
    kept = [f for f in files if f.path not in excluded_paths]
    heldout = [f for f in kept if heldout_bucket(f.path) < heldout_fraction]
    train = [f for f in kept if heldout_bucket(f.path) >= heldout_fraction]
    if not train or not heldout:
        raise CorpusError(
            f"corpus too small to split: {len(train)} training and {len(heldout)} held-out files; "
            "add more code with --corpus"
        )
    return Corpus(train=train, heldout=heldout, excluded=excluded)


def read_files(sources: list[str], languages: set[str]) -> list[SourceFile]:
    """Every usable source file of ``sources``, sorted by path, without a split or a size cap."""
    unknown = languages - set(LANGUAGES.values())
    if unknown:
        raise CorpusError(f"unknown language(s) {sorted(unknown)}; choose from {sorted(LANGUAGES.values())}")
    return _unique(f for source in sources for f in _read_source(source, languages))


def _unique(files: Iterator[SourceFile]) -> list[SourceFile]:
    seen: dict[str, SourceFile] = {}
    for f in files:
        seen.setdefault(f.path, f)
    return sorted(seen.values(), key=lambda f: f.path)


def _cap(files: list[SourceFile], max_bytes: int) -> list[SourceFile]:
    """A deterministic sample of at most ``max_bytes``, spread over the whole tree by path hash."""
    kept, total = [], 0
    # Salted so the sample is independent of the held-out split, which hashes the bare path.
    for f in sorted(files, key=lambda f: hashlib.sha256(f"cap:{f.path}".encode()).digest()):
        size = len(f.text.encode())
        if total + size <= max_bytes:
            kept.append(f)
            total += size
    return sorted(kept, key=lambda f: f.path)


def _read_source(source: str, languages: set[str]) -> Iterator[SourceFile]:
    if source == "stdlib":
        yield from _read_dir(Path(sysconfig.get_paths()["stdlib"]), "stdlib", languages)
    elif source == "jdk":
        zips = sorted(glob.glob("/usr/lib/jvm/*/lib/src.zip"))
        if not zips:
            raise CorpusError("no JDK sources found (/usr/lib/jvm/*/lib/src.zip); install a JDK")
        yield from _read_zip(Path(zips[0]), "jdk", languages)
    elif source == "rust-crates":
        root = Path("/usr/share/cargo/registry")
        if not root.is_dir():
            raise CorpusError(
                f"{root} missing; install crate sources, e.g. apt-get install librust-regex-dev"
            )
        yield from _read_dir(root, "rust-crates", languages)
    else:
        yield from _read_path(Path(source).expanduser(), languages)


def _read_path(path: Path, languages: set[str]) -> Iterator[SourceFile]:
    if not path.exists():
        raise CorpusError(f"corpus path {path} does not exist; pass an existing directory, repo, zip or file")
    if path.is_file() and zipfile.is_zipfile(path):
        yield from _read_zip(path, path.stem, languages)
    elif path.is_file():
        f = _source_file(path.name, path.read_bytes(), languages)
        if f:
            yield f
    elif (path / ".git").exists():
        yield from _read_git(path, languages)
    else:
        yield from _read_dir(path, path.name, languages)


def _read_dir(root: Path, label: str, languages: set[str]) -> Iterator[SourceFile]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if path.is_file() and not path.is_symlink():
            f = _source_file(f"{label}/{rel.as_posix()}", path.read_bytes(), languages)
            if f:
                yield f


def _read_git(root: Path, languages: set[str]) -> Iterator[SourceFile]:
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=False)
    if listed.returncode != 0:
        raise CorpusError(f"git ls-files failed in {root}: {listed.stderr.decode().strip()}")
    for rel in sorted(listed.stdout.decode().split("\0")):
        path = root / rel
        if rel and path.is_file() and not path.is_symlink():
            f = _source_file(f"{root.name}/{rel}", path.read_bytes(), languages)
            if f:
                yield f


def _read_zip(path: Path, label: str, languages: set[str]) -> Iterator[SourceFile]:
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if Path(name).suffix in LANGUAGES:
                f = _source_file(f"{label}/{name}", archive.read(name), languages)
                if f:
                    yield f


def _source_file(path: str, data: bytes, languages: set[str]) -> SourceFile | None:
    """The file as training text, or None when it is not code we want (size, encoding, minified)."""
    language = LANGUAGES.get(Path(path).suffix)
    if language not in languages or not MIN_BYTES <= len(data) <= MAX_BYTES:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\0" in text or max(map(len, text.splitlines()), default=0) > MAX_LINE:
        return None
    return SourceFile(path=path, language=language, text=text.replace("\r\n", "\n"))
