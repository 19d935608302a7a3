"""Servers that tests start themselves: on 127.0.0.1, on a free port, stopped by PID.

The shared servers of the machine (Redis, PostgreSQL, MariaDB) are used as they
run; tests that need a server to themselves (a Redis Cluster, a Sentinel, extra
memcached nodes, a Redis to kill in a fault test) start one with
:class:`ServerProcess`, which waits until the port answers and always stops the
process by its PID, escalating to SIGKILL, and never waits without a deadline.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .stores.registry import skip_or_fail

#: How long a server gets to start listening, and to exit once asked to.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def executable(name: str, install_hint: str) -> str:
    """The path of a server binary, or skip (fail under CI) saying how to install it."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed ({install_hint})")
    return path


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class ServerProcess:
    """One server process on 127.0.0.1:``port``, its output in ``log_path``."""

    def __init__(self, argv: Sequence[str], port: int, log_path: Path, cwd: Path | None = None):
        self.argv = list(argv)
        self.port = port
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ServerProcess({self.argv[0]!r}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> ServerProcess:
        """Start the process and wait until its port accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self!r} exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self!r} did not listen within {START_TIMEOUT}s")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process by its PID (``SIGKILL`` if it does not exit in time)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        """Kill the process at once, as a crash would."""
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
