"""Benchmark the starter pipeline; prints one JSON object.

- training throughput of each starter size (tokens/s over a few steps after one warm-up step),
  with the ratio against ``tiny`` measured in the same run, and the small starter's step
  compiled (torch.compile, as it trains) against eager;
- Muon against AdamW on the small starter: held-out loss after the same short run, and the
  tokens/s Newton-Schulz costs;
- in-context copying of the active version (HF weights): loss on a held-out code span, and on
  the same span repeated right after it — a model that copies predicts the repeat far better;
- llama.cpp prompt and decode speed of the active version's GGUF files, as ratios against f16.

Run: ``make bench`` (uses the active model; builds a tiny one in a temporary home if none).
"""

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from llama_cpp import Llama
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from editloop.corpus import Corpus, load_corpus
from editloop.models.registry import ModelVersion, Registry
from editloop.settings import load_settings
from editloop.starter.bootstrap import BootstrapOptions, bootstrap
from editloop.starter.trainer import SIZES, StarterTrainer

STEPS = 4
COMPILE_STEPS = 20
OPTIMIZER_STEPS = 150
PROMPT_TOKENS, DECODE_TOKENS = 256, 64
COPY_SPAN, COPY_FILES = 100, 20


def training_throughput(tokenizer: Tokenizer, corpus: Corpus, work: Path) -> dict:
    """tokens/s of tiny, and of small compiled (as it trains) and eager, all in this run."""
    tiny = _tokens_per_s("tiny", tokenizer, corpus, work)
    small = {
        name: _tokens_per_s("small", tokenizer, corpus, work / name, COMPILE_STEPS, compile=on)
        for name, on in (("eager", False), ("compiled", True))
    }
    return {
        "tokens_per_s": {"tiny": tiny, "small": small["compiled"], "small_eager": small["eager"]},
        "small_vs_tiny": small["compiled"] / tiny,
        "small_compiled_vs_eager": small["compiled"] / small["eager"],
    }


def _tokens_per_s(
    name: str, tokenizer: Tokenizer, corpus: Corpus, work: Path, steps: int = STEPS, **size: object
) -> float:
    size = dataclasses.replace(
        SIZES[name], **{"steps": steps + 1, "line_steps": 0, "vocab_size": tokenizer.get_vocab_size()} | size
    )
    trainer = StarterTrainer(size, tokenizer, corpus.train, corpus.heldout, work / name, seed=0)
    stamps: list[tuple[float, int]] = []
    trainer.run(on_step=lambda *_: stamps.append((time.perf_counter(), trainer.tokens)))
    # Timed from the end of the first step: it pays for warm-up and, compiled, for compiling.
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return (n1 - n0) / (t1 - t0)


def optimizer_comparison(tokenizer: Tokenizer, corpus: Corpus, work: Path) -> dict:
    small = SIZES["small"]
    runs = {}
    for name, muon_lr in (("adamw", 0.0), ("muon", small.muon_lr)):
        size = dataclasses.replace(
            small,
            steps=OPTIMIZER_STEPS,
            line_steps=0,
            muon_lr=muon_lr,
            vocab_size=tokenizer.get_vocab_size(),
            compile=False,  # compiling would cost a third of so short a run, the same for both
        )
        result = StarterTrainer(size, tokenizer, corpus.train, corpus.heldout, work / name, seed=0).run()
        runs[name] = {"val_loss": result.val_loss, "tokens_per_s": result.tokens_per_s}
    return {
        "steps": OPTIMIZER_STEPS,
        **runs,
        "val_loss_muon_minus_adamw": runs["muon"]["val_loss"] - runs["adamw"]["val_loss"],
        "tokens_per_s_muon_vs_adamw": runs["muon"]["tokens_per_s"] / runs["adamw"]["tokens_per_s"],
    }


@torch.no_grad()
def copying(version: ModelVersion, tokenizer: Tokenizer, corpus: Corpus) -> dict | None:
    """Mean token loss on held-out spans seen once, then on their immediate repeat."""
    hf = version.hf_path()
    if hf is None:
        return None  # an imported GGUF without HF weights
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    # From the second hundred tokens on: a file's first are mostly its licence header.
    encoded = (tokenizer.encode(f.text).ids for f in corpus.heldout)
    spans = [ids[COPY_SPAN : 2 * COPY_SPAN] for ids in encoded if len(ids) >= 2 * COPY_SPAN]
    first, repeat = [], []
    for span in spans[:COPY_FILES]:
        x = torch.tensor([span + span])
        losses = torch.nn.functional.cross_entropy(
            model(x).logits[0, :-1].float(), x[0, 1:], reduction="none"
        )
        first.append(float(losses[: COPY_SPAN - 1].mean()))
        repeat.append(float(losses[COPY_SPAN:].mean()))  # positions that predict the repeat's tokens 2..n
    if not first:
        return None
    first_loss, repeat_loss = sum(first) / len(first), sum(repeat) / len(repeat)
    return {
        "spans": len(first),
        "first_pass_loss": first_loss,
        "repeat_loss": repeat_loss,
        "repeat_vs_first": repeat_loss / first_loss,
    }


def llama_speed(version: ModelVersion) -> dict:
    figures = {}
    for quant, rel in sorted(version.manifest.gguf.items()):
        llm = Llama(str(version.path / rel), n_ctx=PROMPT_TOKENS + DECODE_TOKENS + 8, verbose=False)
        try:
            prompt = [i % 200 + 10 for i in range(PROMPT_TOKENS)]
            started = time.perf_counter()
            llm.eval(prompt)
            prompt_s = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(DECODE_TOKENS):
                llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
            decode_s = time.perf_counter() - started
            figures[quant] = {
                "prompt_tokens_per_s": PROMPT_TOKENS / prompt_s,
                "decode_tokens_per_s": DECODE_TOKENS / decode_s,
            }
        finally:
            llm.close()
    reference = figures.get("f16")
    if reference:
        for f in figures.values():
            f["decode_vs_f16"] = f["decode_tokens_per_s"] / reference["decode_tokens_per_s"]
    return figures


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings()
        version = Registry(settings.models_dir).current()
        if version is None:
            version = bootstrap(load_settings(home=Path(tmp) / "home"), BootstrapOptions(size="tiny"))
        tokenizer = Tokenizer.from_file(str(version.tokenizer_path()))
        corpus = load_corpus(["stdlib"], {"python"}, max_bytes=2_000_000)
        report = {
            "model_version": version.name,
            "threads": torch.get_num_threads(),
            "training": training_throughput(tokenizer, corpus, Path(tmp)),
            "optimizer": optimizer_comparison(tokenizer, corpus, Path(tmp)),
            "copying": copying(version, tokenizer, load_corpus(["stdlib"], {"python"}, max_bytes=None)),
            "llama_cpp": llama_speed(version),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
