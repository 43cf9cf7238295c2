"""The value model's P(accept) as a reward: what the team would likely have kept, where no kept
text can say (a completion far from the reference may still be a good one).

Any object with ``predict(prefix, suffix, candidate) -> float`` serves; :class:`ValueModelPredictor`
adapts editloop's own value model (:mod:`editloop.completion.value`), which also reads token
log-probabilities — GRPO's reward functions do not see those, so it scores without them.
An empty completion shows nothing and gets None.

>>> reward = ValueReward(ValueModelPredictor(train_value_model(rows)))  # doctest: +SKIP
>>> reward(completions=["x + 1"], prefix=["y = "], suffix=["\\n"])  # doctest: +SKIP
[0.42]
"""

from typing import Any, Protocol

from editloop.completion.value import ValueInput, ValueModel
from editloop.training.rewards.columns import column, completion_texts


class AcceptancePredictor(Protocol):
    def predict(self, prefix: str, suffix: str, candidate: str) -> float:
        """P(the candidate is accepted and kept), in [0, 1]."""
        ...


class ValueModelPredictor:
    """editloop's logistic value model behind :class:`AcceptancePredictor` (no log-probabilities)."""

    def __init__(self, model: ValueModel) -> None:
        self.model = model

    def predict(self, prefix: str, suffix: str, candidate: str) -> float:
        return self.model.predict(ValueInput(prefix=prefix, suffix=suffix, candidate=candidate))


class ValueReward:
    """P(accept) of each non-empty completion under a value model."""

    def __init__(self, model: AcceptancePredictor) -> None:
        self.__name__ = "value"
        self.model = model

    def __call__(
        self,
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        texts = completion_texts(completions or [])
        prefixes, suffixes = column(kwargs, "prefix", len(texts)), column(kwargs, "suffix", len(texts))
        return [
            float(self.model.predict(p or "", s or "", text)) if text.strip() else None
            for text, p, s in zip(texts, prefixes, suffixes, strict=True)
        ]
