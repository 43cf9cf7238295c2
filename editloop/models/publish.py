"""Export a checkpoint to verified GGUF files and publish it as a registry version.

Used by ``editloop models export`` now and by retrain cycles later: a failed export or
verification raises before ``publish``, and the staging directory is discarded.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editloop.models.export import ExportResult, checkpoint_dtype, export_gguf, load_hf
from editloop.models.parity import ParityInputs, default_inputs, verify_export
from editloop.models.registry import ModelVersion, Registry
from editloop.models.synth import is_synthetic
from editloop.settings import Settings

DEFAULT_QUANTS = ("f16", "q8_0", "q4_k_m")


def export_verified(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    quants: tuple[str, ...] = DEFAULT_QUANTS,
    threads: int = 2,
    inputs: ParityInputs | None = None,
) -> tuple[ExportResult, dict]:
    """GGUF files in ``out_dir`` and the figures of their verification (raises if it fails)."""
    exported = export_gguf(model, tokenizer, out_dir, quants, threads)
    inputs = inputs or default_inputs()
    checks = verify_export(model, tokenizer, exported.fim, exported.files, inputs, threads)
    checks["quant_fallbacks"] = exported.fallbacks
    return exported, checks


def publish_checkpoint(
    settings: Settings,
    hf_dir: Path,
    *,
    adapter_dir: Path | None = None,
    parent: str | None = None,
    activate: bool = False,
    threads: int = 2,
    kind: str = "export",
    training_data: dict | None = None,
    metrics: dict | None = None,
    quants: tuple[str, ...] = DEFAULT_QUANTS,
    inputs: ParityInputs | None = None,
) -> ModelVersion:
    """A new version holding the checkpoint (merged with its adapter) and its verified GGUF files.

    Retraining publishes with ``kind="retrain"`` and says what it trained on in ``training_data``.
    """
    registry = Registry(settings.models_dir)
    if parent is not None:
        registry.get(parent)  # fail before the slow part if the parent is unknown
    with stage_checkpoint(registry, hf_dir, adapter_dir, quants, threads, inputs=inputs) as staged:
        version = staged.publish(
            kind=kind,
            parent=parent,
            training_data={
                "hf_dir": str(hf_dir),
                "adapter_dir": str(adapter_dir) if adapter_dir else None,
                **(training_data or {}),
            },
            metrics=metrics,
        )
    if activate:
        registry.activate(version.name)
    return version


@dataclass
class StagedCheckpoint:
    """A checkpoint exported and verified in registry staging, not yet visible as a version."""

    registry: Registry
    path: Path  # the staging directory: add files (e.g. a value model) before publishing
    exported: ExportResult
    checks: dict
    has_adapter: bool
    synthetic: bool  # random weights of a real shape (``editloop models synth``), or trained from them

    def publish(
        self,
        *,
        kind: str,
        parent: str | None,
        training_data: dict | None = None,
        metrics: dict | None = None,
        abstain_thresholds: dict[str, float] | None = None,
    ) -> ModelVersion:
        return self.registry.publish(
            self.path,
            kind=kind,
            fim=self.exported.fim,
            arch=self.exported.arch,
            parent=parent,
            gguf={q: p.name for q, p in self.exported.files.items()},
            hf_dir="hf",
            tokenizer="hf/tokenizer.json",
            adapter_dir="adapter" if self.has_adapter else None,
            training_data=training_data,
            metrics=metrics,
            checks=self.checks,
            abstain_thresholds=abstain_thresholds,
            synthetic=self.synthetic,
        )


@contextmanager
def stage_checkpoint(
    registry: Registry,
    hf_dir: Path,
    adapter_dir: Path | None = None,
    quants: tuple[str, ...] = DEFAULT_QUANTS,
    threads: int = 2,
    adapter_scale: float = 1.0,
    inputs: ParityInputs | None = None,
) -> Iterator[StagedCheckpoint]:
    """Merge (``adapter_scale`` of the adapter's update), export and verify into staging; the
    staging is discarded unless published inside."""
    model, tokenizer = load_hf(hf_dir, adapter_dir, adapter_scale=adapter_scale)
    with registry.stage() as staging:
        exported, checks = export_verified(model, tokenizer, staging, quants, threads, inputs)
        if adapter_dir is None:
            # Unchanged weights keep the checkpoint's own dtype (a bf16 1.5B stays 3 GB, not 6); a
            # merged adapter stays fp32, where its small deltas are not rounded away.
            import torch

            torch.nn.Module.to(model, checkpoint_dtype(hf_dir))  # transformers' typing of .to drops self
        model.save_pretrained(staging / "hf", safe_serialization=True)
        tokenizer.save_pretrained(staging / "hf")
        if adapter_dir is not None:
            shutil.copytree(adapter_dir, staging / "adapter")
        synthetic = is_synthetic(model.config)
        yield StagedCheckpoint(registry, staging, exported, checks, adapter_dir is not None, synthetic)
