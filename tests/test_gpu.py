"""The GPU path on the Qwen2.5-Coder-0.5B shape: bf16 SFT + GRPO (vLLM colocated when installed), a whole
cycle with publish, and the remote backend against `vllm serve`. Run by scripts/gpu-check.sh on a CUDA box.

Deselected by default (marker ``gpu``); each test also skips itself where torch sees no CUDA GPU.
"""

import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from editloop.models.backend import GenerationParams
from editloop.models.synth import publish_synthetic, synth_checkpoint
from editloop.settings import load_settings
from editloop.training.cycle import CycleConfig, general_rows
from editloop.training.gate import GateConfig
from editloop.training.runtime import vllm_available

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
SHAPE = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def qwen_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_checkpoint(SHAPE, tmp_path_factory.mktemp("qwen05") / "hf")


def test_bf16_sft_then_grpo_on_the_qwen_shape(qwen_hf: Path, tmp_path: Path) -> None:
    from editloop.training.grpo import GrpoConfig, run_grpo
    from editloop.training.rewards.combined import CombinedReward
    from editloop.training.sft import SftConfig, run_sft

    rows = general_rows(64, seed=0)
    sft = run_sft(qwen_hf, rows, tmp_path / "sft", SftConfig(max_steps=20, learning_rate=1e-3, device="cuda"))
    assert sft.device == "cuda" and sft.steps == 20
    assert sft.first_loss is not None and sft.final_loss is not None and sft.final_loss < sft.first_loss
    grpo = run_grpo(
        qwen_hf,
        rows[:8],
        [CombinedReward(execution=False)],
        tmp_path / "grpo",
        GrpoConfig(max_steps=2, num_generations=4, max_new_tokens=32, device="cuda"),
        adapter_dir=sft.adapter_dir,
    )
    assert grpo.steps == 2 and grpo.used_vllm == vllm_available()  # TRL's colocated vLLM when installed
    assert grpo.final_reward is not None


def test_a_whole_cycle_trains_on_the_gpu_and_publishes(tmp_path: Path) -> None:
    from editloop.eval.replay import ReplayConfig
    from editloop.eval.replay_cli import load_tasks, run_replay
    from editloop.feedback.log import open_feedback
    from editloop.models.registry import Registry
    from editloop.training.worker import Trainer
    from tests.server_fixtures import USER, running_server

    settings = load_settings(home=tmp_path / "home")
    base = publish_synthetic(settings, SHAPE, activate=True, threads=8)
    tasks = load_tasks(Path(sysconfig.get_paths()["stdlib"]) / "json", None, None, "all", 0.7)
    config = CycleConfig(
        min_samples=10,
        sft_steps=40,
        grpo_steps=2,
        general_mix=0.0,
        general_checks=False,
        device="cuda",
        force=True,  # random weights: the point is the path, the gate's figures are reported
        gate=GateConfig(bootstrap=200, max_samples=40),
    )
    with running_server(settings.home, abstain_threshold=0.0, model_threads=8) as (url, served, _app):
        run_replay(served, tasks, ReplayConfig(seed=0, max_requests_per_file=20), server=url, token=USER)
        with open_feedback(served) as feedback:
            state = Trainer.from_settings(served, feedback.store).run_cycle("gpu-check", config=config)
    assert state.status == "published", state.message
    assert state.reports["sft"]["device"] == "cuda" and state.reports["grpo"]["device"] == "cuda"
    version = Registry(settings.models_dir).get(state.version)
    assert version.manifest.parent == base.name and version.manifest.synthetic
    assert version.manifest.checks["greedy"]["token_agreement"]["f16"] == 1.0


@pytest.mark.skipif(not shutil.which("vllm"), reason="vLLM is not installed")
def test_the_remote_backend_completes_through_vllm_serve(qwen_hf: Path, tmp_path: Path) -> None:
    from editloop.completion.types import CompletionRequest
    from editloop.eval.engine import engine_for
    from editloop.models.fim import QWEN
    from editloop.models.remote import RemoteBackend
    from tests.test_remote_backend import free_port

    port = free_port()
    log = (tmp_path / "vllm.log").open("wb")
    command = ["vllm", "serve", str(qwen_hf), "--port", str(port), "--max-model-len", "4096"]
    command += ["--gpu-memory-utilization", "0.3", "--max-logprobs", "20"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process)
        backend = RemoteBackend(url, str(qwen_hf), qwen_hf / "tokenizer.json", QWEN, "vllm", n_ctx=4096)
        try:
            # vLLM's /v1/completions answers 400 to a `suffix`: this passes only because the
            # backend sends the FIM prompt it built itself.
            request = CompletionRequest(prefix="def add(a, b):\n    ", suffix="\n", n=3, max_tokens=16)
            result = engine_for(backend).complete(request)
            generated = backend.generate(backend.tokenize("x = 1\n"), GenerationParams(n=2, max_tokens=8))
        finally:
            backend.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
    assert result.model_version == "vllm" and result.candidates
    assert all(len(g.token_ids) == len(g.logprobs) > 0 for g in generated.generations)


def _wait_for(url: str, process: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vllm serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"vllm serve did not answer within {timeout_s} s", pytrace=False)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "gpu", "-q"]))
