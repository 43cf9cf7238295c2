"""What GRPO changed in a cycle: the SFT adapter against SFT + GRPO, scored as the gate scores a candidate.

Both are merged into the base, exported to Q8_0 (not verified: neither is published from here) and served
alike (log-prob ranker, the default abstain threshold), then complete the cycle's held-out feedback; the
paired bootstrap says whether GRPO moved each figure beyond noise. The cycle puts the result in its
report under ``grpo.effect``.

>>> effect = grpo_effect(base, sft_adapter, grpo_adapter, heldout, GateConfig(), run / "e")  # doctest: +SKIP
>>> effect["verdict"]  # doctest: +SKIP
'no change beyond noise in held-out edit similarity (+0.0031, interval -0.0120..+0.0190)'
"""

import shutil
from pathlib import Path

from editloop.completion.served import assemble
from editloop.models.export import export_gguf, load_hf
from editloop.models.llama import LlamaBackend
from editloop.training.dataset import Sample
from editloop.training.gate import GateConfig, run_gate


def grpo_effect(
    base_dir: Path,
    sft_adapter: Path,
    grpo_adapter: Path,
    heldout: list[Sample],
    gate: GateConfig,
    work_dir: Path,
    threads: int | None = None,
) -> dict:
    """Held-out feedback figures of the SFT and SFT + GRPO models, and GRPO's difference with its interval."""
    arms = {"sft": sft_adapter, "sft_grpo": grpo_adapter}
    try:
        models = [_served(base_dir, adapter, work_dir / name, threads) for name, adapter in arms.items()]
        try:
            report = run_gate(models[0], models[1], heldout, gate)
        finally:
            for model in models:
                model.close()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    feedback = {
        metric: {"sft": row["current"], "sft_grpo": row["candidate"], "delta": row["delta"], **_interval(row)}
        for metric, row in report.feedback.items()
    }
    return {
        "samples": report.samples,
        "feedback": feedback,
        "verdict": _verdict(feedback.get("edit_similarity")),
    }


def _served(base_dir: Path, adapter: Path, out_dir: Path, threads: int | None):
    model, tokenizer = load_hf(base_dir, adapter)
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = export_gguf(model, tokenizer, out_dir, ("f16", "q8_0"), threads or 2)
    del model
    backend = LlamaBackend(exported.files["q8_0"], exported.fim, out_dir.name, n_threads=threads)
    return assemble(backend, None, {})


def _interval(row: dict) -> dict:
    return {"low": row["low"], "high": row["high"]}


def _verdict(row: dict | None) -> str:
    if row is None:
        return "no held-out feedback to compare on"
    figures = f"({row['delta']:+.4f}, interval {row['low']:+.4f}..{row['high']:+.4f})"
    if row["low"] > 0:
        return f"GRPO raised held-out edit similarity {figures}"
    if row["high"] < 0:
        return f"GRPO lowered held-out edit similarity {figures}"
    return f"no change beyond noise in held-out edit similarity {figures}"
