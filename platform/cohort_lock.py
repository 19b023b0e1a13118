"""One writer per cohort: the lock that ``lch ingest`` and ``lch segment`` hold while they write.

The lock is a small JSON object, ``cohorts/<cohort>/.lock``, naming its owner (host, pid, a
random id) and an expiry that a background thread pushes forward while the owner works. Another
run that finds it refuses with :class:`CohortLocked`, unless the owner is gone: a pid that no
longer runs on this host, or an expiry in the past (a process killed on another machine). Only
the lock's holder deletes write-aside leftovers, so no run ever removes another's in-flight
stores.

Locally the lock file is written aside and hard-linked into place, which fails if the name is
taken: that settles a race, and nobody reads a half-written lock. On an object
store there is no exclusive create in fsspec: the lock is written, then read back after a short
pause, and the run whose id is there holds it (the last writer wins, the other sees so and
refuses).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from lch.paths import Location, is_url, join
from lch.storage import filesystem

LOCK_NAME = ".lock"
LOCK_TTL_S = 120.0
"""How long a lock outlives its last renewal (renewed every third of it while held)."""
READ_BACK_DELAY_S = 0.5


class CohortLocked(RuntimeError):
    """Another live run writes this cohort; the message names it and what to do."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a cohort's lock, and until when it holds without renewing."""

    id: str
    host: str
    pid: int
    command: str
    since: str
    expires: float

    def is_gone(self, now: float) -> bool:
        """Tell whether the owner died: its pid is not running here, or it stopped renewing."""
        if now > self.expires:
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's live process
            return False
        return False


def _read(fs, path: str) -> LockOwner | None:
    try:
        return LockOwner(**json.loads(fs.cat_file(path)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # a torn or foreign file: treat as an expired lock
        return LockOwner("?", "?", -1, "?", "?", 0.0)


def _create_local(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; a reader never sees it half-written.

    It is written aside, then hard-linked into place, which fails if the name is taken.
    """
    tmp = f"{path}.{uuid.uuid4().hex[:8]}"
    Path(tmp).write_bytes(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def _rewrite_local(path: str, data: bytes) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}"
    Path(tmp).write_bytes(data)
    os.replace(tmp, path)


class _Lock:
    def __init__(self, folder: Location, command: str, storage_options: dict | None,
                 ttl_s: float) -> None:
        self.fs, self.path = filesystem(join(folder, LOCK_NAME), storage_options)
        self.remote = is_url(folder)
        self.ttl_s = ttl_s
        self.owner = LockOwner(
            uuid.uuid4().hex, socket.gethostname(), os.getpid(), command,
            datetime.now(UTC).isoformat(timespec="seconds"), 0.0,
        )
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _data(self) -> bytes:
        owner = LockOwner(**{**asdict(self.owner), "expires": time.time() + self.ttl_s})
        return json.dumps(asdict(owner)).encode()

    def _try_take(self) -> bool:
        if not self.remote:
            return _create_local(self.path, self._data())
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, self._data())
        time.sleep(READ_BACK_DELAY_S)
        held = _read(self.fs, self.path)
        return held is not None and held.id == self.owner.id

    def acquire(self, folder: Location) -> None:
        for _ in range(3):
            if self._try_take():
                break
            held = _read(self.fs, self.path)
            if held is None:
                continue  # released in between: try again
            if not held.is_gone(time.time()):
                raise CohortLocked(
                    f"{folder}: {held.command!r} (pid {held.pid} on {held.host}, since "
                    f"{held.since}) is writing this cohort; run again when it has finished"
                )
            self._remove_if(held.id)
        else:
            raise CohortLocked(f"{folder}: could not take the cohort lock {self.path}")
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="cohort-lock")
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            held = _read(self.fs, self.path)
            if held is None or held.id != self.owner.id:
                return  # taken over as expired: nothing of ours to renew
            if self.remote:
                self.fs.pipe_file(self.path, self._data())
            else:
                _rewrite_local(self.path, self._data())

    def _remove_if(self, owner_id: str) -> None:
        held = _read(self.fs, self.path)
        if held is not None and held.id == owner_id:
            try:
                self.fs.rm_file(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        self._remove_if(self.owner.id)


@contextmanager
def cohort_lock(
    folder: Location,
    command: str,
    storage_options: dict | None = None,
    *,
    ttl_s: float = LOCK_TTL_S,
) -> Iterator[LockOwner]:
    """Hold the cohort folder's lock for the duration of the ``with`` block.

    Parameters
    ----------
    folder : path or URL
        The cohort folder (``cohorts/<cohort>``); created if missing (locally).
    command : str
        What holds the lock, shown to a run that is refused (e.g. ``"lch ingest"``).
    storage_options : dict, optional
        fsspec options for a URL ``folder``.
    ttl_s : float
        Seconds the lock outlives its holder's last renewal.

    Raises
    ------
    CohortLocked
        If a live run holds the lock.
    """
    if not is_url(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
    lock = _Lock(folder, command, storage_options, ttl_s)
    lock.acquire(folder)
    try:
        yield lock.owner
    finally:
        lock.release()
