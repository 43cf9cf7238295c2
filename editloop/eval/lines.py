"""Single-line FIM on held-out files: the model against trivial baselines.

A task puts the cursor after a line's indentation with the rest of the file as suffix, as
an editor would on a fresh line; the answer is the rest of that line. The model runs
through llama.cpp on the GGUF that is actually served. Baselines: "empty" (suggest
nothing) and "repeat the previous line" (its text after indentation).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein

from editloop.models.corpus import SourceFile
from editloop.models.fim import FimTemplate, fim_token_ids

MIN_TARGET_CHARS = 3
MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class LineTask:
    path: str
    prefix: str
    suffix: str
    target: str
    previous_line: str


def line_tasks(files: list[SourceFile], n: int, seed: int = 0) -> list[LineTask]:
    """``n`` tasks spread over ``files``: non-blank lines of at least three characters."""
    candidates = [
        (f, i)
        for f in files
        for i, line in enumerate(f.text.split("\n"))
        if len(line.strip()) >= MIN_TARGET_CHARS and i > 0
    ]
    if not candidates:
        return []
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    return [_task(*candidates[i]) for i in sorted(picks)]


def _task(file: SourceFile, index: int) -> LineTask:
    lines = file.text.split("\n")
    line = lines[index]
    indent = line[: len(line) - len(line.lstrip())]
    previous = next((p.strip() for p in reversed(lines[:index]) if p.strip()), "")
    return LineTask(
        path=file.path,
        prefix="\n".join([*lines[:index], indent]),
        suffix="\n" + "\n".join(lines[index + 1 :]),
        target=line.strip(),
        previous_line=previous,
    )


def score(predictions: list[str], tasks: list[LineTask]) -> dict[str, float]:
    exact = [p.strip() == t.target for p, t in zip(predictions, tasks, strict=True)]
    similarity = [
        Levenshtein.normalized_similarity(p.strip(), t.target)
        for p, t in zip(predictions, tasks, strict=True)
    ]
    return {"exact_match": float(np.mean(exact)), "edit_similarity": float(np.mean(similarity))}


def evaluate_lines(gguf: Path, template: FimTemplate, tasks: list[LineTask], threads: int = 2) -> dict:
    """Exact match and edit similarity for the model and both baselines on the same tasks."""
    predictions = _generate(gguf, template, tasks, threads)
    return {
        "tasks": len(tasks),
        "model": score(predictions, tasks),
        "repeat_previous_line": score([t.previous_line for t in tasks], tasks),
        "empty": score(["" for _ in tasks], tasks),
    }


def _generate(gguf: Path, template: FimTemplate, tasks: list[LineTask], threads: int) -> list[str]:
    """Greedy single-line completions through the serving backend (its context, its FIM ids)."""
    from editloop.models.backend import GenerationParams
    from editloop.models.llama import LlamaBackend

    backend = LlamaBackend(gguf, template, version=gguf.name, n_threads=threads, max_candidates=1)
    try:
        specials = tuple(backend.special_id(t) for t in (template.prefix, template.suffix, template.middle))
        budget = backend.n_ctx - MAX_NEW_TOKENS - 3
        params = GenerationParams(n=1, max_tokens=MAX_NEW_TOKENS, temperature=0.0, stop=("\n",))
        outputs = []
        for task in tasks:
            pre, suf = backend.tokenize(task.prefix), backend.tokenize(task.suffix)
            prompt = fim_token_ids(pre, suf, specials, budget, template.spm)
            outputs.append(backend.generate(prompt, params).generations[0].text.split("\n")[0])
        return outputs
    finally:
        backend.close()
