"""Training across processes: SFT under `accelerate launch` with 2 ranks (gloo on the CPU) trains what
one process trains on the same global batch."""

from pathlib import Path

import pytest
from transformers import set_seed

from editloop.errors import TrainingDataError
from editloop.training.cycle import general_rows
from editloop.training.launch import Launch, accelerate_command, run_sft_stage
from editloop.training.metrics import read_metrics
from editloop.training.sft import SftConfig, completion_loss, run_sft

CONFIG = SftConfig(
    max_steps=4, batch_size=4, learning_rate=5e-3, device="cpu", tensorboard=False, seed=0, max_minutes=None
)


def _losses(metrics: Path) -> list[float]:
    return [row["loss"] for row in read_metrics(metrics) if "loss" in row]


def test_two_processes_train_what_one_does_on_the_same_global_batch(
    tiny_hf_dir: Path, tmp_path: Path
) -> None:
    rows = general_rows(24, seed=0)
    heldout = general_rows(12, seed=1)
    set_seed(CONFIG.seed)  # what each launched rank does first
    one = run_sft(tiny_hf_dir, rows, tmp_path / "one", CONFIG)
    two = run_sft_stage(Launch(processes=2, threads=1), tiny_hf_dir, rows, tmp_path / "two", CONFIG)
    assert two.steps == one.steps == CONFIG.max_steps
    assert (two.adapter_dir / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "two" / "launch").glob("rank-*.pid")) == [
        "rank-0.pid",
        "rank-1.pid",
    ]
    # Each step's loss, and the trained adapters' held-out loss, agree to float rounding: gloo sums the
    # two halves' gradients in another order than one process does.
    for a, b in zip(_losses(one.metrics_path), _losses(two.metrics_path), strict=True):
        assert b == pytest.approx(a, rel=1e-3)
    loss_one = completion_loss(tiny_hf_dir, heldout, one.adapter_dir)
    loss_two = completion_loss(tiny_hf_dir, heldout, two.adapter_dir)
    assert loss_one is not None and loss_two == pytest.approx(loss_one, rel=1e-3)
    assert len(read_metrics(two.metrics_path)) == len(read_metrics(one.metrics_path))  # rank 0 logs alone


def test_a_batch_that_does_not_split_across_the_processes_is_refused(
    tiny_hf_dir: Path, tmp_path: Path
) -> None:
    import dataclasses

    config = dataclasses.replace(CONFIG, batch_size=3)
    with pytest.raises(TrainingDataError, match="does not split across 2 training processes"):
        run_sft_stage(Launch(processes=2, threads=1), tiny_hf_dir, general_rows(8, seed=0), tmp_path, config)


@pytest.mark.parametrize(
    "name", ["accelerate.yaml", "accelerate-zero2.yaml", "accelerate-zero3.yaml", "accelerate-fsdp.yaml"]
)
def test_the_multi_gpu_configs_load_and_reach_accelerate_launch(name: str, tmp_path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = Path(__file__).resolve().parents[1] / "docker" / name
    config = load_config_from_file(str(path))
    assert config.mixed_precision == "bf16" and not config.use_cpu
    command = accelerate_command(Launch(processes=8, config_file=path), tmp_path, port=29511)
    args = launch_command_parser().parse_args(command[3:])  # after `python -m accelerate.commands.launch`
    assert (args.config_file, args.num_processes, args.main_process_port) == (str(path), 8, 29511)
    assert args.training_script == "editloop.training.launch" and args.module
