"""GRPO on FIM prompts: TRL's GRPOTrainer with a PEFT LoRA adapter and editloop's rewards.

Each prompt is the one the server would build for the row's cursor; the model samples a group of
completions per prompt, the rewards (:mod:`editloop.training.rewards`) score them against the
row's columns (``prefix, suffix, reference, language, filepath, tests``), and the policy moves
toward the completions that beat their group's mean. A group whose rewards are all equal teaches
nothing (``frac_reward_zero_std``): sampling temperature must leave the group diverse.

On a GPU with vLLM installed, vLLM generates the samples (colocated); everywhere else
``model.generate`` does, on CPU in fp32.

>>> report = run_grpo(hf_dir, rows, [CombinedReward()], run_dir / "grpo", GrpoConfig(max_steps=10),
...                   adapter_dir=run_dir / "sft" / "adapter")  # doctest: +SKIP
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from editloop.errors import TrainingDataError
from editloop.training.metrics import StepMetrics
from editloop.training.prompts import FimExample, HfPromptTokenizer, fim_prompt_ids
from editloop.training.runtime import (
    AdapterRunConfig,
    RunReport,
    TimeBudget,
    last_value,
    load_causal_lm,
    precision_args,
    resolve_device,
    train_and_save,
    vllm_available,
    with_adapter,
)

RewardFunc = Callable[..., list[float | None]]


@dataclass
class GrpoConfig(AdapterRunConfig):
    max_steps: int = field(default=20, metadata={"help": "Optimizer steps (fewer if max_minutes runs out)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate of the adapter."})
    prompts_per_step: int = field(default=2, metadata={"help": "Distinct prompts in one optimizer step."})
    num_generations: int = field(
        default=8, metadata={"help": "Completions sampled per prompt: the group rewards are compared in."}
    )
    max_new_tokens: int = field(
        default=64,
        metadata={"help": "Longest completion; the prompt leaves this much room, as serving does."},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature: too low and a group's completions are all alike."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling cut-off."})
    beta: float = field(
        default=0.04,
        metadata={"help": "KL penalty toward the starting model (guards against forgetting); >0 logs kl."},
    )
    loss_type: str = field(default="dapo", metadata={"help": "TRL GRPO loss: dapo, grpo, dr_grpo, bnpo."})
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per reward function (0 logs a reward without using it)."}
    )
    use_vllm: bool | None = field(
        default=None, metadata={"help": "Generate with vLLM; None: when on a GPU and vLLM is installed."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for prompt order and sampling."})

    @property
    def global_batch(self) -> int:
        """Completions per optimizer step: every prompt's whole group."""
        return self.prompts_per_step * self.num_generations


@dataclass
class GrpoReport(RunReport):
    adapter_dir: Path
    metrics_path: Path
    device: str
    used_vllm: bool
    steps: int
    prompts: int
    seconds: float
    seconds_per_step: float
    first_reward: float | None
    final_reward: float | None
    mean_reward_std: float | None
    mean_frac_reward_zero_std: float | None  # 1.0: no group ever disagreed, so nothing was learned
    prompt_token_mismatches: int  # prompts TRL re-tokenizes to other ids than serving's
    stopped_early: bool


def grpo_rows(
    tokens: HfPromptTokenizer, samples: Iterable[FimExample | Mapping[str, Any]], max_new_tokens: int
) -> tuple[list[dict[str, Any]], int]:
    """Prompt text plus reward columns per row, and how many prompts do not survive re-tokenizing.

    TRL takes prompts as text and tokenizes them again; decoding serving's ids and encoding them
    back gives the same ids unless the code itself contains a special-token name, or the prefix
    was cut inside a word. The count says how often that happened.
    """
    rows, mismatches = [], 0
    for sample in samples:
        example = FimExample.coerce(sample)
        ids = fim_prompt_ids(tokens, example, max_new_tokens)
        text = tokens.tokenizer.decode(ids, skip_special_tokens=False)
        mismatches += tokens.tokenizer(text, add_special_tokens=False)["input_ids"] != ids
        rows.append({"prompt": text, **example.columns()})
    return rows, mismatches


def run_grpo(
    model_dir: Path,
    samples: Iterable[FimExample | Mapping[str, Any]],
    rewards: Sequence[RewardFunc],
    out_dir: Path,
    config: GrpoConfig | None = None,
    *,
    adapter_dir: Path | None = None,
    metrics_path: Path | None = None,
    console: Console | None = None,
) -> GrpoReport:
    """Train a LoRA adapter with GRPO into ``out_dir/adapter``; ``adapter_dir`` (e.g. SFT's) is continued.

    With ``beta`` > 0 the KL term anchors the policy to where GRPO starts: the model with
    ``adapter_dir`` as it was (TRL keeps a frozen copy named "ref"), else the base model.
    """
    from datasets import Dataset
    from trl import GRPOTrainer

    config = config or GrpoConfig()
    if not rewards:
        raise TrainingDataError("GRPO needs at least one reward function")
    tokens = HfPromptTokenizer.load(model_dir, config.max_context)
    rows, mismatches = grpo_rows(tokens, samples, config.max_new_tokens)
    if not rows:
        raise TrainingDataError("no GRPO prompts: the row list is empty")
    device = resolve_device(config.device)
    use_vllm = device == "cuda" and vllm_available() if config.use_vllm is None else config.use_vllm
    metrics = StepMetrics.for_run(out_dir, metrics_path, config.tensorboard, "grpo", console)
    budget = TimeBudget(config.max_minutes * 60 if config.max_minutes else None)
    trainer = GRPOTrainer(
        model=with_adapter(load_causal_lm(model_dir, device), adapter_dir),
        reward_funcs=list(rewards),
        args=_trl_config(config, out_dir, device, use_vllm),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokens.tokenizer,
        peft_config=config.lora.peft_config() if adapter_dir is None else None,
        callbacks=[metrics, budget],
    )
    seconds = train_and_save(trainer, out_dir / "adapter")
    steps = trainer.state.global_step
    return GrpoReport(
        adapter_dir=out_dir / "adapter",
        metrics_path=metrics.jsonl_path,
        device=device,
        used_vllm=use_vllm,
        steps=steps,
        prompts=len(rows),
        seconds=round(seconds, 3),
        seconds_per_step=round(seconds / max(1, steps), 4),
        prompt_token_mismatches=mismatches,
        stopped_early=budget.stopped_early,
        **_reward_summary(metrics.rows),
    )


def _trl_config(config: GrpoConfig, out_dir: Path, device: Literal["cpu", "cuda"], use_vllm: bool) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=config.per_process(config.global_batch),
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        loss_type=config.loss_type,
        reward_weights=config.reward_weights,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        activation_checkpointing=config.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        **precision_args(device),
    )


def _reward_summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
        return sum(values) / len(values) if values else None

    rewards = [r["reward"] for r in rows if isinstance(r.get("reward"), float)]
    return {
        "first_reward": rewards[0] if rewards else None,
        "final_reward": last_value(rows, "reward"),
        "mean_reward_std": mean("reward_std"),
        "mean_frac_reward_zero_std": mean("frac_reward_zero_std"),
    }
