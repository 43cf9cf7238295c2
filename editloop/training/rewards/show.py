"""Show or abstain: Cursor Tab's online-RL reward — +0.75 accepted, −0.25 rejected, 0 not shown.

How a training completion maps onto it, mirroring what serving does with the same candidate:

* **abstained** (0): the completion is empty or whitespace (the model chose to say nothing), or a
  value model is given and scores it below ``abstain_threshold`` (the server would not show it);
* **accepted** (+0.75): shown, and its edit similarity to the kept text is at least
  ``accept_similarity`` (0.5: Copilot counts a suggestion retained while at most half is edited);
* **rejected** (−0.25): shown otherwise — including anything shown where the user kept nothing.

So a model gains by proposing only what would be kept and by staying silent when unsure.
A row without a kept text (``reference`` None) gets None.

>>> ShowAbstain()(completions=["a + b", "zzz", ""], reference=["a + b"] * 3)
[0.75, -0.25, 0.0]
"""

from typing import Any

from editloop.metrics import edit_similarity
from editloop.training.rewards.columns import column, completion_texts
from editloop.training.rewards.value import AcceptancePredictor

ACCEPTED, REJECTED, ABSTAINED = 0.75, -0.25, 0.0


class ShowAbstain:
    def __init__(
        self,
        accept_similarity: float = 0.5,
        value_model: AcceptancePredictor | None = None,
        abstain_threshold: float = 0.05,
    ) -> None:
        if not 0.0 < accept_similarity <= 1.0:
            raise ValueError(f"accept_similarity must be in (0, 1], not {accept_similarity}")
        self.__name__ = "show"
        self.accept_similarity = accept_similarity
        self.value_model = value_model
        self.abstain_threshold = abstain_threshold

    def __call__(
        self,
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        texts = completion_texts(completions or [])
        n = len(texts)
        rows = zip(
            texts,
            column(kwargs, "reference", n),
            column(kwargs, "prefix", n),
            column(kwargs, "suffix", n),
            strict=True,
        )
        return [self.score(text, ref, p or "", s or "") for text, ref, p, s in rows]

    def score(
        self, completion: str, reference: str | None, prefix: str = "", suffix: str = ""
    ) -> float | None:
        if reference is None:
            return None
        if not self.shown(completion, prefix, suffix):
            return ABSTAINED
        return ACCEPTED if edit_similarity(completion, reference) >= self.accept_similarity else REJECTED

    def shown(self, completion: str, prefix: str, suffix: str) -> bool:
        if not completion.strip():
            return False
        if self.value_model is None:
            return True
        return self.value_model.predict(prefix, suffix, completion) >= self.abstain_threshold
