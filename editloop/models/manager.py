"""The one owner of the served model: load, validate, hot-swap, and keep the old one until idle.

What is served is whatever the factory loads from a registry version — for the completion engine,
a backend with its ranker and abstain threshold (:class:`editloop.completion.served.ServedModel`),
so they are loaded, leased and swapped as one unit. A request takes a *lease* on the current one; a
swap replaces the pointer under a lock, so new requests get the new model at once while leased ones
finish on the old model, which is closed when its last lease ends. A version that fails to load or
validate never serves: the old model keeps serving and the failure is reported by
:meth:`ModelManager.status`. How a model is validated is injected (the completion layer knows what a
working model must do; this one does not).
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from editloop.errors import EditloopError, ModelError
from editloop.models.registry import Canary, ModelVersion, Registry, in_canary

log = logging.getLogger(__name__)


class Loaded(Protocol):
    """A loaded version: what a slot holds and closes."""

    @property
    def version(self) -> str: ...

    def close(self) -> None: ...


L = TypeVar("L", bound=Loaded)


@dataclass
class _Slot(Generic[L]):
    backend: L
    leases: int = 0
    retired: bool = False


class ModelManager(Generic[L]):
    """Serves the registry's ``current`` version and follows it as it changes.

    ``factory`` loads a version; ``validate`` (optional) must pass before it serves.
    """

    def __init__(
        self,
        registry: Registry,
        factory: Callable[[ModelVersion], L],
        validate: Callable[[L], None] | None = None,
    ) -> None:
        self.registry = registry
        self.factory = factory
        self.validate = validate
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._slot: _Slot[L] | None = None
        # A canary version serving a share of requests beside the current one (registry canary.json).
        self._canary: _Slot[L] | None = None
        self._canary_info: Canary | None = None
        self._failed_canary: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.last_error: str | None = None
        self._failed_version: str | None = None  # not retried until the registry points elsewhere
        self.swaps = 0
        self.failed_swaps = 0
        self.fallback: dict | None = None  # {"from", "to", "reason"} while an older version stands in

    @property
    def version(self) -> str | None:
        slot = self._slot
        return slot.backend.version if slot else None

    @property
    def canary(self) -> Canary | None:
        """The canary being served beside the current version, if any."""
        return self._canary_info if self._canary is not None else None

    @contextmanager
    def lease(self, key: str | None = None) -> Iterator[L]:
        """The model for a request keyed ``key`` (user and document): the canary for its share."""
        with self._lock:
            slot = self._slot
            info = self._canary_info
            if self._canary is not None and info is not None and in_canary(key, info.share):
                slot = self._canary
            if slot is None:
                raise ModelError(
                    "no model is loaded: " + (self.last_error or "none is active in the registry")
                )
            slot.leases += 1
        try:
            yield slot.backend
        finally:
            with self._lock:
                slot.leases -= 1
                close = slot.retired and slot.leases == 0
            if close:
                slot.backend.close()

    def reload(self) -> bool:
        """Load the registry's current version if it is not the one serving, and follow its canary;
        True if the current version was swapped."""
        with self._reload_lock:
            swapped = self._reload_current()
            self._follow_canary()
            return swapped

    def _reload_current(self) -> bool:
        try:
            version = self.registry.load_verified_current()
            if version.name == self.version:
                if self.fallback is not None:  # the stand-in became current: all is well again
                    log.info("%s is the current version now; the fallback is over", version.name)
                    self.fallback, self.last_error, self._failed_version = None, None, None
                return False
            backend = self._load(version)
        except EditloopError as exc:
            self._failed_version = self.registry.current_name()
            self._failed(str(exc.message))
            return self._slot is None and self._fall_back(str(exc.message))
        self._swap(backend)
        return True

    def _follow_canary(self) -> None:
        """Load the running canary beside the current version, or stop serving one that ended."""
        wanted = self.registry.running_canary()
        if wanted is not None and wanted.baseline != self.version:
            wanted = None  # measured against a version this process does not serve
        have = self._canary_info
        if wanted == have or (wanted is not None and wanted.version == self._failed_canary):
            return
        backend = None
        if wanted is not None:
            try:
                backend = self._load(self.registry.verify(wanted.version))
            except EditloopError as exc:
                self._failed_canary = wanted.version
                log.error("canary %s not served: %s", wanted.version, exc.message)
                wanted = None
        with self._lock:
            old, self._canary, self._canary_info = self._canary, _Slot(backend) if backend else None, wanted
        if old is not None:
            self._retire(old)
        if wanted is not None:
            log.info("serving canary %s to %.0f%% of requests", wanted.version, wanted.share * 100)

    def _fall_back(self, reason: str) -> bool:
        """Nothing serves and the current version cannot: serve the newest earlier one that verifies
        and validates, and say so (log, ``status()["fallback"]``) until the registry is repaired."""
        broken = self._failed_version
        for name in self.registry.fallbacks():
            try:
                backend = self._load(self.registry.verify(name))
            except EditloopError as exc:
                log.error("fallback %s cannot serve either: %s", name, exc.message)
                continue
            self._swap(backend)
            self.last_error, self._failed_version = reason, broken
            self.fallback = {"from": broken, "to": name, "reason": reason}
            log.error(
                "current version %s cannot serve; serving %s instead until it is repaired or another "
                "version is activated (`editloop models activate`): %s",
                broken,
                name,
                reason,
            )
            return True
        return False

    def _load(self, version: ModelVersion) -> L:
        started = time.monotonic()
        backend = self.factory(version)
        try:
            if self.validate is not None:
                self.validate(backend)
        except EditloopError:
            backend.close()
            raise
        log.info("loaded %s in %.1fs", version.name, time.monotonic() - started)
        return backend

    def _swap(self, backend: L) -> None:
        with self._lock:
            old, self._slot = self._slot, _Slot(backend)
        if old is not None:
            self._retire(old)
        self.swaps += 1
        self.last_error = None
        self._failed_version = None
        self.fallback = None
        log.info("now serving %s", backend.version)

    def _retire(self, slot: _Slot[L]) -> None:
        """No new leases; closed now, or by its last lease."""
        with self._lock:
            slot.retired = True
            close_now = slot.leases == 0
        if close_now:
            slot.backend.close()

    def _failed(self, reason: str) -> None:
        self.failed_swaps += 1
        self.last_error = reason
        log.error("model not swapped, %s keeps serving: %s", self.version or "nothing", reason)

    def start(self, poll_s: float) -> None:
        """Load the current version now, then follow the registry in a background thread."""
        self.reload()
        self._watcher = threading.Thread(target=self._watch, args=(poll_s,), name="model-watch", daemon=True)
        self._watcher.start()

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            pointer = self.registry.current_name()
            stale = pointer != self.version or self.fallback is not None
            if pointer is not None and stale and pointer != self._failed_version:
                self.reload()
            elif self.registry.running_canary() != self._canary_info:
                with self._reload_lock:
                    self._follow_canary()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._lock:
            slots, self._slot, self._canary = (self._slot, self._canary), None, None
        for slot in slots:
            if slot is not None:
                slot.backend.close()

    def status(self) -> dict:
        canary = self.canary
        return {
            "version": self.version,
            "canary": {"version": canary.version, "share": canary.share} if canary else None,
            "last_error": self.last_error,
            "swaps": self.swaps,
            "failed_swaps": self.failed_swaps,
            "fallback": self.fallback,
        }
