"""What SFT and GRPO share: the LoRA settings, CPU-or-GPU precision, a time budget, the merge.

The CPU path (the starter model, two cores) trains in fp32 with ``use_cpu``; a CUDA GPU trains in
bf16. Both train a PEFT LoRA adapter; :func:`merge_adapter` folds one into a full checkpoint with
the same code export uses (:func:`editloop.models.export.load_hf`).

>>> merged = merge_adapter(base_dir, run_dir / "adapter", run_dir / "merged")  # doctest: +SKIP
"""

import importlib.util
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from editloop.errors import ModelError, TrainingDataError
from editloop.models.export import load_hf

Device = Literal["auto", "cpu", "cuda"]


@dataclass
class LoraSettings:
    rank: int = field(default=16, metadata={"help": "LoRA rank r: the adapter's capacity."})
    alpha: int = field(
        default=32, metadata={"help": "LoRA scaling numerator (update scale is alpha / rank)."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: str = field(
        default="all-linear",
        metadata={"help": "Layers that get an adapter; 'all-linear' is every projection."},
    )

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


@dataclass
class AdapterRunConfig:
    """The settings every adapter run (SFT, GRPO) takes the same way."""

    max_minutes: float | None = field(default=None, metadata={"help": "Stop after this much training time."})
    max_context: int | None = field(
        default=2048, metadata={"help": "Cap on prompt + completion tokens (the model's context if smaller)."}
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "The adapter trained."})
    device: Device = field(default="auto", metadata={"help": "cpu, cuda, or auto (cuda when present)."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations to save memory (large models on a GPU)."}
    )
    tensorboard: bool = field(default=True, metadata={"help": "Also write TensorBoard scalars."})
    processes: int = field(
        default=1,
        metadata={
            "help": "Processes the step's batch is split across (set by editloop.training.launch): "
            "the global batch, and so the result, does not depend on how many there are."
        },
    )

    def per_process(self, batch: int) -> int:
        """Each process's share of a global batch of ``batch`` rows."""
        if batch % self.processes:
            raise TrainingDataError(
                f"a batch of {batch} rows does not split across {self.processes} training processes; "
                "choose a process count that divides it"
            )
        return batch // self.processes


class RunReport:
    """``to_dict`` for a run's report dataclass: JSON-ready, paths as strings."""

    def to_dict(self) -> dict[str, Any]:
        if not is_dataclass(self):
            raise TypeError(f"{type(self).__name__} is not a dataclass")
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def resolve_device(device: Device) -> Literal["cpu", "cuda"]:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return device


def precision_args(device: Literal["cpu", "cuda"]) -> dict[str, Any]:
    """Trainer arguments for the device: fp32 on CPU, where TRL's own tests run, bf16 on a GPU."""
    if device == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False}
    return {"use_cpu": False, "bf16": True, "fp16": False}


def vllm_available() -> bool:
    """vLLM generates GRPO's samples on a GPU when it is installed; it never is on the CPU machines."""
    return importlib.util.find_spec("vllm") is not None


def load_causal_lm(model_dir: Path, device: Literal["cpu", "cuda"]) -> PreTrainedModel:
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a transformers checkpoint (no config.json)")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the checkpoint in {model_dir}: {exc}") from exc


def with_adapter(model: PreTrainedModel, adapter_dir: Path | None) -> Any:
    """The model with a trainable copy of an earlier adapter (SFT's, for GRPO), or as it is."""
    if adapter_dir is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


class TimeBudget(TrainerCallback):
    """Stops training after the step that crosses ``max_seconds`` (measured from the first step)."""

    def __init__(self, max_seconds: float | None) -> None:
        self.max_seconds = max_seconds
        self._started: float | None = None
        self.stopped_early = False

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._started = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.max_seconds is None or self._started is None:
            return
        if time.perf_counter() - self._started >= self.max_seconds and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_early = True


class Snapshots(TrainerCallback):
    """Saves the adapter every ``every`` steps into ``directory/step-N``: points a cycle can choose."""

    def __init__(self, directory: Path, every: int) -> None:
        self.directory = directory
        self.every = every
        self.saved: dict[int, Path] = {}

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        step = state.global_step
        if self.every <= 0 or step % self.every or step >= state.max_steps or not state.is_world_process_zero:
            return
        model = kwargs.get("model")
        if model is not None:
            model.save_pretrained(self.directory / f"step-{step}")
            self.saved[step] = self.directory / f"step-{step}"


def train_and_save(trainer: Any, adapter_dir: Path) -> float:
    """Run a TRL trainer to its end and save its adapter; the seconds training took."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # StepMetrics reports each step instead
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(adapter_dir))
    return seconds


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """A full HF checkpoint (weights + tokenizer) of the base with the adapter merged in."""
    model, tokenizer = load_hf(base_dir, adapter_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def last_value(rows: list[dict[str, Any]], key: str) -> float | None:
    """The last finite value of ``key`` in logged rows, or None."""
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, float) and value == value:
            return value
    return None
