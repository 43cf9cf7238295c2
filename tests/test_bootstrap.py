"""The starter model: trained from real code, deterministic, resumable, and served by llama.cpp."""

import dataclasses
import math

import pytest
import torch
from llama_cpp import Llama
from tokenizers import Tokenizer

from editloop.models.corpus import load_corpus
from editloop.models.registry import ModelVersion, Registry
from editloop.models.starter import SIZES, WARMUP_STEPS, StarterTrainer

TINY = SIZES["tiny"]


def test_tiny_bootstrap_publishes_an_active_verified_version(
    tiny_version: ModelVersion, tiny_registry: Registry
) -> None:
    current = tiny_registry.load_verified_current()
    assert current.name == tiny_version.name
    manifest = current.manifest
    assert manifest.kind == "starter" and manifest.arch == "llama"
    assert set(manifest.gguf) >= {"f16", "q8_0"}
    assert "q4_k_m" in manifest.checks["skipped_quants"]  # 64-wide rows cannot take K-quants
    train = manifest.metrics["train"]
    assert train["steps"] == TINY.steps and train["tokens"] > 0
    # Learned something: held-out loss well below the uniform guess over the vocabulary.
    assert train["val_loss"] < math.log(TINY.vocab_size) - 0.5
    lines = manifest.metrics["heldout_lines"]
    assert lines["tasks"] == TINY.eval_lines
    assert lines["empty"]["exact_match"] == 0.0
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


def _trainer(corpus, work_dir, steps: int = 24) -> StarterTrainer:
    tokenizer = Tokenizer.from_file(str(work_dir.parent / "tok.json"))
    size = dataclasses.replace(TINY, steps=steps)
    return StarterTrainer(size, tokenizer, corpus.train, corpus.heldout, work_dir, seed=7)


def test_interrupted_run_resumes_to_identical_weights(small_corpus, tiny_hf_dir, tmp_path) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    straight = _trainer(small_corpus, tmp_path / "straight")
    straight.run()

    def interrupt(step: int, *_: object) -> None:
        if step == 10:
            raise KeyboardInterrupt

    first = _trainer(small_corpus, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        first.run(on_step=interrupt)
    resumed = _trainer(small_corpus, tmp_path / "resumed")
    result = resumed.run()
    assert result.steps == 24
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_time_budget_fixes_the_step_count_after_calibration(small_corpus, tiny_hf_dir, tmp_path) -> None:
    Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json")).save(str(tmp_path / "tok.json"))
    trainer = _trainer(small_corpus, tmp_path / "timed", steps=None)  # type: ignore[arg-type]
    result = trainer.run(minutes=0.02)
    assert trainer.total_steps is not None and trainer.total_steps >= WARMUP_STEPS + 1
    assert result.steps == trainer.total_steps
