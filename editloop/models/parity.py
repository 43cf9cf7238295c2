"""Verify an exported GGUF against the HF model it came from, before anything is published.

Two checks: (1) token ids from the HF tokenizer and llama.cpp agree on every snippet —
code from the standard library plus hand-picked edge cases (unicode, tabs, CRLF, special
tokens); (2) on FIM prompts, llama.cpp's argmax agrees with the HF model's greedy
continuation at every position (teacher-forced, so one early miss does not cascade).
Full agreement is the same thing as identical greedy output.

The HF reference runs on the f16-rounded weights: f16 storage is the intended loss, the
check is there to catch layout, rope, tokenizer and metadata mistakes.
"""

import hashlib
import inspect
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editloop.errors import ExportError
from editloop.models.fim import FimTemplate, fim_token_ids

# The agreement each quant must reach; quants not listed are measured and reported only. f16 must
# agree on every position HF decides clearly: where its top two logits are within TIE_MARGIN, f16
# rounding may flip the argmax of a correct export (seen after a retrain: 99.7% overall).
REQUIRED_AGREEMENT = {"f16": 1.0, "q8_0": 0.9}
TIE_MARGIN = 0.05
NEW_TOKENS = 16
EDGE_CASES = [
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\t\tif x:\n\t\t\treturn y\n",
    "    \n\n    ",
    "a  b   c    d",
    "x = 'héllo wörld' # ünïcödé",
    "name = '名前' + 'テスト'",
    "emoji = '🙂🚀✨'",
    's = "\\u00e9\\n"',
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "print(1)<|endoftext|>",
    "<|file_sep|>a.py\n",
    'fn main() { println!("{}", 1_000u64); }',
    "public static void main(String[] args) {}",
    "0x1F 3.14e-10 1_000_000 ",
    "λx. x → y",
    "\u00a0nbsp and\u200bzero-width",
    "   trailing   ",
    "'''docstring'''\n\"\"\"more\"\"\"",
    "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n",
]


@dataclass
class ParityInputs:
    snippets: list[str]
    fim_prompts: list[tuple[str, str]]  # (prefix, suffix)
    max_prompt_tokens: int = 512  # each FIM prompt is cut to this (or the model's context)


def default_inputs(
    n_snippets: int = 50, n_prompts: int = 20, seed: int = 0, max_prompt_tokens: int = 512
) -> ParityInputs:
    """Edge cases plus windows of standard-library files, chosen deterministically."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.glob("*.py") if p.stat().st_size > 2000)
    paths.sort(key=lambda p: hashlib.sha256(f"{seed}:{p.name}".encode()).digest())
    rng = np.random.default_rng(seed)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths[: n_snippets + n_prompts]]
    windows = []
    for text in texts:
        start = int(rng.integers(0, max(1, len(text) - 400)))
        windows.append(text[start : start + 400])
    snippets = EDGE_CASES + windows[: max(0, n_snippets - len(EDGE_CASES))]
    prompts = []
    for window in windows[-n_prompts:]:
        cut = int(rng.integers(len(window) // 3, 2 * len(window) // 3))
        prompts.append((window[:cut], window[cut:][len(window) // 4 :]))
    return ParityInputs(snippets, prompts, max_prompt_tokens)


def verify_export(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: FimTemplate,
    files: dict[str, Path],
    inputs: ParityInputs,
    threads: int = 2,
) -> dict:
    """Figures for the manifest; raise :class:`ExportError` naming the first failed check."""
    from llama_cpp import Llama

    reference_file = files.get("f16") or next(iter(files.values()))
    vocab = Llama(str(reference_file), vocab_only=True, verbose=False)
    try:
        tokenizer_report = _check_tokenizer(tokenizer, vocab, inputs.snippets)
    finally:
        vocab.close()
    # f16 must reproduce HF exactly, so it is checked on every prompt in both orders whatever the
    # model is served in: the order moves what the answer attends to, and q/k left in HF's rope
    # layout changed none of the tiny starter's greedy tokens on suffix-first prompts while
    # prefix-first ones caught it. Quantized files are judged on the prompts as served.
    limit = min(model.config.max_position_embeddings, inputs.max_prompt_tokens)
    served, flipped = (
        [_prompt_ids(tokenizer, template, p, s, limit, spm) for p, s in inputs.fim_prompts]
        for spm in (template.spm, not template.spm)
    )
    prompts = served + flipped
    continuations, decided = _hf_greedy(model, prompts)
    agreement = {
        quant: _agreement(path, prompts, continuations, decided, threads)
        if quant == "f16"
        else _agreement(path, served, continuations[: len(served)], None, threads)
        for quant, path in files.items()
    }
    for quant, required in REQUIRED_AGREEMENT.items():
        if quant in agreement and agreement[quant] < required:
            raise ExportError(
                f"greedy parity check failed for {quant}: llama.cpp agrees with the HF model on "
                f"{agreement[quant]:.1%} of tokens over {len(inputs.fim_prompts)} FIM prompts, "
                f"{required:.0%} required"
            )
    return {
        "tokenizer": tokenizer_report,
        "greedy": {
            "prompts": len(inputs.fim_prompts),
            "f16_prompts": len(prompts),  # each prompt in both orders
            "new_tokens": NEW_TOKENS,
            "token_agreement": agreement,
            "f16_near_ties_skipped": sum(not d for ds in decided for d in ds),
        },
    }


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase, vocab, snippets: list[str]) -> dict:
    mismatches = []
    for text in snippets:
        hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cpp_ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if hf_ids != cpp_ids:
            mismatches.append(text)
    if mismatches:
        raise ExportError(
            f"tokenizer parity check failed: HF and llama.cpp token ids differ on {len(mismatches)} of "
            f"{len(snippets)} snippets, first {mismatches[0][:60]!r}"
        )
    return {"snippets": len(snippets), "identical": len(snippets)}


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    template: FimTemplate,
    prefix: str,
    suffix: str,
    limit: int,
    spm: bool,
) -> list[int]:
    pre = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    suf = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    specials = (
        _one_id(tokenizer, template.prefix),
        _one_id(tokenizer, template.suffix),
        _one_id(tokenizer, template.middle),
    )
    return fim_token_ids(pre, suf, specials, limit - NEW_TOKENS - 3, spm)


def _one_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"{token!r} is not one token of the tokenizer")
    return found


@torch.no_grad()
def _hf_greedy(model: PreTrainedModel, prompts: list[list[int]]) -> tuple[list[list[int]], list[list[bool]]]:
    """Greedy continuations and, per position, whether HF's choice is clear (not a near-tie)."""
    saved = _round_to_f16(model)
    # transformers 5.2x renamed the forward's cache argument; the model's outputs kept the old name.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    try:
        outputs, decided = [], []
        for ids in prompts:
            seq, clear, past = list(ids), [], None
            step = torch.tensor([ids])
            for _ in range(NEW_TOKENS):  # plain loop: no EOS stop, every position is compared
                out = model(input_ids=step, use_cache=True, logits_to_keep=1, **{cache_arg: past})
                logits, past = out.logits[0, -1], out.past_key_values
                top = torch.topk(logits.float(), 2).values
                clear.append(bool(top[0] - top[1] >= TIE_MARGIN))
                seq.append(int(logits.argmax()))
                step = torch.tensor([[seq[-1]]])
            outputs.append(seq[len(ids) :])
            decided.append(clear)
        return outputs, decided
    finally:
        for name, tensor in saved.items():
            model.get_parameter(name).copy_(tensor)


def _round_to_f16(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Round the model's matrices to f16 in place; the originals of those it changed.

    Only changed ones are kept, so a checkpoint whose weights f16 already holds exactly (bf16
    weights in f16's range, as synthetic ones are) costs no second copy of the model.
    """
    saved = {}
    for name, tensor in model.named_parameters():
        if tensor.ndim != 2:
            continue
        rounded = tensor.detach().half().float()
        if not torch.equal(rounded, tensor):
            saved[name] = tensor.detach().clone()
            tensor.data.copy_(rounded)
    return saved


def _agreement(
    path: Path,
    prompts: list[list[int]],
    continuations: list[list[int]],
    decided: list[list[bool]] | None,
    threads: int,
) -> float:
    """Share of positions where llama.cpp's argmax is HF's (only the ``decided`` ones, if given).

    Teacher-forced one token at a time after the prompt, so llama.cpp computes logits for the
    compared positions only (all positions' logits over a 151k vocabulary cost more than the model).
    """
    import llama_cpp
    from llama_cpp import Llama

    n_ctx = max(len(p) + len(c) for p, c in zip(prompts, continuations, strict=True)) + 8
    llm = Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, verbose=False)
    n_vocab = llm.n_vocab()
    try:
        agree = total = 0
        for i, (prompt, cont) in enumerate(zip(prompts, continuations, strict=True)):
            llm.reset()
            predicted = []
            for tokens in [prompt, *([t] for t in cont[:-1])]:
                llm.eval(tokens)
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
                predicted.append(int(logits.argmax()))
            counted = np.array(decided[i]) if decided is not None else np.ones(len(cont), dtype=bool)
            agree += int(((np.array(predicted) == np.array(cont)) & counted).sum())
            total += int(counted.sum())
        return agree / total if total else 1.0
    finally:
        llm.close()
