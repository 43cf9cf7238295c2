"""Training stages across processes: SFT and GRPO under ``accelerate launch`` (DDP), one rank reporting.

With one process a stage runs in the caller's process. With more, the caller writes the stage's job
(rows, config, rewards) into its run directory and starts ``accelerate launch`` on this module: every
rank trains on its share of each step's batch (gloo on CPU, NCCL on GPUs, or DeepSpeed ZeRO / FSDP
when an accelerate config file says so, see ``docker/``), rank 0 saves the adapter and writes the
report. The caller stays the only owner of the cycle's state, export and publish: a rank that dies
takes the launch down (torchrun stops the others), the stage raises :class:`LaunchError`, and the
cycle fails with the registry untouched.

The global batch is split across the processes, not multiplied by them, so a stage trains the same
steps on the same rows whatever the process count (``tests/test_distributed.py`` checks the loss).

>>> launch = Launch(processes=2)
>>> report = run_sft_stage(launch, base_dir, rows, run_dir / "sft", SftConfig(max_steps=20))  # doctest: +SKIP
"""

import contextlib
import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editloop.errors import EditloopError
from editloop.settings import Settings

JOB, REPORT, LOG = "job.pkl", "report.pkl", "launch.log"
# What a stage may take beyond its own time budget: process start, model load, saving.
STARTUP_SLACK_S = 600


class LaunchError(EditloopError):
    code = "training_processes_failed"


@dataclass(frozen=True)
class Launch:
    processes: int = field(default=1, metadata={"help": "Training processes (DDP ranks) per stage."})
    config_file: Path | None = field(
        default=None,
        metadata={"help": "accelerate config for multi-GPU boxes (DeepSpeed ZeRO, FSDP); see docker/."},
    )
    threads: int = field(default=0, metadata={"help": "CPU threads per process; 0: the cores split evenly."})


def launch_for(settings: Settings) -> Launch:
    """How the settings say training stages run: ``retrain_processes`` (0: one per CUDA GPU)."""
    processes = settings.retrain_processes
    if processes == 0:
        import torch

        processes = max(1, torch.cuda.device_count())
    return Launch(processes, settings.retrain_accelerate_config, settings.torch_threads)


def run_sft_stage(
    launch: Launch,
    base_dir: Path,
    samples: Iterable[Any],
    out_dir: Path,
    config: Any,
    *,
    adapter_dir: Path | None = None,
    console: Any = None,
) -> Any:
    """:func:`editloop.training.sft.run_sft`, in ``launch.processes`` processes."""
    from editloop.training.sft import run_sft

    if launch.processes <= 1:
        return run_sft(base_dir, samples, out_dir, config, adapter_dir=adapter_dir, console=console)
    job = {"stage": "sft", "args": (base_dir, list(samples), out_dir), "adapter_dir": adapter_dir}
    return _run_launched(launch, job, config, out_dir)


def run_grpo_stage(
    launch: Launch,
    model_dir: Path,
    samples: Iterable[Any],
    rewards: Sequence[Any],
    out_dir: Path,
    config: Any,
    *,
    adapter_dir: Path | None = None,
) -> Any:
    """:func:`editloop.training.grpo.run_grpo`, in ``launch.processes`` processes (rewards are pickled)."""
    from editloop.training.grpo import run_grpo

    if launch.processes <= 1:
        return run_grpo(model_dir, samples, rewards, out_dir, config, adapter_dir=adapter_dir)
    job = {
        "stage": "grpo",
        "args": (model_dir, list(samples), list(rewards), out_dir),
        "adapter_dir": adapter_dir,
    }
    return _run_launched(launch, job, config, out_dir)


def _run_launched(launch: Launch, job: dict, config: Any, out_dir: Path) -> Any:
    job_dir = out_dir / "launch"
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / REPORT).unlink(missing_ok=True)
    config = dataclasses.replace(config, processes=launch.processes)
    config.per_process(config.global_batch)  # refuse an uneven split here, not in every rank
    with (job_dir / JOB).open("wb") as f:
        pickle.dump({**job, "config": config}, f)
    minutes = getattr(config, "max_minutes", None) or 60.0
    run_job(job_dir, launch, timeout_s=minutes * 60 * 2 + STARTUP_SLACK_S)
    report = job_dir / REPORT
    if not report.is_file():
        raise LaunchError(f"the training processes exited without a report; see {job_dir / LOG}")
    with report.open("rb") as f:
        return pickle.load(f)


def accelerate_command(launch: Launch, job_dir: Path, port: int) -> list[str]:
    """``accelerate launch`` of this module on ``job_dir``'s job."""
    threads = launch.threads or max(1, (os.cpu_count() or 1) // launch.processes)
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.config_file is not None:
        command += ["--config_file", str(launch.config_file)]
    else:
        # The multi-process launcher (torchrun). Without CUDA, ranks that train on the CPU
        # (TrainingArguments.use_cpu) join over gloo: the same code path a GPU box runs with NCCL.
        command += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [
        "--num_processes",
        str(launch.processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(port),
        "--num_cpu_threads_per_process",
        str(threads),
    ]
    return [*command, "-m", "editloop.training.launch", str(job_dir)]


def run_job(job_dir: Path, launch: Launch, timeout_s: float) -> None:
    """Run the launch to its end; raise :class:`LaunchError` (and stop every rank) if it fails."""
    command = accelerate_command(launch, job_dir, _free_port())
    with (job_dir / LOG).open("wb") as log:
        # A session of its own: on timeout or interruption every rank goes down with the launcher.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
        except BaseException:
            _stop(process)
            raise
    if code != 0:
        raise LaunchError(
            f"{launch.processes} training processes exited with status {code}: {_tail(job_dir / LOG)} "
            f"(full log: {job_dir / LOG})"
        )


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def worker(job_dir: Path) -> None:
    """One rank: train the job's stage; rank 0 writes the report."""
    from transformers import set_seed

    (job_dir / f"rank-{_rank()}.pid").write_text(str(os.getpid()))
    with (job_dir / JOB).open("rb") as f:
        job: Mapping[str, Any] = pickle.load(f)
    config = job["config"]
    # Every rank starts from the same adapter initialisation and data order as one process would.
    set_seed(config.seed)
    if job["stage"] == "sft":
        from editloop.training.sft import run_sft

        base_dir, rows, out_dir = job["args"]
        report: object = run_sft(base_dir, rows, out_dir, config, adapter_dir=job["adapter_dir"])
    else:
        from editloop.training.grpo import run_grpo

        base_dir, rows, rewards, out_dir = job["args"]
        report = run_grpo(base_dir, rows, rewards, out_dir, config, adapter_dir=job["adapter_dir"])
    if _rank() == 0:
        tmp = job_dir / f"{REPORT}.tmp"
        with tmp.open("wb") as f:
            pickle.dump(report, f)
        os.replace(tmp, job_dir / REPORT)
    _leave_process_group()


def _leave_process_group() -> None:
    """Destroy the process group before the interpreter exits, after a stage that succeeded.

    Left to interpreter teardown, gloo's worker threads can outlive what they hold and the rank dies
    with SIGABRT ("terminate called without an active exception") after its work is done, failing
    the launch (seen on CPU, two ranks). Not after a failure: ranks still in a collective would hang.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
