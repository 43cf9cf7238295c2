"""Supervised fine-tuning on kept text: TRL's SFTTrainer with a PEFT LoRA adapter.

Each row becomes the FIM prompt the server would build for its cursor plus the kept text and
EOS; only the completion is learned. Rows arrive as :class:`FimExample` or plain dicts with
``prefix, suffix, reference`` (and optionally ``language, filepath, tests``).

>>> report = run_sft(version.hf_path(), rows, run_dir / "sft", SftConfig(max_steps=20))  # doctest: +SKIP
>>> report.adapter_dir, report.final_loss  # doctest: +SKIP
(PosixPath('.../sft/adapter'), 1.93)
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from editloop.errors import TrainingDataError
from editloop.training.metrics import StepMetrics
from editloop.training.prompts import FimExample, HfPromptTokenizer, completion_ids, fim_prompt_ids
from editloop.training.runtime import (
    AdapterRunConfig,
    RunReport,
    Snapshots,
    TimeBudget,
    last_value,
    load_causal_lm,
    precision_args,
    resolve_device,
    train_and_save,
    with_adapter,
)


@dataclass
class SftConfig(AdapterRunConfig):
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps (fewer if max_minutes runs out)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (LoRA: ~1e-4)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per optimizer step (across all processes)."})
    gradient_accumulation: int = field(default=1, metadata={"help": "Batches summed into one step."})
    max_new_tokens: int = field(
        default=64,
        metadata={
            "help": "Room the prompt leaves for the completion, as serving's line mode does; "
            "rows whose kept text is longer are skipped."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for data order and adapter initialisation."})
    snapshot_every: int = field(
        default=0, metadata={"help": "Also save the adapter every this many steps (0: only at the end)."}
    )

    @property
    def global_batch(self) -> int:
        return self.batch_size


@dataclass
class SftReport(RunReport):
    adapter_dir: Path
    metrics_path: Path
    device: str
    steps: int
    rows: int
    skipped_rows: int  # kept text longer than max_new_tokens
    seconds: float
    seconds_per_step: float
    first_loss: float | None
    final_loss: float | None
    stopped_early: bool  # max_minutes ran out before max_steps
    snapshots: dict[int, str] = field(default_factory=dict)  # step → adapter saved at that step


def sft_rows(
    tokens: HfPromptTokenizer, samples: Iterable[FimExample | Mapping[str, Any]], max_new_tokens: int
) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenized rows (``input_ids``, ``completion_mask``) and how many were too long to use."""
    rows, skipped = [], 0
    for sample in samples:
        example = FimExample.coerce(sample)
        target = completion_ids(tokens, example)
        if len(target) > max_new_tokens:
            skipped += 1
            continue
        prompt = fim_prompt_ids(tokens, example, max_new_tokens)
        rows.append({"input_ids": prompt + target, "completion_mask": [0] * len(prompt) + [1] * len(target)})
    return rows, skipped


def run_sft(
    base_dir: Path,
    samples: Iterable[FimExample | Mapping[str, Any]],
    out_dir: Path,
    config: SftConfig | None = None,
    *,
    adapter_dir: Path | None = None,
    metrics_path: Path | None = None,
    console: Console | None = None,
) -> SftReport:
    """Train a LoRA adapter on ``base_dir`` (continuing ``adapter_dir`` if given) into ``out_dir/adapter``.

    Metrics are appended to ``metrics_path`` (default ``out_dir/metrics.jsonl``): point SFT and GRPO
    at one file for one JSONL per cycle; each row names its ``phase``.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    config = config or SftConfig()
    tokens = HfPromptTokenizer.load(base_dir, config.max_context)
    rows, skipped = sft_rows(tokens, samples, config.max_new_tokens)
    if not rows:
        raise TrainingDataError(
            f"no usable SFT rows ({skipped} had kept text over max_new_tokens={config.max_new_tokens})"
        )
    device = resolve_device(config.device)
    metrics = StepMetrics.for_run(out_dir, metrics_path, config.tensorboard, "sft", console)
    budget = TimeBudget(config.max_minutes * 60 if config.max_minutes else None)
    snapshots = Snapshots(out_dir / "snapshots", config.snapshot_every)
    trainer = SFTTrainer(
        model=with_adapter(load_causal_lm(base_dir, device), adapter_dir),
        args=_trl_config(config, out_dir, device),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokens.tokenizer,
        peft_config=config.lora.peft_config() if adapter_dir is None else None,
        callbacks=[metrics, budget, snapshots],
    )
    seconds = train_and_save(trainer, out_dir / "adapter")
    steps = trainer.state.global_step
    losses = [r["loss"] for r in metrics.rows if isinstance(r.get("loss"), float)]
    return SftReport(
        adapter_dir=out_dir / "adapter",
        metrics_path=metrics.jsonl_path,
        device=device,
        steps=steps,
        rows=len(rows),
        skipped_rows=skipped,
        seconds=round(seconds, 3),
        seconds_per_step=round(seconds / max(1, steps), 4),
        first_loss=losses[0] if losses else None,
        final_loss=last_value(metrics.rows, "loss"),
        stopped_early=budget.stopped_early,
        snapshots={step: str(path) for step, path in snapshots.saved.items()},
    )


def _trl_config(config: SftConfig, out_dir: Path, device: Literal["cpu", "cuda"]) -> Any:
    from trl import SFTConfig as TrlSftConfig

    return TrlSftConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_process(config.global_batch),
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        completion_only_loss=True,
        max_length=None,  # rows already fit the context: build_prompt budgeted them
        activation_checkpointing=config.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        **precision_args(device),
    )


def completion_loss(
    model_dir: Path,
    samples: Iterable[FimExample | Mapping[str, Any]],
    adapter_dir: Path | None = None,
    max_new_tokens: int = 64,
    max_context: int | None = 2048,
) -> float | None:
    """Mean loss per token of the kept texts (and EOS) after their serving prompts; lower is better.

    None when no sample fits ``max_new_tokens``. The adapter, if any, is merged first.
    """
    import torch

    from editloop.models.export import load_hf

    tokens = HfPromptTokenizer.load(model_dir, max_context)
    rows, _ = sft_rows(tokens, samples, max_new_tokens)
    if not rows:
        return None
    model, _ = load_hf(model_dir, adapter_dir)
    device = resolve_device("auto")
    torch.nn.Module.to(model, device)  # transformers' typing of PreTrainedModel.to drops self
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=device)
            mask = torch.tensor([row["completion_mask"]], device=device)
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, labels=labels).loss
            # The model shifts labels by one: every completion token is predicted once.
            n = int(mask.sum())
            total, count = total + float(loss) * n, count + n
    return total / count
