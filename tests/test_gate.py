"""The gate's statistics and decision, and a real gate run on the tiny model."""

from editloop.completion.served import load_served
from editloop.models.llama import LlamaBackend
from editloop.training.dataset import Sample
from editloop.training.gate import (
    GateConfig,
    _decide,
    engine_for,
    feedback_scores,
    paired_bootstrap,
    run_gate,
)


def test_paired_bootstrap_separates_signal_from_noise() -> None:
    current = [0.2, 0.4, 0.3, 0.5, 0.1] * 20
    better = [x + 0.1 for x in current]
    clear = paired_bootstrap(current, better, 500, 0.95, 0)
    assert clear["delta"] == 0.1 and clear["low"] > 0.09
    noisy = paired_bootstrap(
        current, [x + (0.3 if i % 2 else -0.3) for i, x in enumerate(current)], 500, 0.95, 0
    )
    assert noisy["low"] < 0 < noisy["high"]


def test_decision_needs_feedback_gain_and_no_general_drop() -> None:
    config = GateConfig(general_tolerance=0.02)
    gain = {"edit_similarity": {"delta": 0.1, "low": 0.05, "high": 0.15}}
    flat = {"edit_similarity": {"delta": 0.01, "low": -0.02, "high": 0.04}}
    ok_general = {"fim_es": {"current": 0.30, "candidate": 0.29}}
    forgot = {"fim_es": {"current": 0.30, "candidate": 0.20}}
    assert _decide(gain, ok_general, config, 50) == []
    assert "within noise" in _decide(flat, ok_general, config, 50)[0]
    assert "dropped" in _decide(gain, forgot, config, 50)[0]
    assert "no held-out" in _decide(gain, {}, config, 0)[0]


def test_identical_models_do_not_pass(tiny_version) -> None:
    backend = LlamaBackend.from_version(tiny_version, n_threads=1)
    served = load_served(tiny_version, backend)
    try:
        engine = engine_for(served)
        contexts = [
            ("def add(a, b):\n    return ", "\n"),
            ("import os\n\nx = ", "\n"),
            ("for i in ", ":\n    pass\n"),
        ]
        samples = []
        for i, (prefix, suffix) in enumerate(contexts * 4):
            sample = Sample(prefix, suffix, "", "python", f"f{i}.py", "written", f"c{i}", float(i))
            own = engine.complete(engine_request(sample)).choices
            samples.append(
                Sample(
                    prefix, suffix, own[0].text if own else "", "python", f"f{i}.py", "written", f"c{i}", i
                )
            )
        scores = feedback_scores(engine, served, samples, None)
        assert sum(scores["exact_match"]) == len(samples)  # greedy decoding is deterministic
        report = run_gate(served, served, samples, GateConfig(bootstrap=200))
        assert not report.passed and "within noise" in report.reasons[0]
        assert report.feedback["edit_similarity"]["delta"] == 0.0
    finally:
        backend.close()


def engine_request(sample: Sample):
    from editloop.completion.types import CompletionRequest

    return CompletionRequest(
        prefix=sample.prefix, suffix=sample.suffix, language="python", filepath=sample.filepath, n=1
    )
