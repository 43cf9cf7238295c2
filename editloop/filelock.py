"""One advisory file lock for everything that coordinates processes through a file.

The registry (publish, activate, roll back), the feedback spool and the embedded Redis's start all
serialise on a lock file next to what they guard; a killed holder's lock is released by the kernel.

>>> with file_lock(home / "models" / ".lock"):  # doctest: +SKIP
...     ...
"""

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder, when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
