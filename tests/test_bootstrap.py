"""The starter model: trained from real code, deterministic, resumable, and served by llama.cpp."""

import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from llama_cpp import Llama
from tokenizers import Tokenizer

from editloop.corpus import load_corpus
from editloop.models.registry import ModelVersion, Registry
from editloop.starter.trainer import LINE_WARMUP_STEPS, SIZES, WARMUP_STEPS, StarterTrainer

TINY = SIZES["tiny"]
LINE_STEPS = 20  # tiny pre-trains only by default; these tests give it the line-completion phase


def test_tiny_bootstrap_publishes_an_active_verified_version(
    tiny_version: ModelVersion, tiny_registry: Registry
) -> None:
    current = tiny_registry.load_verified_current()
    assert current.name == tiny_version.name
    manifest = current.manifest
    assert manifest.kind == "starter" and manifest.arch == "llama"
    assert set(manifest.gguf) == {"f16", "q8_0", "q4_k_m"}
    # 64-wide rows cannot take K-quants: llama.cpp stores every matrix in a fallback type instead.
    assert set(manifest.checks["quant_fallbacks"]["q4_k_m"]) <= {"q5_0", "q8_0", "f16"}
    train = manifest.metrics["train"]
    assert train["steps"] == TINY.steps and train["line_steps"] == TINY.line_steps and train["tokens"] > 0
    # Learned something: held-out loss well below the uniform guess over the vocabulary.
    assert train["val_loss"] < math.log(TINY.vocab_size) - 0.5
    heldout = manifest.metrics["heldout_fim"]  # through the serving engine, as `eval fim` scores it
    assert heldout["tasks"] == {"single-line": TINY.eval_tasks, "multi-line": TINY.eval_tasks}
    assert heldout["empty"]["single-line"]["exact_match"] == 0.0
    assert 0.0 < heldout["repeat_previous_line"]["single-line"]["edit_similarity"] < 1.0
    assert f"--steps {TINY.steps}" in manifest.training_data["reproduce"]


def test_q8_gguf_loads_and_completes_in_llama_cpp(tiny_version: ModelVersion) -> None:
    llm = Llama(str(tiny_version.gguf_path("q8_0")), n_ctx=256, verbose=False)
    try:
        prompt = tiny_version.manifest.fim.format("def add(a, b):\n    ", "\n")
        out = llm.create_completion(prompt, max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
        assert out["usage"]["prompt_tokens"] > 3  # special tokens parsed, not spelled out byte by byte
    finally:
        llm.close()


@pytest.fixture(scope="module")
def small_corpus():
    return load_corpus(["stdlib"], {"python"}, max_bytes=300_000, heldout_fraction=0.2)


def _trainer(corpus, work_dir, steps: int = 24, **size: object) -> StarterTrainer:
    tokenizer = Tokenizer.from_file(str(work_dir.parent / "tok.json"))
    size = dataclasses.replace(TINY, **{"steps": steps, "line_steps": LINE_STEPS} | size)
    return StarterTrainer(size, tokenizer, corpus.train, corpus.heldout, work_dir, seed=7)


@pytest.mark.parametrize(
    ("stop_at", "size"),
    [(10, {}), (24 + 5, {}), (24 + 5, {"muon_lr": 0.02, "pack": True})],
    ids=["pre-training", "line-completion", "line-completion-muon-packed"],
)
def test_interrupted_run_resumes_to_identical_weights(
    small_corpus, tiny_hf_dir, tmp_path, stop_at, size
) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    straight = _trainer(small_corpus, tmp_path / "straight", **size)
    straight.run()

    def interrupt(step: int, *_: object) -> None:
        if step == stop_at:
            raise KeyboardInterrupt

    first = _trainer(small_corpus, tmp_path / "resumed", **size)
    with pytest.raises(KeyboardInterrupt):
        first.run(on_step=interrupt)
    resumed = _trainer(small_corpus, tmp_path / "resumed", **size)
    result = resumed.run()
    assert (result.steps, result.line_steps) == (24, LINE_STEPS)
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def _weights_equal(a: StarterTrainer, b: StarterTrainer) -> bool:
    pairs = zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_a_failing_compile_falls_back_to_the_eager_model(small_corpus, tiny_hf_dir, tmp_path, caplog) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    eager = _trainer(small_corpus, tmp_path / "eager", steps=6, line_steps=0)
    eager.run()
    compiled = _trainer(small_corpus, tmp_path / "compiled", steps=6, line_steps=0, compile=True)

    def broken(**_: torch.Tensor) -> None:
        # What inductor raises on a machine without a C++ compiler; a real one can't be made to.
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    compiled.compiled = broken
    compiled.run()
    assert compiled.compiled is None and "training eagerly" in caplog.text
    assert _weights_equal(eager, compiled)


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor compiles C++ kernels with g++")
def test_compiled_training_follows_the_eager_run_and_is_deterministic(
    small_corpus, tiny_hf_dir, tmp_path
) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    losses: dict[str, list[float]] = {"eager": [], "compiled": [], "compiled-again": []}
    trainers = {}
    for name in losses:
        trainer = _trainer(small_corpus, tmp_path / name, steps=12, line_steps=0, compile=name != "eager")
        trainer.run(on_step=lambda _step, _total, loss, _tps, name=name: losses[name].append(loss))
        if name != "eager":
            assert trainer.compiled is not None  # it really ran compiled, no silent fallback
        trainers[name] = trainer
    assert _weights_equal(trainers["compiled"], trainers["compiled-again"])  # a seed still fixes the run
    # Same data and initial weights; fused kernels round differently, so close rather than equal.
    assert losses["eager"][0] == pytest.approx(losses["compiled"][0], abs=1e-2)
    assert losses["eager"][-1] == pytest.approx(losses["compiled"][-1], abs=5e-2)
    assert losses["compiled"][-1] < losses["compiled"][0] - 0.2  # and it learns (warmup is 20 steps)


def test_time_budget_fixes_the_step_count_after_calibration(small_corpus, tiny_hf_dir, tmp_path) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    trainer = _trainer(small_corpus, tmp_path / "timed", steps=None)  # type: ignore[arg-type]
    result = trainer.run(minutes=0.02)
    assert trainer.total_steps is not None and trainer.total_steps >= WARMUP_STEPS + 1
    assert result.steps == trainer.total_steps


def test_line_completion_phase_has_its_own_warmup_and_decay(small_corpus, tiny_hf_dir, tmp_path) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    trainer = _trainer(small_corpus, tmp_path / "schedule", steps=100)
    assert trainer.line_step(99) is None and trainer.line_step(100) == 0
    phase = [trainer.lr_at(100 + k) for k in range(LINE_STEPS)]
    assert trainer.lr_at(99) == pytest.approx(0.1 * TINY.lr, rel=0.01)  # pre-training ends decayed
    assert phase[0] < phase[LINE_WARMUP_STEPS // 2] < phase[LINE_WARMUP_STEPS - 1]  # warms up again
    assert max(phase) > max(0.5 * TINY.line_lr, trainer.lr_at(99))
    assert phase[-1] < 0.05 * TINY.line_lr


def test_time_budget_leaves_room_for_the_line_completion_phase(small_corpus, tiny_hf_dir, tmp_path) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    with_phase = _trainer(small_corpus, tmp_path / "a", steps=None)  # type: ignore[arg-type]
    with_phase.step, with_phase.seconds = 5, 5.0  # one second a pre-training step
    per_line_step = TINY.line_batch / TINY.batch_size
    assert with_phase._calibrated_steps(600.0, 1.0) == 1 + int(599 - LINE_STEPS * per_line_step)
    # A first step that compiled for 21 s is paid for, and not taken for what a step costs.
    with_phase.seconds = 25.0
    assert with_phase._calibrated_steps(600.0, 21.0) == 1 + int(579 - LINE_STEPS * per_line_step)


def test_bootstrap_cli_runs_the_line_completion_phase_and_says_how_to_reproduce(tmp_path) -> None:
    args = ["bootstrap-model", "--size", "tiny", "--steps", "30", "--line-steps", "10", "--no-activate"]
    result = subprocess.run(
        [sys.executable, "-m", "editloop", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "EDITLOOP_HOME": str(tmp_path), "EDITLOOP_TORCH_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "30 steps + 10 line-completion steps" in " ".join(result.stderr.split())
    # Without a terminal the bar leaves a line every 5 %, with what is left of the run.
    progress = re.findall(r"step (\d+)/40 loss [\d.]+ \d+ tok/s, (\d+|\?) s left", result.stderr)
    assert progress[-1] == ("40", "0") and len(progress) == 20
    manifest = Registry(tmp_path / "models").verify(result.stdout.strip()).manifest
    assert (manifest.metrics["train"]["steps"], manifest.metrics["train"]["line_steps"]) == (30, 10)
    assert "--steps 30 --line-steps 10" in manifest.training_data["reproduce"]
