"""The one owner of the served model: load, validate, hot-swap, and keep the old one until idle.

A request takes a *lease* on the current backend; a swap replaces the pointer under a lock,
so new requests get the new model at once while leased ones finish on the old model, which is
closed when its last lease ends. A version that fails to load or validate never serves: the
old model keeps serving and the failure is reported by :meth:`ModelManager.status`.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from editloop.errors import EditloopError, ModelError
from editloop.models.backend import Backend, GenerationParams
from editloop.models.registry import ModelVersion, Registry

log = logging.getLogger(__name__)

BackendFactory = Callable[[ModelVersion], Backend]
Validator = Callable[[Backend], None]


@dataclass
class _Slot:
    backend: Backend
    leases: int = 0
    retired: bool = False


class ModelManager:
    """Serves the registry's ``current`` version and follows it as it changes."""

    def __init__(
        self, registry: Registry, factory: BackendFactory, validate: Validator | None = None
    ) -> None:
        self.registry = registry
        self.factory = factory
        self.validate = validate or validate_backend
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._slot: _Slot | None = None
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

    @contextmanager
    def lease(self) -> Iterator[Backend]:
        with self._lock:
            slot = self._slot
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
        """Load the registry's current version if it is not the one serving; True if swapped."""
        with self._reload_lock:
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

    def _load(self, version: ModelVersion) -> Backend:
        started = time.monotonic()
        backend = self.factory(version)
        try:
            self.validate(backend)
        except EditloopError:
            backend.close()
            raise
        log.info("loaded %s in %.1fs", version.name, time.monotonic() - started)
        return backend

    def _swap(self, backend: Backend) -> None:
        with self._lock:
            old, self._slot = self._slot, _Slot(backend)
            if old is not None:
                old.retired = True
                close_now = old.leases == 0
        if old is not None and close_now:
            old.backend.close()
        self.swaps += 1
        self.last_error = None
        self._failed_version = None
        self.fallback = None
        log.info("now serving %s", backend.version)

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

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._lock:
            slot, self._slot = self._slot, None
        if slot is not None:
            slot.backend.close()

    def status(self) -> dict:
        return {
            "version": self.version,
            "last_error": self.last_error,
            "swaps": self.swaps,
            "failed_swaps": self.failed_swaps,
            "fallback": self.fallback,
        }


GOLDEN_PROMPTS = (
    ("def add(a, b):\n    return ", "\n"),
    ("import os\n\n\ndef main():\n    path = ", "\n    print(path)\n"),
    ("for i in range(10):\n    ", "\n"),
    ("class Config:\n    def __init__(self, name):\n        self.name = ", "\n"),
    ("x = ", "\n"),
)
GOLDEN_SAMPLES = 8
GOLDEN_TOKENS = 16


def validate_backend(backend: Backend) -> None:
    """Before it serves, a model must complete golden FIM prompts with text that parses.

    It catches broken artifacts — a mismatched tokenizer, scrambled or zeroed weights, lost
    FIM tokens — whose output is empty or byte soup. The bar is one non-empty, parse-valid
    candidate among all samples, because a very small model (the test-size starter) is
    mostly wrong yet still a working model; the gate on held-out data judges quality.
    """
    from editloop.completion.prompt import build_prompt
    from editloop.completion.syntax import SyntaxChecker

    checker = SyntaxChecker()
    tried = 0
    for prefix, suffix in GOLDEN_PROMPTS:
        # The serving prompt builder: it also refuses a model whose FIM tokens are missing.
        ids = build_prompt(backend, prefix, suffix, [], None, GOLDEN_TOKENS).ids
        params = GenerationParams(n=GOLDEN_SAMPLES, max_tokens=GOLDEN_TOKENS, temperature=1.0, stop=("\n",))
        for generation in backend.generate(ids, params).generations:
            tried += 1
            if generation.text.strip() and checker.check("python", prefix, generation.text, suffix):
                return
    raise ModelError(
        f"model {backend.version} failed validation: none of {tried} completions of "
        f"{len(GOLDEN_PROMPTS)} golden prompts was non-empty and parse-valid"
    )
