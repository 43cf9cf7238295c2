"""The trainer process: waits for a reason to retrain, runs one cycle at a time, tells servers.

Reasons: enough new feedback (``retrain_min_events``), a schedule (``retrain_every_min``), or an
operator (``editloop retrain``, ``POST /admin/retrain``) whose request waits on a Redis list.
The coordination keys are in :mod:`editloop.feedback.control`.

>>> with open_feedback(settings) as feedback:  # doctest: +SKIP
...     Trainer.from_settings(settings, feedback.store).serve_forever(stop)
"""

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

import redis

from editloop.feedback import control
from editloop.feedback.control import CycleBusyError
from editloop.settings import Settings
from editloop.training.cycle import Cycle, CycleConfig, CycleState, FeedbackSource, sweep_staging
from editloop.training.gate import GateConfig
from editloop.training.launch import launch_for

log = logging.getLogger(__name__)
CONSUMER_GROUP = "trainer"


def cycle_config(settings: Settings, force: bool = False) -> CycleConfig:
    """The cycle as the settings configure it."""
    return CycleConfig(
        min_samples=settings.retrain_min_samples,
        sft_steps=settings.retrain_sft_steps,
        grpo_steps=settings.retrain_grpo_steps,
        learning_rate=settings.retrain_learning_rate,
        general_mix=settings.retrain_general_mix,
        device=settings.retrain_device,
        launch=launch_for(settings),
        general_samples=settings.retrain_general_samples,
        general_checks=settings.retrain_general_samples > 0 or settings.retrain_humaneval_tasks > 0,
        humaneval_tasks=settings.retrain_humaneval_tasks,
        gate=GateConfig(general_tolerance=settings.retrain_general_tolerance),
        force=force,
    )


def new_events(client: redis.Redis, streams: list[str], group: str = CONSUMER_GROUP) -> int:
    """Entries in the feedback streams the trainer's group has not read yet."""
    total = 0
    for stream in streams:
        groups = client.xinfo_groups(stream) if client.exists(stream) else []
        mine = next((g for g in groups if g["name"] in (group, group.encode())), None)
        total += client.xlen(stream) if mine is None else int(mine.get("lag") or 0)
    return total


class Trainer:
    """Runs cycles when asked or when due; one at a time per Redis, whichever trainer locks first."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        source: Callable[[], FeedbackSource | None],
        pending_events: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self.client = client
        self.source = source
        self.pending_events = pending_events
        self.last_cycle_at = time.time()

    @classmethod
    def from_settings(cls, settings: Settings, store) -> "Trainer":
        projects = settings.retrain_projects or None
        consumer = store.consumer(CONSUMER_GROUP, f"{socket.gethostname()}-{os.getpid()}", projects=projects)

        def pending() -> int:
            names = [p for p in store.projects() if projects is None or p in projects]
            return new_events(store.client, [store.keys.stream(p) for p in names])

        return cls(settings, store.client, lambda: consumer, pending)

    def run_cycle(
        self, reason: str, request: dict | None = None, config: CycleConfig | None = None
    ) -> CycleState:
        """One cycle under the lock; its final state goes to the history (and the request's result)."""
        config = config or cycle_config(self.settings, force=bool(request and request.get("force")))
        with control.cycle_lock(self.client):
            from editloop.models.registry import Registry

            swept = sweep_staging(Registry(self.settings.models_dir))
            if swept:
                log.info("removed %d staging directories a killed cycle left behind", swept)
            cycle = Cycle(
                self.settings, config, on_state=lambda s: control.publish_state(self.client, s.to_dict())
            )
            cycle.state.reports["trigger"] = reason
            state = cycle.run(self.source(), notify=self.notify)
        self.last_cycle_at = time.time()
        control.record_final(self.client, state.to_dict(), request["id"] if request else None)
        return state

    def notify(self, version: str) -> None:
        heard = control.announce_model(self.client, version)
        log.info("published %s; %d server(s) told", version, heard)

    def due(self) -> str | None:
        every = self.settings.retrain_every_min
        if every and time.time() - self.last_cycle_at >= every * 60:
            return "schedule"
        threshold = self.settings.retrain_min_events
        if threshold and self.pending_events() >= threshold:
            return "feedback"
        return None

    def serve_forever(self, stop: threading.Event, poll_s: float = 2.0) -> None:
        while not stop.is_set():
            try:
                control.beat(self.client, ttl_s=max(10, int(poll_s * 5)))
                request = control.next_request(self.client, poll_s)
                reason = "operator" if request else self.due()
            except redis.RedisError as exc:  # the embedded Redis restarting: wait it out
                log.warning("trainer: %s", exc)
                stop.wait(poll_s)
                continue
            if reason is None:
                continue
            try:
                state = self.run_cycle(reason, request)
                log.info("cycle %s: %s", state.cycle_id, state.message)
            except CycleBusyError as exc:
                log.info("%s", exc)
                if request:  # another trainer holds the lock: this request waits its turn
                    control.requeue(self.client, request)
                stop.wait(poll_s)
