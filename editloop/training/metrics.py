"""Per-step training metrics: a JSONL file per run, TensorBoard scalars, and a rich progress bar.

One :class:`StepMetrics` callback serves SFT and GRPO alike: whatever the trainer logs (loss,
reward, reward_std, rewards/<fn>/mean, kl, completions/mean_length, completions/clipped_ratio,
frac_reward_zero_std, ...) lands as one JSON object per logged step::

    {"phase": "grpo", "step": 3, "time_s": 4.1, "loss": 0.0, "reward": 0.31, "reward_std": 0.12, ...}

>>> callback = StepMetrics(out_dir / "metrics.jsonl", out_dir / "tensorboard", phase="sft")  # doctest: +SKIP
>>> trainer = SFTTrainer(..., callbacks=[callback])  # doctest: +SKIP
"""

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

# Shown next to the bar when the trainer logs them; everything logged goes to the files.
BAR_FIELDS = ("loss", "reward", "reward_std")


class StepMetrics(TrainerCallback):
    """Writes each ``on_log`` to JSONL and TensorBoard, and drives one progress bar."""

    def __init__(
        self, jsonl_path: Path, tensorboard_dir: Path | None, phase: str, console: Console | None = None
    ) -> None:
        self.jsonl_path = jsonl_path
        self.tensorboard_dir = tensorboard_dir
        self.phase = phase
        self.console = console or Console(stderr=True)
        self.rows: list[dict[str, Any]] = []
        self._writer: Any = None
        self._progress: Progress | None = None
        self._bar: TaskID | None = None
        self._started = 0.0

    @classmethod
    def for_run(
        cls, out_dir: Path, jsonl_path: Path | None, tensorboard: bool, phase: str, console: Console | None
    ) -> "StepMetrics":
        """Metrics of a run in ``out_dir``: ``metrics.jsonl`` there unless told, and ``tensorboard/``."""
        return cls(
            jsonl_path or out_dir / "metrics.jsonl",
            out_dir / "tensorboard" if tensorboard else None,
            phase,
            console,
        )

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._started = time.perf_counter()
        if not state.is_world_process_zero:
            return  # under `accelerate launch` every rank trains; the first one reports
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if self.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        self._progress = Progress(
            TextColumn(f"[bold]{self.phase}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[summary]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._progress.start()
        self._bar = self._progress.add_task(self.phase, total=state.max_steps or None, summary="")

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
        row = {"phase": self.phase, "step": state.global_step, "time_s": self._elapsed(), **numbers}
        self.rows.append(row)
        with self.jsonl_path.open("a") as out:
            out.write(json.dumps(_finite(row)) + "\n")
        if self._writer is not None:
            for key, value in numbers.items():
                if math.isfinite(value):
                    self._writer.add_scalar(f"{self.phase}/{key}", value, state.global_step)
        self._update_bar(state, numbers)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._progress is not None and self._bar is not None:
            self._progress.update(self._bar, completed=state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._writer is not None:
            self._writer.close()

    def _update_bar(self, state: TrainerState, numbers: dict[str, float]) -> None:
        if self._progress is None or self._bar is None:
            return
        summary = " ".join(f"{k} {numbers[k]:.3f}" for k in BAR_FIELDS if k in numbers)
        self._progress.update(self._bar, completed=state.global_step, summary=summary)
        total = state.max_steps
        if not self.console.is_terminal and total and state.global_step % max(1, total // 10) == 0:
            # Logs and CI have no live bar: leave a line every 10% instead.
            self.console.print(f"{self.phase} step {state.global_step}/{total} {summary}")

    def _elapsed(self) -> float:
        return round(time.perf_counter() - self._started, 3)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a metric that is undefined this step is written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics JSONL file, in order."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
