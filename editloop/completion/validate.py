"""What a model must do before it serves: complete golden FIM prompts with text that parses.

Injected into :class:`~editloop.models.manager.ModelManager` by the builder, so the registry layer
does not import the completion layer.
"""

from editloop.completion.prompt import build_prompt
from editloop.completion.syntax import SyntaxChecker
from editloop.errors import ModelError
from editloop.models.backend import Backend, GenerationParams

GOLDEN_PROMPTS = (
    ("def add(a, b):\n    return ", "\n"),
    ("import os\n\n\ndef main():\n    path = ", "\n    print(path)\n"),
    ("for i in range(10):\n    ", "\n"),
    ("class Config:\n    def __init__(self, name):\n        self.name = ", "\n"),
    ("x = ", "\n"),
)
GOLDEN_SAMPLES = 8
GOLDEN_TOKENS = 16


def validate_backend(backend: Backend, parses: bool = True) -> None:
    """Before it serves, a model must complete golden FIM prompts with text that parses.

    It catches broken artifacts — a mismatched tokenizer, scrambled or zeroed weights, lost
    FIM tokens — whose output is empty or byte soup. The bar is one non-empty, parse-valid
    candidate among all samples, because a very small model (the test-size starter) is
    mostly wrong yet still a working model; the gate on held-out data judges quality. A model of
    random weights (``editloop models synth``, ``parses=False``) must only decode text: it is
    there to measure cost, and its files are still verified like any other.
    """
    checker = SyntaxChecker()
    tried = 0
    for prefix, suffix in GOLDEN_PROMPTS:
        # The serving prompt builder: it also refuses a model whose FIM tokens are missing.
        ids = build_prompt(backend, prefix, suffix, [], None, GOLDEN_TOKENS).ids
        params = GenerationParams(n=GOLDEN_SAMPLES, max_tokens=GOLDEN_TOKENS, temperature=1.0, stop=("\n",))
        for generation in backend.generate(ids, params).generations:
            tried += 1
            if generation.text.strip() and (
                not parses or checker.check("python", prefix, generation.text, suffix)
            ):
                return
    wanted = "non-empty and parse-valid" if parses else "non-empty"
    raise ModelError(
        f"model {backend.version} failed validation: none of {tried} completions of "
        f"{len(GOLDEN_PROMPTS)} golden prompts was {wanted}"
    )
