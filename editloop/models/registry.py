"""Versioned model artifacts and the one pointer that says which version serves.

Layout under the registry root (``Settings.models_dir``)::

    versions/v1/        GGUF files, optional hf/ and adapter/, manifest.json (sha256 of every file)
    versions/v2/
    .staging/<random>/  a version being assembled; renamed into versions/ when published
    current.json        {"version": "v2", "previous": ["v1"]}
    .lock               flock held while publishing, activating or rolling back

A version appears in ``versions/`` by one ``rename`` and becomes current by one ``replace`` of
``current.json``, so a process killed at any point leaves either the old state or the new one.
Versions are immutable once published; a version is verified against its manifest before it is
activated, so a damaged file is refused while the old model keeps serving.

>>> registry = Registry(settings.models_dir)
>>> with registry.stage() as staging:
...     write_gguf(staging / "model-q8_0.gguf")
...     version = registry.publish(staging, kind="retrain", fim=QWEN, gguf={"q8_0": "model-q8_0.gguf"})
>>> registry.activate(version.name)
"""

import hashlib
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import gguf
from pydantic import BaseModel, ValidationError

from editloop.errors import CorruptVersionError, ModelError, RegistryError, UnknownVersionError, quoted
from editloop.filelock import file_lock
from editloop.models.fim import SPM_GGUF_KEY, FimTemplate, detect_template

# "ranker": a retrain that kept its parent's weights and changed how candidates are ranked.
KINDS = ("starter", "import", "export", "retrain", "ranker", "synthetic")
MANIFEST = "manifest.json"
LINK_BYTES = 1 << 20  # republish links files this large instead of copying them
CURRENT_ALIAS = "current"
# Preferred when a caller asks for "the" GGUF: q8_0 is near-lossless at half the size of f16.
PREFERRED_QUANTS = ("q8_0", "f16")
# Bounded: a 5,000-digit name would overflow int() and the file system's name limit.
_VERSION_NAME = re.compile(r"v([1-9][0-9]{0,8})")
_NO_MODEL_HINT = "run `editloop bootstrap-model` or `editloop models import GGUF`"


class Manifest(BaseModel):
    """What a version is and the sha256 of every file it holds; stored as ``manifest.json``."""

    version: str
    created_at: str
    parent: str | None = None
    kind: str
    arch: str | None = None
    fim: FimTemplate
    gguf: dict[str, str]
    hf_dir: str | None = None
    adapter_dir: str | None = None
    tokenizer: str | None = None
    training_data: dict = {}
    metrics: dict = {}
    checks: dict = {}
    # Per ranker ("value", "logprob"): show a completion only when its score reaches this; chosen
    # on held-out feedback by the cycle that made the version (absent: the server's default).
    abstain_thresholds: dict[str, float] = {}
    # Random weights in a real model's shape (`editloop models synth`), or trained from such weights:
    # for measuring cost, never for serving anyone.
    synthetic: bool = False
    files: dict[str, str]


@dataclass(frozen=True)
class ModelVersion:
    """One published version: its directory and manifest."""

    name: str
    path: Path
    manifest: Manifest

    def gguf_path(self, quant: str | None = None) -> Path:
        """The GGUF for ``quant``, or the preferred one (q8_0, then f16, then any) when None."""
        available = self.manifest.gguf
        if quant is None:
            quant = next((q for q in PREFERRED_QUANTS if q in available), min(available, default=None))
        if quant is None or quant not in available:
            have = ", ".join(sorted(available)) or "none"
            wanted = f"{quant} GGUF file" if quant else "GGUF file"
            raise ModelError(f"version {self.name} has no {wanted} (it has: {have})")
        return self.path / available[quant]

    def hf_path(self) -> Path | None:
        return self.path / self.manifest.hf_dir if self.manifest.hf_dir else None

    def tokenizer_path(self) -> Path | None:
        return self.path / self.manifest.tokenizer if self.manifest.tokenizer else None


class _Pointer(BaseModel):
    version: str
    previous: list[str] = []


CanaryStatus = Literal["running", "promoted", "rolled_back", "aborted"]


class Canary(BaseModel):
    """A version serving a share of requests beside the current one until live feedback decides.

    Stored as ``canary.json`` next to ``current.json``: every replica reads the same arm map from
    it, and the decision outlives any process. A running canary counts only while ``baseline`` is
    still current (an operator who activates another version ends it).
    """

    version: str
    baseline: str
    share: float
    started_at: float  # epoch seconds
    status: CanaryStatus = "running"
    decided_at: float | None = None
    reason: str = ""
    figures: dict = {}


def in_canary(key: str | None, share: float) -> bool:
    """Whether requests keyed ``key`` (user and document) go to the canary arm.

    A stable hash, so every replica and every restart agrees and a user's document stays on one
    arm; a request with no key at all is assigned at random.
    """
    if share <= 0:
        return False
    if key is None:
        return random.random() < share
    point = int.from_bytes(hashlib.sha256(f"canary:{key}".encode()).digest()[:8], "big") / 2**64
    return point < share


class Registry:
    """The versions under ``root`` and the pointer to the current one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / ".staging"
        self.pointer_file = self.root / "current.json"
        self.canary_file = self.root / "canary.json"

    @contextmanager
    def stage(self) -> Iterator[Path]:
        """A fresh empty directory to assemble a version in; removed on exit unless published."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="stage-", dir=self.staging_dir))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def publish(
        self,
        staging: Path,
        *,
        kind: str,
        fim: FimTemplate,
        gguf: dict[str, str],
        arch: str | None = None,
        parent: str | None = None,
        hf_dir: str | None = None,
        adapter_dir: str | None = None,
        tokenizer: str | None = None,
        training_data: dict | None = None,
        metrics: dict | None = None,
        checks: dict | None = None,
        abstain_thresholds: dict[str, float] | None = None,
        synthetic: bool = False,
    ) -> ModelVersion:
        """Hash and fsync the staged files, then move them into ``versions/`` as the next version.

        Does not activate the new version.
        """
        staging = Path(staging)
        self._check_publishable(staging, kind, gguf, hf_dir, adapter_dir, tokenizer)
        fields: dict[str, Any] = dict(
            kind=kind,
            fim=fim,
            gguf=gguf,
            arch=arch,
            parent=parent,
            hf_dir=hf_dir,
            adapter_dir=adapter_dir,
            tokenizer=tokenizer,
            training_data=training_data or {},
            metrics=metrics or {},
            checks=checks or {},
            abstain_thresholds=abstain_thresholds or {},
            synthetic=synthetic,
            files=_hash_and_sync_tree(staging),
        )
        with self._locked():
            name = self._next_name()
            manifest = Manifest(version=name, created_at=_utc_now(), **fields)
            _write_durably(staging / MANIFEST, manifest.model_dump_json(indent=2).encode())
            _fsync_dir(staging)
            target = self.versions_dir / name
            os.rename(staging, target)
            _fsync_dir(self.versions_dir)
            _fsync_dir(self.staging_dir)
        return ModelVersion(name, target, manifest)

    def versions(self) -> list[ModelVersion]:
        """Every readable version, oldest first; a directory without a valid manifest is skipped."""
        found = []
        for name in self._version_names():
            try:
                found.append(self.get(name))
            except CorruptVersionError:
                continue
        return found

    def get(self, name: str) -> ModelVersion:
        """The version called ``name`` (``"current"`` means the active one), without verifying files."""
        if name == CURRENT_ALIAS:
            return self._require_pointer_version()
        path = self.versions_dir / name
        if not _VERSION_NAME.fullmatch(name) or not path.is_dir():
            known = ", ".join(self._version_names()) or f"none yet; {_NO_MODEL_HINT}"
            raise UnknownVersionError(f"no model version {quoted(name)}; known versions: {known}")
        return ModelVersion(name, path, _read_manifest(path, name))

    def verify(self, name: str) -> ModelVersion:
        """The version, after checking every file in its manifest exists with the recorded sha256.

        A symlink anywhere inside the version is refused, as ``publish`` refuses one: it could
        lead a loader (or an error message) to a file outside the version.
        """
        version = self.get(name)
        linked = _first_symlink(version.path)
        if linked is not None:
            raise _corrupt(version, f"{linked} is a symlink")
        for rel, expected in version.manifest.files.items():
            path = version.path / rel
            if not path.is_file():
                raise _corrupt(version, f"file {rel} is missing")
            if _sha256(path) != expected:
                raise _corrupt(version, f"file {rel} does not match its sha256 in the manifest")
        return version

    def current(self) -> ModelVersion | None:
        pointer = self._read_pointer()
        return self.get(pointer.version) if pointer else None

    def current_name(self) -> str | None:
        """The name ``current.json`` points at, read cheaply (no manifest, no hashing): for pollers."""
        try:
            pointer = self._read_pointer()
        except RegistryError:
            return None  # a watcher retries; activation and loading report the error properly
        return pointer.version if pointer else None

    def activate(self, name: str) -> ModelVersion:
        """Verify ``name`` and make it current; the version it replaces heads the rollback stack."""
        version = self.verify(name)
        with self._locked():
            self._activate_locked(version)
            self._void_canary_locked(f"{version.name} was activated by hand")
        return version

    def _void_canary_locked(self, reason: str) -> None:
        """A running canary measured against a baseline that is no longer current means nothing."""
        try:
            canary = self.canary()
        except RegistryError:
            return
        if canary is not None and canary.status == "running" and canary.baseline != self.current_name():
            decided = canary.model_copy(
                update={"status": "aborted", "decided_at": time.time(), "reason": reason}
            )
            _write_atomically(self.canary_file, decided.model_dump_json(indent=2).encode())

    def _activate_locked(self, version: ModelVersion) -> None:
        pointer = self._read_pointer()
        if pointer is None:
            self._write_pointer(_Pointer(version=version.name))
        elif pointer.version != version.name:
            stack = [pointer.version, *pointer.previous]
            previous = list(dict.fromkeys(v for v in stack if v != version.name))
            self._write_pointer(_Pointer(version=version.name, previous=previous))

    def rollback(self) -> ModelVersion:
        """Make the previously current version current again (verified first)."""
        with self._locked():
            pointer = self._read_pointer()
            if pointer is None or not pointer.previous:
                now = f"{pointer.version} is current" if pointer else "no version is current"
                raise RegistryError(
                    f"nothing to roll back to: {now} and no earlier version was active; "
                    "use `editloop models activate VERSION` to pick one"
                )
            version = self.verify(pointer.previous[0])
            self._write_pointer(_Pointer(version=version.name, previous=pointer.previous[1:]))
            self._void_canary_locked(f"rolled back to {version.name}")
        return version

    # -- canary ------------------------------------------------------------------------------

    def canary(self) -> Canary | None:
        """The last canary (running or decided), or None when there never was one."""
        try:
            return Canary.model_validate_json(self.canary_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise RegistryError(
                f"{self.canary_file} is unreadable ({exc}); `editloop canary abort` rewrites it"
            ) from exc

    def running_canary(self) -> Canary | None:
        """The canary that serves now: running, and its baseline still current. Cheap, for pollers."""
        try:
            canary = self.canary()
        except RegistryError:
            return None
        if canary is None or canary.status != "running" or canary.baseline != self.current_name():
            return None
        return canary

    def start_canary(self, name: str, share: float) -> Canary:
        """Serve verified ``name`` to ``share`` of requests beside the current version."""
        if not 0 < share < 1:
            raise RegistryError(f"a canary share must be between 0 and 1, not {share}")
        version = self.verify(name)
        with self._locked():
            pointer = self._read_pointer()
            if pointer is None or pointer.version == version.name:
                raise RegistryError(
                    f"{version.name} cannot be a canary: it needs a different current version"
                )
            canary = Canary(
                version=version.name, baseline=pointer.version, share=share, started_at=time.time()
            )
            _write_atomically(self.canary_file, canary.model_dump_json(indent=2).encode())
        return canary

    def end_canary(self, status: CanaryStatus, reason: str, figures: dict | None = None) -> Canary:
        """Decide the running canary: ``promoted`` makes it current (its baseline heads the rollback
        stack); ``rolled_back`` or ``aborted`` leave the current version serving everything."""
        with self._locked():
            canary = self.canary()
            if canary is None or canary.status != "running":
                raise RegistryError("no canary is running (`editloop canary status`)")
            if status == "promoted":
                self._activate_locked(self.verify(canary.version))
            decided = canary.model_copy(
                update={
                    "status": status,
                    "decided_at": time.time(),
                    "reason": reason,
                    "figures": figures or {},
                }
            )
            _write_atomically(self.canary_file, decided.model_dump_json(indent=2).encode())
        return decided

    def fallbacks(self) -> list[str]:
        """What may serve when the current version cannot: the versions active before it (the
        rollback stack, latest first), then any older ones, newest first."""
        try:
            pointer = self._read_pointer()
        except RegistryError:
            pointer = None
        if pointer is None or not _VERSION_NAME.fullmatch(pointer.version):
            return []
        below = _version_number(pointer.version)
        older = [n for n in reversed(self._version_names()) if _version_number(n) < below]
        return [n for n in dict.fromkeys([*pointer.previous, *older]) if n != pointer.version]

    def load_verified_current(self) -> ModelVersion:
        """The current version with its files verified; what a server loads at start."""
        return self.verify(self._require_pointer_version().name)

    def republish(
        self,
        name: str,
        add: Callable[[Path], object] | None = None,
        abstain_thresholds: dict[str, float] | None = None,
        kind: str = "retrain",
        training_data: dict | None = None,
        metrics: dict | None = None,
    ) -> ModelVersion:
        """``name``'s files again as a new version whose weights did not change: a cycle that
        publishes only a new value model (``kind="ranker"``), and how the benchmarks and tests get a
        second version to swap to. ``add`` may write more files into the staging (a value model);
        the copy keeps the source's manifest, ``synthetic`` included. Large files are hard links
        where the file system allows (versions are never written to), so a 1 GB GGUF is not copied;
        ``add`` writes new small files or replaces them, never writes into a large one."""
        source = self.verify(name)
        m = source.manifest
        with self.stage() as staging:
            for rel in m.files:
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(source.path / rel, staging / rel)
            if add is not None:
                add(staging)
            return self.publish(
                staging,
                kind=kind,
                training_data=training_data,
                metrics=metrics,
                fim=m.fim,
                gguf=m.gguf,
                arch=m.arch,
                parent=source.name,
                hf_dir=m.hf_dir,
                adapter_dir=m.adapter_dir,
                tokenizer=m.tokenizer,
                abstain_thresholds=m.abstain_thresholds if abstain_thresholds is None else abstain_thresholds,
                synthetic=m.synthetic,
            )

    def import_gguf(self, gguf_path: Path, hf_dir: Path | None = None) -> ModelVersion:
        """Publish an existing GGUF (and optionally its HF weights) as a new version; not activated."""
        gguf_path = Path(gguf_path)
        arch, quant, tokens, spm = _read_gguf_header(gguf_path)
        fim = detect_template(tokens, source=gguf_path.name, spm=spm)
        if hf_dir is not None and not (Path(hf_dir) / "config.json").is_file():
            raise ModelError(f"{hf_dir} is not a Hugging Face model directory (it has no config.json)")
        with self.stage() as staging:
            gguf_name = f"model-{quant}.gguf"
            shutil.copyfile(gguf_path, staging / gguf_name)
            tokenizer = None
            if hf_dir is not None:
                shutil.copytree(hf_dir, staging / "hf", symlinks=False)
                tokenizer = "hf/tokenizer.json" if (staging / "hf/tokenizer.json").is_file() else None
            return self.publish(
                staging,
                kind="import",
                fim=fim,
                gguf={quant: gguf_name},
                arch=arch,
                hf_dir="hf" if hf_dir is not None else None,
                tokenizer=tokenizer,
                training_data={"imported_from": str(gguf_path.resolve())},
            )

    # -- internals -------------------------------------------------------------------------

    def _locked(self) -> AbstractContextManager[None]:
        return file_lock(self.root / ".lock")

    def _version_names(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if _VERSION_NAME.fullmatch(p.name)]
        return sorted(names, key=_version_number)

    def _next_name(self) -> str:
        # Counts unreadable directories too, so a broken version's name is never reused.
        numbers = [_version_number(name) for name in self._version_names()]
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        return f"v{max(numbers, default=0) + 1}"

    def _check_publishable(
        self,
        staging: Path,
        kind: str,
        gguf: dict[str, str],
        hf_dir: str | None,
        adapter_dir: str | None,
        tokenizer: str | None,
    ) -> None:
        if kind not in KINDS:
            raise RegistryError(f"unknown version kind {kind!r}; use one of: {', '.join(KINDS)}")
        # rename() is only atomic within one filesystem, hence staging must live under the root.
        if not staging.is_dir() or staging.resolve().parent != self.staging_dir.resolve():
            raise RegistryError(
                f"{staging} is not a staging directory of this registry; use Registry.stage()"
            )
        if not gguf:
            raise RegistryError("a version needs at least one GGUF file")
        for quant, rel in gguf.items():
            _require_inside(staging, rel, f"GGUF {quant!r}", want_dir=False)
        optional = {
            "hf_dir": (hf_dir, True),
            "adapter_dir": (adapter_dir, True),
            "tokenizer": (tokenizer, False),
        }
        for label, (path, want_dir) in optional.items():
            if path is not None:
                _require_inside(staging, path, label, want_dir=want_dir)

    def _read_pointer(self) -> _Pointer | None:
        try:
            return _Pointer.model_validate_json(self.pointer_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            # Not the ValidationError's text: it quotes the file, which may be anything.
            why = exc.strerror if isinstance(exc, OSError) else "not a version pointer"
            raise RegistryError(
                f"{self.pointer_file} is unreadable ({why}); "
                "run `editloop models activate VERSION` to rewrite it"
            ) from exc

    def _write_pointer(self, pointer: _Pointer) -> None:
        _write_atomically(self.pointer_file, pointer.model_dump_json(indent=2).encode())

    def _require_pointer_version(self) -> ModelVersion:
        version = self.current()
        if version is None:
            raise RegistryError(f"no model version is active; {_NO_MODEL_HINT}")
        return version


# -- files -----------------------------------------------------------------------------------


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link for a large file (weights), a copy for a small one (which ``add`` may rewrite)."""
    if source.stat().st_size >= LINK_BYTES:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copy2(source, target)


def _version_number(name: str) -> int:
    return int(name[1:])


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _corrupt(version: ModelVersion, problem: str) -> CorruptVersionError:
    return CorruptVersionError(
        f"model version {version.name} is corrupt: {problem}; re-publish it or delete {version.path}"
    )


def _first_symlink(root: Path) -> str | None:
    """The first symlink under ``root`` (relative), or None; the walk never follows one."""
    for directory, dirs, files in os.walk(root):
        for entry in (*dirs, *files):
            if (Path(directory) / entry).is_symlink():
                return (Path(directory) / entry).relative_to(root).as_posix()
    return None


def _read_manifest(path: Path, name: str) -> Manifest:
    manifest_path = path / MANIFEST
    try:
        if manifest_path.is_symlink():
            raise CorruptVersionError(f"model version {name}'s {MANIFEST} is a symlink; delete {path}")
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except OSError as exc:
        raise CorruptVersionError(
            f"model version {name} has no readable {MANIFEST} ({exc.strerror}); "
            f"delete {path} or re-publish it"
        ) from exc
    except ValidationError as exc:  # its message quotes the input: a file's content must not travel
        fields = ", ".join(".".join(map(str, e["loc"])) or "the document" for e in exc.errors()[:5])
        raise CorruptVersionError(
            f"model version {name} has an invalid {MANIFEST} ({fields}); delete {path} or re-publish it"
        ) from exc
    referenced = [*manifest.gguf.values(), *filter(None, [manifest.tokenizer])]
    unlisted = [rel for rel in referenced if rel not in manifest.files]
    if manifest.version != name or unlisted:
        raise CorruptVersionError(
            f"model version {name} has an inconsistent {MANIFEST}; delete {path} or re-publish it"
        )
    return manifest


def _require_inside(staging: Path, rel: str, label: str, *, want_dir: bool) -> None:
    path = (staging / rel).resolve()
    inside = path.is_relative_to(staging.resolve()) and not Path(rel).is_absolute()
    exists = path.is_dir() if want_dir else path.is_file()
    if not (inside and exists):
        what = "directory" if want_dir else "file"
        raise RegistryError(f"{label} path {rel!r} is not a {what} inside the staging directory")


def _hash_and_sync_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, fsyncing files and directories."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise RegistryError(f"{path} is a symlink; copy the file into the version instead")
        if path.is_dir():
            _fsync_dir(path)
        elif path.relative_to(root).as_posix() != MANIFEST:
            files[path.relative_to(root).as_posix()] = _sha256(path, sync=True)
    return files


def _sha256(path: Path, *, sync: bool = False) -> str:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        if sync:
            os.fsync(f.fileno())
    return digest


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, even across a crash."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- GGUF ------------------------------------------------------------------------------------


def _read_gguf_header(path: Path) -> tuple[str | None, str, list[str], bool]:
    """(architecture, quant name, token list, whether FIM prompts go suffix first) from a GGUF
    file's metadata."""
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file")
    try:
        reader = gguf.GGUFReader(path)
        arch = _gguf_string(reader, "general.architecture")
        file_type = _gguf_int(reader, "general.file_type")
        tokens = _gguf_strings(reader, "tokenizer.ggml.tokens")
        quant = _ftype_name(file_type) if file_type is not None else _dominant_tensor_type(reader)
        spm = bool(_gguf_int(reader, SPM_GGUF_KEY))
    except Exception as exc:
        raise ModelError(f"not a readable GGUF file: {path} ({exc})") from exc
    return arch, quant, tokens, spm


def _gguf_string(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    return bytes(field.parts[field.data[0]]).decode() if field else None


def _gguf_int(reader: Any, key: str) -> int | None:
    field = reader.get_field(key)
    return int(field.parts[field.data[0]][0]) if field else None


def _gguf_strings(reader: Any, key: str) -> list[str]:
    field = reader.get_field(key)
    return [bytes(field.parts[i]).decode(errors="replace") for i in field.data] if field else []


def _ftype_name(file_type: int) -> str:
    """llama.cpp's name for a ``general.file_type`` value: 7 → "q8_0", 15 → "q4_k_m"."""
    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"ftype{file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


def _dominant_tensor_type(reader: Any) -> str:
    # Old converters omit general.file_type; the commonest tensor type names the quant instead.
    counts = Counter(t.tensor_type.name.lower() for t in reader.tensors)
    return counts.most_common(1)[0][0] if counts else "unknown"
