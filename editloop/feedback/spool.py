"""Where events wait while Redis is unreachable: an fsynced JSONL file, replayed later with the same ids.

>>> spool = Spool(settings.feedback_dir / "spool.jsonl")  # doctest: +SKIP
>>> spool.append(events)             # returns once the lines are fsynced
>>> spool.replay(store.write)         # sends them on; event_id dedupe makes a repeat harmless

Replay first renames the spool to ``spool.replaying.jsonl`` (so appends go on meanwhile into a
fresh file) and deletes it only after every event was written; a crash in between replays it
again, and the store drops what it already has. Events here already passed privacy filtering.
"""

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from editloop.feedback.events import FeedbackEvent, event_from_json
from editloop.filelock import file_lock

log = logging.getLogger(__name__)
REPLAY_BATCH = 500


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.replaying = path.with_name(path.stem + ".replaying.jsonl")
        self._lock = path.with_name(path.name + ".lock")
        self._replay_lock = path.with_name(path.name + ".replay.lock")

    def append(self, events: list[FeedbackEvent]) -> None:
        """Durable once it returns: written, flushed and fsynced (the directory too, for a new file)."""
        if not events:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(e.model_dump_json(exclude_none=True) + "\n" for e in events).encode()
        with file_lock(self._lock):
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a line torn by a crash must not swallow this one
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)

    def pending(self) -> int:
        """Events waiting (lines in the spool and in an interrupted replay)."""
        return sum(_count_lines(p) for p in (self.path, self.replaying) if p.exists())

    def replay(self, write: Callable[[list[FeedbackEvent]], object]) -> int:
        """Send every spooled event through ``write``; returns how many. Raises if ``write`` does."""
        if not (self.path.exists() or self.replaying.exists()):
            return 0
        with file_lock(self._replay_lock):
            with file_lock(self._lock):
                if self.path.exists() and not self.replaying.exists():
                    self.path.rename(self.replaying)
                    _fsync_dir(self.path.parent)
            if not self.replaying.exists():
                return 0
            sent = 0
            batch: list[FeedbackEvent] = []
            for event in self._read(self.replaying):
                batch.append(event)
                if len(batch) >= REPLAY_BATCH:
                    write(batch)
                    sent, batch = sent + len(batch), []
            if batch:
                write(batch)
                sent += len(batch)
            self.replaying.unlink()
            return sent

    @staticmethod
    def _read(path: Path) -> Iterator[FeedbackEvent]:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield event_from_json(line)
                except ValidationError:
                    # Only a line torn by a crash mid-append can be unreadable: skip it.
                    log.warning("spool %s line %d unreadable: skipped", path, number)


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())
