"""A gunicorn server the tests start, and the HTTP scenarios they run against it.

Used by the HTTP tests (``tests/http``) and by ``bench/lost_updates.py``, so
both measure the same thing. Every wait is bounded: each request has a socket
timeout, a scenario has a deadline, and the server is started and stopped
through :class:`tests.servers.ServerProcess` (by PID, escalating to SIGKILL).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..servers import ServerProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: gunicorn's shape: several processes, several threads each.
WORKERS = 4
THREADS = 4
#: A single request's socket timeout.
REQUEST_TIMEOUT = 30.0
#: The bound on one burst of parallel requests, all included.
SCENARIO_TIMEOUT = 60.0
#: How long the server gets to show that every worker answers.
WARM_UP_TIMEOUT = 20.0
#: Parallel requests on one session, each setting a key of its own.
N_PARALLEL = 40
#: The apps' session cookie (wsgi_kvsession's and Flask-Session's default).
COOKIE_NAME = "session"


class HarnessError(RuntimeError):
    """The server or a scenario did not behave (the message carries the server's log)."""


@dataclass
class Reply:
    status: int
    body: bytes
    set_cookies: list[str]
    #: Every header (``get`` ignores the case of the name).
    headers: http.client.HTTPMessage = field(default_factory=http.client.HTTPMessage)

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self, name: str = COOKIE_NAME) -> str | None:
        """The value this response sets for cookie ``name`` (None if it sets none;
        ``""`` when it expires it)."""
        for header in self.set_cookies:
            pair = header.split(";", 1)[0]
            key, _, value = pair.partition("=")
            if key.strip() == name:
                return value.strip().strip('"')
        return None


def http_get(
    port: int,
    path: str,
    cookie: str | None = None,
    *,
    cookie_name: str = COOKIE_NAME,
    timeout: float = REQUEST_TIMEOUT,
) -> Reply:
    """``GET path`` on 127.0.0.1:``port`` over a fresh connection, sending exactly
    the given session cookie (no cookie jar: each request says what it carries)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if cookie is not None:
            headers["Cookie"] = f"{cookie_name}={cookie}"
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return Reply(
            response.status,
            body,
            response.msg.get_all("Set-Cookie") or [],
            response.msg,
        )
    finally:
        connection.close()


class GunicornServer:
    """``gunicorn -w 4 -k gthread --threads 4`` serving ``target`` on a free port.

    ``env`` reaches the app through gunicorn's ``raw_env`` in a config file of
    its own (mode 0600), not the command line, so a database URL with a password
    is not shown by ``ps``. stdout and stderr go to ``gunicorn.log`` in
    ``work_dir``; :meth:`log_tail` gives its end for failure messages.
    """

    def __init__(
        self,
        target: str,
        env: Mapping[str, str],
        work_dir: Path,
        *,
        workers: int = WORKERS,
        threads: int = THREADS,
    ) -> None:
        self.target = target
        self.work_dir = work_dir
        self.workers = workers
        self.port = free_port()
        config = work_dir / "gunicorn.conf.py"
        settings = {
            "bind": f"127.0.0.1:{self.port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "chdir": str(REPO_ROOT),
            "raw_env": [f"{k}={v}" for k, v in env.items()],
            # A worker stuck longer than a request may take is killed (and logged).
            "timeout": int(REQUEST_TIMEOUT),
            # Stopping must fit in ServerProcess's 5 s before it escalates to SIGKILL.
            "graceful_timeout": 3,
            "errorlog": "-",
            "loglevel": "warning",
        }
        config.touch(mode=0o600)
        config.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
        argv = [sys.executable, "-m", "gunicorn", "-c", str(config), target]
        self.process = ServerProcess(argv, self.port, work_dir / "gunicorn.log", cwd=REPO_ROOT)
        self.worker_pids: set[int] = set()

    def __repr__(self) -> str:
        return f"GunicornServer({self.target!r}, port={self.port})"

    def start(self) -> GunicornServer:
        try:
            self.process.start()
        except RuntimeError as exc:
            raise HarnessError(f"{self!r} did not start: {exc}\n{self.log_tail()}") from exc
        self.warm_up()
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        return f"--- gunicorn log (last {lines} lines) ---\n{self.process.log_tail(lines)}"

    def get(self, path: str, cookie: str | None = None) -> Reply:
        return http_get(self.port, path, cookie)

    def warm_up(self) -> None:
        """Wait until every worker has answered a request (bounded).

        The port accepts connections as soon as the arbiter binds it, before the
        workers have imported the app; a burst sent then would be served by
        whichever worker came up first, and race less than it should.
        """
        deadline = time.monotonic() + WARM_UP_TIMEOUT
        while len(self.worker_pids) < self.workers:
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{self!r}: only workers {sorted(self.worker_pids)} answered within "
                    f"{WARM_UP_TIMEOUT}s\n{self.log_tail()}"
                )
            replies = fire_parallel(self.port, ["/pid"] * (self.workers * 4), None, timeout=10)
            for reply in replies:
                if isinstance(reply, Reply) and reply.status == 200:
                    self.worker_pids.add(reply.json()["pid"])


def fire_parallel(
    port: int,
    paths: Sequence[str],
    cookie: str | None,
    *,
    timeout: float = SCENARIO_TIMEOUT,
) -> list[Reply | BaseException]:
    """Send every request of ``paths`` at once, each on its own thread and connection.

    The threads are released together by a barrier. Returns, per path, its
    reply or the exception it raised; raises :class:`HarnessError` if the whole
    burst has not finished within ``timeout`` (each request also has its socket
    timeout, so no thread outlives that for long).
    """
    barrier = threading.Barrier(len(paths), timeout=timeout)

    def one(path: str) -> Reply:
        barrier.wait()
        return http_get(port, path, cookie, timeout=min(REQUEST_TIMEOUT, timeout))

    pool = concurrent.futures.ThreadPoolExecutor(len(paths), thread_name_prefix="burst")
    try:
        futures = [pool.submit(one, path) for path in paths]
        _done, pending = concurrent.futures.wait(futures, timeout=timeout)
        if pending:
            barrier.abort()
            raise HarnessError(
                f"{len(pending)} of {len(paths)} requests still running after {timeout}s"
            )
        results: list[Reply | BaseException] = []
        for future in futures:
            error = future.exception()
            results.append(error if error is not None else future.result())
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class LostUpdateRun:
    """One run of the scenario: what the parallel requests got, what survived."""

    session_id: str
    statuses: Counter[str] = field(default_factory=Counter)
    #: Keys whose request answered 200 but whose value is not in the session.
    lost: list[str] = field(default_factory=list)
    #: Keys whose request failed (not 200, or no answer); missing from the session too.
    failed: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    final: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Every key that is not in the session afterwards."""
        return self.lost + self.failed

    def describe(self) -> str:
        return (
            f"statuses {dict(self.statuses)}, served by workers {sorted(self.pids)}; "
            f"{len(self.missing)} of {N_PARALLEL} keys missing (lost after a 200: {self.lost}, "
            f"from failed requests: {self.failed}); final session keys: {sorted(self.final)}"
        )


def lost_update_run(port: int, *, n: int = N_PARALLEL, delay: float = 0.0) -> LostUpdateRun:
    """One session, then ``n`` parallel ``/set?k=keyI&v=I`` on it, then read it back.

    ``delay`` makes each request load the session and wait that long before
    writing (the app's ``delay`` parameter), so the requests overlap for sure.
    """
    first = http_get(port, "/set?k=init&v=0")
    session_id = first.cookie()
    if first.status != 200 or not session_id:
        raise HarnessError(f"the first request got {first.status}, cookies {first.set_cookies}")
    suffix = f"&delay={delay}" if delay else ""
    paths = [f"/set?k=key{i}&v={i}{suffix}" for i in range(n)]
    replies = fire_parallel(port, paths, session_id)
    final_reply = http_get(port, "/get", session_id)
    if final_reply.status != 200:
        raise HarnessError(f"reading the session back got {final_reply.status}")
    run = LostUpdateRun(session_id, final=final_reply.json()["data"])
    for i, reply in enumerate(replies):
        key = f"key{i}"
        ok = isinstance(reply, Reply) and reply.status == 200
        run.statuses[str(reply.status) if isinstance(reply, Reply) else type(reply).__name__] += 1
        if isinstance(reply, Reply) and reply.status == 200:
            run.pids.add(reply.json()["pid"])
        if run.final.get(key) != str(i):
            (run.lost if ok else run.failed).append(key)
    return run


def median(values: Sequence[int]) -> float:
    return statistics.median(values) if values else 0.0
