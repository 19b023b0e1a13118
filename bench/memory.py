"""Peak resident memory of this process and its Ray workers, sampled from /proc."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _rss_bytes(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _is_ray_worker(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def current_rss() -> int:
    """This process's RSS plus that of every Ray worker process (``ray::...``) on the machine."""
    workers = [p for p in os.listdir("/proc") if p.isdigit() and _is_ray_worker(p)]
    return _rss_bytes(os.getpid()) + sum(_rss_bytes(p) for p in workers)


class PeakRSS:
    """Context manager sampling :func:`current_rss` every ``interval`` s; ``.peak`` in bytes."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())
