"""A new version earns its promotion on live traffic: the canary's figures, the decision rule, the monitor.

After the gate passes, a retrain cycle does not make its version current: it starts a *canary*
(``Registry.start_canary``) that serves ``canary_share`` of requests — a stable hash of (user,
document), so every replica agrees — beside the current version, the *stable* arm. Both arms'
live outcomes come from the feedback log (:class:`~editloop.feedback.stats.FeedbackStats` since the
canary started, per model version), and a sequential rule decides:

- **the primary measure** is the full-accept rate: suggestions accepted whole / suggestions the
  user saw. Chars accepted and still there at 2 min, abstain rate and latency are reported per arm.
- **the rule** is a mixture sequential probability ratio test (mSPRT; Johari et al., "Always Valid
  Inference", 2017) on the difference of the two rates, normal approximation, a N(0, margin²)
  mixture: its p-values stay valid however often they are checked, so the monitor may look every
  few seconds. Once both arms showed ``min_shown`` suggestions, the canary is *rolled back* when the
  test rejects "no worse than stable" with the canary's rate below (it is worse), and *promoted* when
  it rejects "worse by the margin" with the canary's rate above that (better, or not worse within
  the margin). Each test runs at ``alpha``.
- **at the time limit** an undecided canary is promoted if its rate is within the margin of the
  stable arm's, else rolled back.

The decision is written to the registry (``canary.json``; promoting activates the version) and to
Redis (``editloop:canary:history``), and servers are told on the models channel; a monitor that
dies and restarts recomputes the same figures from the durable log.

>>> monitor = CanaryMonitor(registry, store, CanaryRule())  # doctest: +SKIP
>>> monitor.check()  # doctest: +SKIP
Decision(action='wait', reason='stable 12 and canary 3 suggestions seen; 200 each needed', ...)
"""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

import redis

from editloop.errors import RegistryError
from editloop.feedback import control
from editloop.feedback.stats import FeedbackStats
from editloop.feedback.store import FeedbackStore
from editloop.models.registry import Canary, CanaryStatus, Registry

log = logging.getLogger(__name__)

HISTORY = "editloop:canary:history"
HISTORY_KEEP = 50
ARM_FIGURES = (
    "completions",
    "seen",
    "full_accepted",
    "full_accept_rate",
    "chars_accepted",
    "chars_retained_2min",
    "retained_known",
    "abstain_rate",
    "latency_ms",
)


@dataclass(frozen=True)
class CanaryRule:
    min_shown: int = field(default=200, metadata={"help": "Suggestions each arm must show before deciding."})
    margin: float = field(
        default=0.02, metadata={"help": "Full-accept rate the canary may lose and still be promoted."}
    )
    alpha: float = field(default=0.05, metadata={"help": "Error rate of each sequential test."})
    max_minutes: float = field(default=24 * 60.0, metadata={"help": "Decide on the estimate after this."})


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "promote", "rollback"]
    reason: str
    estimate: float | None = None  # canary full-accept rate minus stable's
    statistics: dict = field(default_factory=dict)


def mixture_log_lr(estimate: float, variance: float, null: float, tau2: float) -> float:
    """log of the mSPRT's mixture likelihood ratio against ``difference = null``.

    For a normal estimate with ``variance`` and a N(null, tau2) mixture over the alternative:
    Λ = sqrt(V / (V + τ²)) · exp(τ² (θ̂ − θ₀)² / (2 V (V + τ²))). Rejecting when Λ ≥ 1/α keeps the
    error rate below α under continuous monitoring (Λ is a martingale under the null).
    """
    return 0.5 * math.log(variance / (variance + tau2)) + tau2 * (estimate - null) ** 2 / (
        2 * variance * (variance + tau2)
    )


def decide(stable: dict, canary: dict, rule: CanaryRule, elapsed_s: float) -> Decision:
    """What to do with the canary given both arms' figures (``seen``, ``full_accepted``)."""
    n1, n2 = stable["seen"], canary["seen"]
    timed_out = elapsed_s >= rule.max_minutes * 60
    if min(n1, n2) < rule.min_shown and not timed_out:
        return Decision("wait", f"stable {n1} and canary {n2} suggestions seen; {rule.min_shown} each needed")
    if min(n1, n2) == 0:
        return Decision("rollback", f"time limit reached with stable {n1} and canary {n2} suggestions seen")
    p1, p2 = stable["full_accepted"] / n1, canary["full_accepted"] / n2
    estimate = p2 - p1
    variance = _clip(p1, n1) * (1 - _clip(p1, n1)) / n1 + _clip(p2, n2) * (1 - _clip(p2, n2)) / n2
    tau2 = max(rule.margin, 0.01) ** 2
    bar = math.log(1 / rule.alpha)
    worse = mixture_log_lr(estimate, variance, 0.0, tau2)
    inferior = mixture_log_lr(estimate, variance, -rule.margin, tau2)
    stats = {
        "stable_rate": round(p1, 4),
        "canary_rate": round(p2, 4),
        "log_lr_worse": round(worse, 3),
        "log_lr_not_inferior": round(inferior, 3),
        "bar": round(bar, 3),
        "margin": rule.margin,
    }
    rates = f"full-accept rate {p2:.3f} vs stable {p1:.3f} ({n2} vs {n1} seen)"
    if estimate < 0 and worse >= bar:
        return Decision("rollback", f"worse: {rates}", round(estimate, 4), stats)
    if estimate > -rule.margin and inferior >= bar:
        return Decision("promote", f"not worse within {rule.margin}: {rates}", round(estimate, 4), stats)
    if timed_out:
        action: Literal["promote", "rollback"] = "promote" if estimate >= -rule.margin else "rollback"
        return Decision(action, f"time limit, undecided; {rates}", round(estimate, 4), stats)
    return Decision("wait", f"undecided: {rates}", round(estimate, 4), stats)


def _clip(p: float, n: int) -> float:
    """A rate kept off 0 and 1 so an arm with no accepts yet still has a variance."""
    return min(max(p, 0.5 / n), 1 - 0.5 / n)


def arm_figures(report: dict, canary: Canary) -> dict[str, dict]:
    """Per arm, the figures of its version since the canary started (zeros before any traffic)."""
    by_version = {v["version"]: v for v in report.get("versions", [])}
    arms = {"stable": canary.baseline, "canary": canary.version}
    empty = {"completions": 0, "seen": 0, "full_accepted": 0}
    return {
        arm: {"version": version, **{k: by_version.get(version, empty).get(k, 0) for k in ARM_FIGURES}}
        for arm, version in arms.items()
    }


class CanaryMonitor:
    """Decides the registry's running canary from the feedback log; one per trainer process."""

    def __init__(self, registry: Registry, store: FeedbackStore, rule: CanaryRule) -> None:
        self.registry = registry
        self.store = store
        self.rule = rule
        self._stats: tuple[float, FeedbackStats] | None = None  # per canary start

    def figures(self, canary: Canary) -> dict[str, dict]:
        """Both arms' live figures since ``canary`` started (read incrementally from the log)."""
        if self._stats is None or self._stats[0] != canary.started_at:
            since = datetime.fromtimestamp(canary.started_at, UTC)
            self._stats = (canary.started_at, FeedbackStats(bucket_s=60, since=since))
        stats = self._stats[1]
        stats.refresh(self.store)
        return arm_figures(stats.report(), canary)

    def check(self, now: float | None = None) -> Decision | None:
        """Decide the running canary if the evidence allows; None when none runs."""
        canary = self.registry.running_canary()
        if canary is None:
            self._promoted_but_unrecorded()
            return None
        arms = self.figures(canary)
        decision = decide(arms["stable"], arms["canary"], self.rule, (now or time.time()) - canary.started_at)
        if decision.action != "wait":
            self.finish(canary, decision, arms)
        return decision

    def finish(self, canary: Canary, decision: Decision, arms: dict) -> Canary:
        status: CanaryStatus = "promoted" if decision.action == "promote" else "rolled_back"
        figures = {"arms": arms, "estimate": decision.estimate, "statistics": decision.statistics}
        decided = self.registry.end_canary(status, decision.reason, figures)
        record(self.store.client, decided)
        control.announce_model(self.store.client, self.registry.current_name() or "")
        log.info("canary %s %s: %s", canary.version, status.replace("_", " "), decision.reason)
        return decided

    def _promoted_but_unrecorded(self) -> None:
        """A monitor killed between activating the canary and writing its decision: finish the record."""
        canary = self.registry.canary()
        if canary and canary.status == "running" and canary.version == self.registry.current_name():
            reason = "promoted by a monitor that stopped before recording it"
            record(self.store.client, self.registry.end_canary("promoted", reason))


def record(client: redis.Redis, canary: Canary) -> None:
    """Keep the decision in Redis too: operators and dashboards on any replica read it there."""
    pipe = client.pipeline()
    pipe.lpush(HISTORY, canary.model_dump_json())
    pipe.ltrim(HISTORY, 0, HISTORY_KEEP - 1)
    pipe.execute()


def history(client: redis.Redis, limit: int = 10) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(HISTORY, 0, limit - 1)]


def decide_now(registry: Registry, store: FeedbackStore, action: Literal["promote", "abort"]) -> Canary:
    """An operator's decision: promote the running canary, or abort it (stable serves everything)."""
    canary = registry.running_canary()
    if canary is None:
        raise RegistryError("no canary is running (`editloop canary status`)")
    arms = CanaryMonitor(registry, store, CanaryRule()).figures(canary)
    status: CanaryStatus = "promoted" if action == "promote" else "aborted"
    decided = registry.end_canary(status, f"{status} by an operator", {"arms": arms})
    record(store.client, decided)
    control.announce_model(store.client, registry.current_name() or "")
    return decided


def rule_from(settings) -> CanaryRule:
    return CanaryRule(
        min_shown=settings.canary_min_shown,
        margin=settings.canary_margin,
        alpha=settings.canary_alpha,
        max_minutes=settings.canary_max_minutes,
    )


def status(registry: Registry, store: FeedbackStore | None, rule: CanaryRule) -> dict:
    """The canary as operators see it: the arm map, both arms' figures and what the rule says now."""
    canary = registry.canary()
    running = registry.running_canary()
    out: dict = {"canary": canary.model_dump() if canary else None, "running": running is not None}
    if running is not None and store is not None:
        monitor = CanaryMonitor(registry, store, rule)
        arms = monitor.figures(running)
        decision = decide(arms["stable"], arms["canary"], rule, time.time() - running.started_at)
        out |= {"arms": arms, "decision": asdict(decision), "rule": asdict(rule)}
    if store is not None:
        out["history"] = history(store.client)
    return out
