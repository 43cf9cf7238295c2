"""What one registry version serves with: its backend, its rankers and their abstain thresholds.

They are loaded, validated, leased and hot-swapped as one unit by the
:class:`~editloop.models.manager.ModelManager`, so a request never ranks one version's candidates
with another version's value model, and a rollback switches them together.

A version ranks by its value model when its retrain cycle published one (the cycle publishes it
only when it beat the log-prob score on held-out feedback), else by mean token probability. Each
ranker has its own abstain threshold, calibrated by the cycle on held-out feedback.

>>> served = load_served(version, backend)  # doctest: +SKIP
>>> served.pick(None)  # doctest: +SKIP
('value', <ValueRanker>, 0.18)
"""

import logging
from dataclasses import dataclass, field
from typing import Literal

from editloop.completion.ranker import LogprobRanker, Ranker
from editloop.completion.validate import validate_backend
from editloop.completion.value import ValueModel, ValueRanker
from editloop.errors import BadRequestError, ModelError
from editloop.models.backend import Backend
from editloop.models.registry import ModelVersion

log = logging.getLogger(__name__)

# Abstain below this best score when neither the operator nor the version's cycle chose a threshold.
DEFAULT_ABSTAIN_THRESHOLD = 0.05
RankerChoice = Literal["auto", "value", "logprob"]


@dataclass
class ServedModel:
    backend: Backend
    rankers: dict[str, Ranker]  # by name: "logprob" always, "value" when the version has one
    default: str  # the ranker of requests that name none
    thresholds: dict[str, float] = field(default_factory=dict)  # by ranker name
    synthetic: bool = False  # random weights of a real shape: it decodes, it cannot write code

    @property
    def version(self) -> str:
        return self.backend.version

    def pick(self, requested: str | None) -> tuple[str, Ranker, float]:
        """(name, ranker, abstain threshold) for a request asking for ``requested`` (None: default)."""
        name = self.default if requested in (None, "auto") else requested
        if name not in self.rankers:
            have = ", ".join(sorted(self.rankers))
            raise BadRequestError(f"model {self.version} has no {name!r} ranker (it has: {have})")
        return name, self.rankers[name], self.thresholds.get(name, DEFAULT_ABSTAIN_THRESHOLD)

    def value_model(self) -> ValueModel | None:
        ranker = self.rankers.get("value")
        return ranker.model if isinstance(ranker, ValueRanker) else None

    def close(self) -> None:
        self.backend.close()


def load_served(
    version: ModelVersion | None,
    backend: Backend,
    ranker: RankerChoice = "auto",
    abstain_threshold: float | None = None,
) -> ServedModel:
    """``backend`` with ``version``'s value model (when it has one) and calibrated thresholds.

    ``ranker`` is the operator's default ("auto": the value model when there is one).
    ``abstain_threshold`` (the operator's override) wins over the thresholds the version's cycle
    calibrated, which win over :data:`DEFAULT_ABSTAIN_THRESHOLD`. ``version`` None (a backend
    outside the registry) ranks by log-prob.
    """
    if version is None:
        return assemble(backend, None, {}, ranker, abstain_threshold)
    try:
        model = ValueModel.load(version.path)
    except ModelError as exc:  # e.g. trained by an older editloop on other features
        log.warning("%s: %s; ranking by log-prob", version.name, exc.message)
        model = None
    served = assemble(backend, model, version.manifest.abstain_thresholds, ranker, abstain_threshold)
    served.synthetic = version.manifest.synthetic
    return served


def assemble(
    backend: Backend,
    value_model: ValueModel | None,
    calibrated: dict[str, float],
    ranker: RankerChoice = "auto",
    abstain_threshold: float | None = None,
) -> ServedModel:
    """A served model from its parts (a version being gated has them before it is published)."""
    rankers: dict[str, Ranker] = {"logprob": LogprobRanker()}
    if value_model is not None:
        rankers["value"] = ValueRanker(value_model)
    elif ranker == "value":
        log.warning("ranker=value but %s has no value model: ranking by log-prob", backend.version)
    default = "value" if "value" in rankers and ranker != "logprob" else "logprob"
    thresholds = {
        name: abstain_threshold
        if abstain_threshold is not None
        else calibrated.get(name, DEFAULT_ABSTAIN_THRESHOLD)
        for name in rankers
    }
    return ServedModel(backend, rankers, default, thresholds)


def validate_served(served: ServedModel) -> None:
    validate_backend(served.backend, parses=not served.synthetic)
