"""General-code checks for the gate: does a candidate still complete code the team did not write?

Held-out standard-library FIM tasks (files the starter model never trained on; single- and
multi-line) and, optionally, a HumanEval single-line subset run in the sandbox. Each check scores
one engine per item, so the gate compares two models item by item on the very same tasks.
"""

from collections.abc import Callable

from editloop.completion.engine import CompletionEngine

GeneralCheck = Callable[[CompletionEngine], dict[str, list[float]]]


def general_checks(fim_tasks: int, humaneval_tasks: int, seed: int) -> list[GeneralCheck]:
    checks: list[GeneralCheck] = []
    if fim_tasks:
        from editloop.corpus import DEFAULT_EXCLUDE, load_corpus
        from editloop.eval.fim import evaluate_fim
        from editloop.eval.fim import fim_tasks as make_tasks

        corpus = load_corpus(["stdlib"], {"python"}, exclude=DEFAULT_EXCLUDE)
        tasks = make_tasks(corpus.heldout, fim_tasks, seed=seed)
        checks.append(lambda engine: evaluate_fim(engine, tasks, seed).item_scores())
    if humaneval_tasks:
        from editloop.eval.humaneval import humaneval_pass_at_1, load_tasks
        from editloop.sandbox import open_sandbox

        problems = load_tasks("single-line", limit=humaneval_tasks)
        sandbox = open_sandbox()
        checks.append(lambda engine: humaneval_pass_at_1(engine, problems, sandbox).item_scores())
    return checks
