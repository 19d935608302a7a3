"""Helpers of the fault tests: bounded waits, timed requests, gunicorn's workers."""

from __future__ import annotations

import concurrent.futures
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from wsgi_kvsession import StoreError
from wsgi_kvsession.stores import Store

from ..http.harness import GunicornServer, Reply, http_get
from ..stores.backend_redis import REDIS_URL, redis_store

_T = TypeVar("_T")

#: What every bound on a failure adds to the store's timeout: the machine is
#: shared and noisy, and the bound is there to catch a hang, not to time anything.
MARGIN = 3.0
#: The longest a test polls for a condition (every worker seen, a backend gone).
POLL_TIMEOUT = 20.0


def new_prefix() -> str:
    return "test:faults:" + secrets.token_hex(8) + ":"


@dataclass
class Timed:
    """One request's reply (or the exception it raised) and how long it took."""

    path: str
    reply: Reply | None
    error: BaseException | None
    elapsed: float

    def ok(self) -> Reply:
        assert self.reply is not None, f"{self.path}: {self.error!r}"
        return self.reply


def timed_get(port: int, path: str, cookie: str | None = None) -> Timed:
    started = time.monotonic()
    try:
        reply = http_get(port, path, cookie, timeout=30)
    except OSError as exc:
        return Timed(path, None, exc, time.monotonic() - started)
    return Timed(path, reply, None, time.monotonic() - started)


def burst(port: int, requests: Sequence[tuple[str, str | None]]) -> list[Timed]:
    """Send ``(path, cookie)`` requests at once, each on its own connection and
    thread; bounded by the requests' own socket timeouts (30 s)."""
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(timed_get, port, path, cookie) for path, cookie in requests]
        return [f.result(timeout=60) for f in futures]


def worker_pids(server: GunicornServer) -> set[int]:
    """The PIDs of the arbiter's children right now (Linux ``/proc``)."""
    arbiter = server.process.pid
    assert arbiter is not None, "gunicorn is not running"
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text()
    return {int(pid) for pid in children.split()}


def until_every_worker(
    server: GunicornServer,
    requests: Sequence[tuple[str, str | None]],
    check: Callable[[Timed], int],
    what: str,
) -> None:
    """Send bursts of ``requests`` until each worker has passed ``check``.

    ``check`` asserts what one reply must be (any failure ends the test) and
    returns the PID of the worker that answered. Bounded by ``POLL_TIMEOUT``.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + POLL_TIMEOUT
    while seen != server.worker_pids:
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what}: only workers {sorted(seen)} of {sorted(server.worker_pids)} "
                f"answered within {POLL_TIMEOUT}s\n{server.log_tail()}",
                pytrace=False,
            )
        for timed in burst(server.port, requests):
            seen.add(check(timed))


def fails_within(call: Callable[[], object], limit: float) -> tuple[StoreError, float]:
    """Run ``call``, which must raise :class:`StoreError` within ``limit`` seconds.

    It runs in a thread, so a call that hangs fails the test instead of
    hanging it (the thread is a daemon; the test's teardown closes the proxy
    or stops the server it waits on). Returns the error and the time taken.
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # checked below
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(limit + MARGIN)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        pytest.fail(f"still waiting after {elapsed:.1f}s (limit {limit:.1f}s): a hang")
    error = outcome[0]
    assert isinstance(error, StoreError), f"expected a StoreError, got {error!r}"
    assert elapsed < limit, f"failed only after {elapsed:.2f}s (limit {limit:.1f}s): {error}"
    return error, elapsed


def wait_until(condition: Callable[[], _T], what: str, timeout: float = POLL_TIMEOUT) -> _T:
    """Poll ``condition`` until it returns something true (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(0.05)


def redis_upstream() -> tuple[str, int]:
    """Host and port of the shared Redis (``KVSESSION_TEST_REDIS_URL``), for a
    proxy in front of it; skips (fails under CI) when it does not answer."""
    redis_store(REDIS_URL).close()
    from redis.connection import parse_url

    parsed = parse_url(REDIS_URL)
    if "host" not in parsed:
        pytest.skip(f"{REDIS_URL!r} is not a TCP Redis URL: no proxy can stand in front")
    return str(parsed["host"]), int(parsed.get("port", 6379))


def keys_under(store: Store, prefix: str) -> list[str]:
    return sorted(key for key, _ in store.iter_records(prefix))


def delete_under(store: Store, prefix: str) -> None:
    """Remove this test's records from a shared store (never a flush)."""
    for key in keys_under(store, prefix):
        store.delete(key)
