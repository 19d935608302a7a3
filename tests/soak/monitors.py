"""What the soak watches besides the answers: store connections and worker memory.

Both read the system's own view, not the app's: the store server's list of
clients (Redis ``CLIENT LIST``, PostgreSQL ``pg_stat_activity``) or the
workers' open file descriptors (SQLite), and ``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

#: How often the connection count is sampled, and the most samples kept.
SAMPLE_INTERVAL = 0.2
MAX_SAMPLES = 100_000

CountConnections = Callable[[Collection[int]], int]


def rss_kib(pid: int) -> int | None:
    """The resident set size of process ``pid`` in KiB (``VmRSS``), None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def open_files_on(pids: Collection[int], path: Path) -> int:
    """How many file descriptors of the processes ``pids`` are open on ``path``."""
    target = str(path.resolve())
    count = 0
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(fd_dir / name) == target:
                    count += 1
            except OSError:
                continue  # closed meanwhile
    return count


@dataclass
class ConnectionSampler:
    """Samples ``count(worker_pids)`` in a thread until stopped; keeps the maximum."""

    count: CountConnections
    pids: Collection[int]
    interval: float = SAMPLE_INTERVAL
    samples: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set() and len(self.samples) < MAX_SAMPLES:
            try:
                self.samples.append(self.count(self.pids))
            except Exception as exc:  # a failed probe must not end the soak silently
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if len(self.errors) > 10:
                    return
            self._stop.wait(self.interval)

    def __enter__(self) -> ConnectionSampler:
        self._thread = threading.Thread(target=self._loop, name="soak-connections", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def maximum(self) -> int:
        return max(self.samples, default=0)
