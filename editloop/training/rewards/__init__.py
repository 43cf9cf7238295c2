"""Rewards for GRPO, with TRL's signature ``f(prompts, completions, completion_ids=None, **columns)
-> list[float | None]``; every dataset column (``prefix``, ``suffix``, ``reference``, ``language``,
``filepath``, ``tests``) arrives as a keyword list. None means "no verdict", never "bad".

One module per family:

- :mod:`.match` — the kept text: ``exact_match``, ``edit_similarity``, ``line_match``
- :mod:`.syntax` — ``SyntaxValidity``: tree-sitter for every language, ``compile()`` for Python
- :mod:`.execution` — ``ExecutionReward``: compile, lint, format, tests in the sandbox
  (:mod:`.toolchains`: cargo/clippy/rustfmt, ruff, javac)
- :mod:`.value` — ``ValueReward``: the value model's P(accept)
- :mod:`.show` — ``ShowAbstain``: +0.75 accepted, -0.25 rejected, 0 abstained
- :mod:`.combined` — ``CombinedReward``: all of them, weighted per language

>>> from editloop.training.rewards import CombinedReward
>>> trainer = GRPOTrainer(..., reward_funcs=[CombinedReward()])  # doctest: +SKIP
"""

from editloop.training.rewards.combined import DEFAULT_WEIGHTS, CombinedReward, RewardWeights
from editloop.training.rewards.execution import DEFAULT_TOOL_WEIGHTS, ExecutionReward, ToolWeights
from editloop.training.rewards.match import edit_similarity, exact_match, line_match
from editloop.training.rewards.show import ShowAbstain
from editloop.training.rewards.syntax import SyntaxValidity
from editloop.training.rewards.value import AcceptancePredictor, ValueModelPredictor, ValueReward

__all__ = [
    "DEFAULT_TOOL_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "AcceptancePredictor",
    "CombinedReward",
    "ExecutionReward",
    "RewardWeights",
    "ShowAbstain",
    "SyntaxValidity",
    "ToolWeights",
    "ValueModelPredictor",
    "ValueReward",
    "edit_similarity",
    "exact_match",
    "line_match",
]
