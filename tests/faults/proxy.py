"""A TCP proxy that puts a fault between a store and its real server.

:class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards every
connection to ``upstream`` (a real Redis, memcached or PostgreSQL), in one of
three modes the test switches at any moment:

``forward`` (with :meth:`FaultProxy.delay`)
    every chunk the server sends reaches the client ``delay`` seconds after it
    arrived (measured per chunk, so a reply split into several packets is late
    by ``delay``, not by a multiple of it): a slow store, or a slow network;
``black_hole``
    nothing is forwarded any more, in either direction, and new connections
    are accepted and then left unanswered, yet every socket stays open: a hung
    server, or a partition the kernel does not report. Only the client's own
    timeout ends its wait;
``refuse``
    the listening socket is closed (a new connection is refused, as when the
    server process is gone) and so is every open connection (as the kernel
    closes a killed server's sockets). :meth:`FaultProxy.forward` listens again
    on the same port.

Data behind the proxy survives every mode, which is what lets a test check
that nothing overwrote a user's session while the store was "down".

Every wait is bounded: each thread polls a stop flag at least every 50 ms,
:meth:`FaultProxy.close` shuts every socket down and joins every thread with a
timeout, and a send to a client that stopped reading gives up after
``SEND_TIMEOUT``.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

#: The longest a thread waits before it looks at the mode and the stop flag again.
POLL = 0.05
#: The longest a send to a peer that does not read may block.
SEND_TIMEOUT = 5.0
#: How long close() waits for each thread.
JOIN_TIMEOUT = 2.0
CHUNK = 65536


class FaultProxy:
    """A proxy on ``127.0.0.1:port`` to ``upstream``; see the module docstring."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        #: Connections accepted in each mode (a retry shows up here).
        self.accepted: collections.Counter[str] = collections.Counter()
        self._mode = "forward"
        self._delay = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listen()
        self._spawn(self._accept_loop)

    def __repr__(self) -> str:
        return f"FaultProxy(:{self.port} -> {self.upstream[0]}:{self.upstream[1]}, {self.mode})"

    # -- the modes -------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def delay(self, seconds: float) -> None:
        """Forward, each chunk from the server ``seconds`` late (0: at once)."""
        if seconds < 0:
            raise ValueError(f"delay({seconds!r}): give seconds >= 0")
        self._delay = float(seconds)
        self.forward()

    def forward(self) -> None:
        """Forward again (keeping the delay); listen again after :meth:`refuse`."""
        with self._lock:
            if self._listener is None:
                self._listen()
            self._mode = "forward"

    def black_hole(self) -> None:
        """Forward nothing from now on; leave every connection open (and accept
        new ones, listening again after :meth:`refuse`)."""
        with self._lock:
            if self._listener is None:
                self._listen()
            self._mode = "black_hole"

    def refuse(self) -> None:
        """Refuse new connections and close the open ones."""
        with self._lock:
            self._mode = "refuse"
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        for sock in [listener, *connections]:
            if sock is not None:
                _shut(sock)

    def close(self) -> None:
        """Stop everything; bounded (each thread gets ``JOIN_TIMEOUT``)."""
        self._stop.set()
        self.refuse()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the machinery ---------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
        except OSError:
            listener.close()
            raise
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._mode == "refuse" or self._stop.is_set():
                return False
            self._connections.append(sock)
            return True

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                self._stop.wait(POLL)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], POLL)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by refuse() or close()
                continue
            client.settimeout(SEND_TIMEOUT)  # recv() only runs once select() said ready
            mode = self._mode
            self.accepted[mode] += 1
            if not self._keep(client):
                _shut(client)
                continue
            if mode == "black_hole":
                continue  # accepted, never answered
            try:
                server = socket.create_connection(self.upstream, timeout=SEND_TIMEOUT)
            except OSError:  # the real server is down: so is the proxy
                _shut(client)
                continue
            if not self._keep(server):
                _shut(server)
                _shut(client)
                continue
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _pump(self, source: socket.socket, target: socket.socket, delayed: bool) -> None:
        """Copy ``source`` to ``target``; ``delayed``: each chunk ``delay`` s late."""
        pending: collections.deque[tuple[float, bytes]] = collections.deque()
        source_open = True
        try:
            while not self._stop.is_set() and (source_open or pending):
                if self._mode == "black_hole":
                    self._stop.wait(POLL)  # read nothing, send nothing
                    continue
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    target.sendall(pending.popleft()[1])
                if not source_open:
                    self._stop.wait(min(POLL, max(0.0, pending[0][0] - now)))
                    continue
                wait = POLL if not pending else min(POLL, max(0.0, pending[0][0] - now))
                ready, _, _ = select.select([source], [], [], wait)
                if not ready or self._mode == "black_hole":
                    continue
                data = source.recv(CHUNK)
                if not data:
                    source_open = False
                    continue
                due = time.monotonic() + (self._delay if delayed else 0.0)
                pending.append((due, data))
            if not source_open:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):  # a side closed (refuse(), close(), the peer)
            pass
        finally:
            # One side gone: end the connection, as a server or client would.
            if not self._stop.is_set() and self._mode != "black_hole":
                _shut(source)
                _shut(target)


def _shut(sock: socket.socket) -> None:
    """Close ``sock`` and wake any thread blocked on it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
