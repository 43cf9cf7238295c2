"""Model files shipped inside the repository, and the way in and out of the registry.

A shipped folder is a registry version frozen for distribution: the HF weights and tokenizer
(to retrain from), the GGUF it serves (Q8_0: near-lossless, half the size of f16; a retrain
exports f16 and Q8_0 again from the HF weights, so f16 would only double the download), and a
``manifest.json`` with the recipe that rebuilds it, the digest of its training corpus, its
figures and the sha256 of every file::

    editloop/starter/shipped/small/
        manifest.json
        model-q8_0.gguf
        hf/config.json, hf/model.safetensors, hf/tokenizer.json, ...

>>> export_shipped(registry.verify("v1"), Path("editloop/starter/shipped/small"))  # doctest: +SKIP
>>> version = import_shipped(registry, Path("editloop/starter/shipped/small"))      # doctest: +SKIP

Importing checks every file against the manifest before anything is published, so a damaged or
edited file is refused and the registry stays as it was.
"""

import hashlib
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from editloop.errors import CorruptVersionError, ModelError, RegistryError
from editloop.models.fim import FimTemplate
from editloop.models.registry import ModelVersion, Registry

MANIFEST = "manifest.json"
SHIPPED_QUANTS = ("q8_0",)


class ShippedManifest(BaseModel):
    """``manifest.json`` of a shipped folder: where it came from, how to rebuild it, every file's sha256."""

    format: Literal[1] = 1
    source_version: str
    exported_at: str
    kind: str
    arch: str | None = None
    fim: FimTemplate
    gguf: dict[str, str]
    hf_dir: str | None = None
    adapter_dir: str | None = None
    tokenizer: str | None = None
    recipe: str | None = None  # the command that rebuilds these weights
    corpus_digest: str | None = None
    training_data: dict = {}
    metrics: dict = {}
    checks: dict = {}
    abstain_thresholds: dict[str, float] = {}
    files: dict[str, str]


def export_shipped(
    version: ModelVersion,
    dest: Path,
    *,
    quants: tuple[str, ...] = SHIPPED_QUANTS,
    corpus_digest: str | None = None,
    replace: bool = False,
) -> ShippedManifest:
    """Write ``version`` (verified by the caller) to ``dest`` as a shipped folder.

    Every file of the version is copied except the GGUF quants not in ``quants``. ``dest`` must
    not exist unless ``replace``; the folder appears whole or not at all.
    """
    dest = Path(dest)
    m = version.manifest
    gguf = {q: rel for q, rel in m.gguf.items() if q in quants}
    if not gguf:
        raise ModelError(
            f"version {version.name} has no {' or '.join(quants)} GGUF (it has: {', '.join(m.gguf)})"
        )
    if dest.exists() and not replace:
        raise RegistryError(f"{dest} already exists; pass --force to replace it")
    dropped = set(m.gguf.values()) - set(gguf.values())
    files = {rel: sha for rel, sha in m.files.items() if rel not in dropped}
    manifest = ShippedManifest(
        source_version=version.name,
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        kind=m.kind,
        arch=m.arch,
        fim=m.fim,
        gguf=gguf,
        hf_dir=m.hf_dir,
        adapter_dir=m.adapter_dir,
        tokenizer=m.tokenizer,
        recipe=m.training_data.get("reproduce"),
        corpus_digest=corpus_digest or m.training_data.get("corpus_digest"),
        training_data=m.training_data,
        metrics=m.metrics,
        checks=m.checks,
        abstain_thresholds=m.abstain_thresholds,
        files=files,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        _copy_checked(version.path, work, files)
        (work / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def read_shipped(src: Path) -> ShippedManifest:
    """The manifest of the shipped folder ``src``, or a clear error."""
    try:
        return ShippedManifest.model_validate_json((Path(src) / MANIFEST).read_bytes())
    except FileNotFoundError as exc:
        raise ModelError(
            f"{src} holds no {MANIFEST}: it is not a folder written by `editloop models ship`"
        ) from exc
    except (OSError, ValidationError) as exc:
        raise CorruptVersionError(f"{src}/{MANIFEST} is unreadable ({exc})") from exc


def import_shipped(registry: Registry, src: Path) -> ModelVersion:
    """Publish the shipped folder ``src`` as a new version (not activated), every file sha256-checked."""
    src = Path(src)
    shipped = read_shipped(src)
    with registry.stage() as staging:
        _copy_checked(src, staging, shipped.files)
        origin = {"from": str(src.resolve()), "source_version": shipped.source_version}
        return registry.publish(
            staging,
            kind=shipped.kind,
            fim=shipped.fim,
            gguf=shipped.gguf,
            arch=shipped.arch,
            hf_dir=shipped.hf_dir,
            adapter_dir=shipped.adapter_dir,
            tokenizer=shipped.tokenizer,
            training_data={
                **shipped.training_data,
                "corpus_digest": shipped.corpus_digest,
                "shipped": origin,
            },
            metrics=shipped.metrics,
            checks=shipped.checks,
            abstain_thresholds=shipped.abstain_thresholds,
        )


def _copy_checked(src: Path, dest: Path, files: dict[str, str]) -> None:
    """Copy ``files`` from ``src`` into ``dest``, checking each copy's sha256 against ``files``.

    The copy is what gets hashed, so a file damaged at the source or on the way is caught.
    """
    for rel, expected in files.items():
        source, target = src / rel, dest / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CorruptVersionError(f"{src}/{MANIFEST} names a file outside the folder: {rel}")
        if not source.is_file():
            raise CorruptVersionError(f"{source} is missing; {_REFETCH}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        with target.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
        if actual != expected:
            raise CorruptVersionError(
                f"{source} does not match its sha256 in {src / MANIFEST} "
                f"(expected {expected[:12]}…, found {actual[:12]}…); {_REFETCH}"
            )


_REFETCH = (
    "restore it (`git checkout -- PATH`, or reinstall editloop) or build the model here instead "
    "(`editloop bootstrap-model`)"
)
