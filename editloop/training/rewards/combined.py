"""One reward from every family, weighted per language.

Per completion: edit similarity to the kept text (``match``), the syntax check (``syntax``), the
toolchain checks (``execution``, itself weighted by :class:`ToolWeights`), the value model's
P(accept) (``value``, when one is given) and the show/abstain term (``show``). Terms that do not
apply to a row — no toolchain, no value model, the sandbox failed — are left out and the other
weights renormalised, so a missing tool never reads as a bad completion. Within one GRPO group
(one prompt) the same terms apply to every completion, except where a sandbox run failed.

Under TRL each term's batch mean is also logged, as ``rewards/combined/<term>``.

>>> reward = CombinedReward(execution=False)
>>> scores = reward(completions=["a + b", "a", "a +"], prefix=["def add(a, b):\\n    return "] * 3,
...                 suffix=["\\n"] * 3, reference=["a + b"] * 3, language=["python"] * 3)
>>> [round(s, 3) for s in scores]  # (match + syntax/4 + show/2) / 1.75 here
[0.929, 0.186, 0.557]
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from editloop.training.rewards.columns import completion_texts, languages
from editloop.training.rewards.execution import DEFAULT_TOOL_WEIGHTS, ExecutionReward, ToolWeights
from editloop.training.rewards.match import edit_similarity
from editloop.training.rewards.show import ShowAbstain
from editloop.training.rewards.syntax import SyntaxValidity
from editloop.training.rewards.value import AcceptancePredictor, ValueReward

TERMS = ("match", "syntax", "execution", "value", "show")


@dataclass(frozen=True)
class RewardWeights:
    """How one language's reward families add up (relative weights; 0 turns a family off)."""

    match: float = field(default=1.0, metadata={"help": "Edit similarity to the text the user kept."})
    syntax: float = field(default=0.25, metadata={"help": "The file still parses (and compiles, Python)."})
    execution: float = field(default=0.5, metadata={"help": "Compile, tests, lint, format in the sandbox."})
    value: float = field(default=0.25, metadata={"help": "The value model's P(accept)."})
    show: float = field(default=0.5, metadata={"help": "+0.75 accepted, -0.25 rejected, 0 abstained."})
    tools: ToolWeights = field(default=ToolWeights(), metadata={"help": "How the execution checks add up."})


DEFAULT_WEIGHTS: Mapping[str, RewardWeights] = MappingProxyType(
    {lang: RewardWeights(tools=tools) for lang, tools in DEFAULT_TOOL_WEIGHTS.items()}
)


class CombinedReward:
    """The weighted mean of the reward families that apply to each completion."""

    def __init__(
        self,
        weights: Mapping[str, RewardWeights] = DEFAULT_WEIGHTS,
        default: RewardWeights | None = None,
        value_model: AcceptancePredictor | None = None,
        execution: bool | ExecutionReward = True,
        accept_similarity: float = 0.5,
        abstain_threshold: float = 0.05,
    ) -> None:
        self.__name__ = "combined"
        self.weights = dict(weights)
        self.default = default or RewardWeights()
        self.syntax = SyntaxValidity()
        self.value = ValueReward(value_model) if value_model is not None else None
        self.show = ShowAbstain(accept_similarity, value_model, abstain_threshold)
        if execution is True:
            tools = {lang: self.weights_for(lang).tools for lang in {*DEFAULT_TOOL_WEIGHTS, *self.weights}}
            execution = ExecutionReward(tools)
        self.execution = execution or None

    def weights_for(self, language: str) -> RewardWeights:
        return self.weights.get(language, self.default)

    def __call__(
        self,
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        completions = completions or []
        table = self.terms(completions, **kwargs)
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if callable(log_metric):
            for term, values in table.items():
                present = [v for v in values if v is not None]
                if present:
                    log_metric(f"rewards/combined/{term}", sum(present) / len(present))
        langs = languages(kwargs, len(completions))
        return [
            self.combine({t: table[t][i] for t in TERMS}, self.weights_for(langs[i]))
            for i in range(len(langs))
        ]

    def terms(self, completions: list[Any], **kwargs: Any) -> dict[str, list[float | None]]:
        """Every family's score per completion (None where it does not apply)."""
        texts = completion_texts(completions)
        none: list[float | None] = [None] * len(texts)
        return {
            "match": edit_similarity(completions=texts, **kwargs),
            "syntax": self.syntax(completions=texts, **kwargs),
            "execution": self.execution(completions=texts, **kwargs) if self.execution else none,
            "value": self.value(completions=texts, **kwargs) if self.value else none,
            "show": self.show(completions=texts, **kwargs),
        }

    @staticmethod
    def combine(scores: Mapping[str, float | None], weights: RewardWeights) -> float | None:
        pairs = [
            (getattr(weights, t), s) for t, s in scores.items() if s is not None and getattr(weights, t) > 0
        ]
        total = sum(w for w, _ in pairs)
        return sum(w * s for w, s in pairs) / total if total > 0 else None


def weight_fields() -> list[str]:
    """The family names a :class:`RewardWeights` carries (for config files and help)."""
    return [f.name for f in fields(RewardWeights) if f.name != "tools"]
