"""Redis killed mid-run and restarted, under gunicorn (rule 13 over real HTTP).

gunicorn serves tests/faults/app.py with ``WORKERS`` worker processes of
``THREADS`` threads each, over a redis-server this test starts on a free port
(no persistence). Redis is killed (SIGKILL, as a crash) while the server runs:

* requests that never touch the session keep answering 200, on every worker;
* every worker answers a session request with a 500 naming the
  ``StoreError`` and the store, fast (within the timeout plus a margin: a
  refused connection, no hang), and sets no cookie;
* Redis comes back empty: the old cookie then reads as no session (strict
  mode: the unknown ID is not adopted; a write gets a new ID), and every
  worker serves sessions again;
* and they are the same worker processes: none was restarted (gunicorn kills
  a worker silent for longer than its timeout, so a hang would show here too).

The app answers an exception with a 500 naming the worker (``FAULTS_CATCH``)
so the test knows each worker saw the outage; the policy tests
(test_error_policy.py) let the exception reach gunicorn itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from ..http.harness import GunicornServer
from ..servers import ServerProcess
from .support import MARGIN, Timed, new_prefix, until_every_worker, worker_pids

pytestmark = pytest.mark.server

#: The store's timeout (seconds).
TIMEOUT = 1.0


def _session_ok(expected: dict[str, str]) -> Callable[[Timed], int]:
    def check(timed: Timed) -> int:
        reply = timed.ok()
        assert reply.status == 200, (timed.path, reply.status, reply.body)
        assert reply.json()["data"] == expected
        return int(reply.json()["pid"])

    return check


def _fails_cleanly(port: int) -> Callable[[Timed], int]:
    """A session request while Redis is down: a fast 500 naming the error."""

    def check(timed: Timed) -> int:
        reply = timed.ok()
        assert reply.status == 500, (timed.path, reply.status, reply.body)
        body = reply.json()
        assert body["error"] == "StoreError"
        assert f"RedisStore('redis://127.0.0.1:{port}/0')" in body["message"]
        assert reply.set_cookies == [], "a failed request must not set a cookie"
        assert timed.elapsed < TIMEOUT + MARGIN, f"{timed.path} took {timed.elapsed:.1f}s"
        return int(body["pid"])

    return check


def _untouched_ok(timed: Timed) -> int:
    reply = timed.ok()
    assert reply.status == 200, (timed.path, reply.status, reply.body)
    assert reply.set_cookies == []
    return int(reply.json()["pid"])


def test_redis_killed_and_restarted_under_gunicorn(
    redis_server: Callable[[], ServerProcess],
    serve: Callable[[Mapping[str, str]], GunicornServer],
) -> None:
    redis = redis_server()
    server = serve(
        {
            "FAULTS_STORE": "redis",
            "FAULTS_STORE_URL": f"redis://127.0.0.1:{redis.port}/0",
            "FAULTS_TIMEOUT": str(TIMEOUT),
            "FAULTS_KEY_PREFIX": new_prefix(),
            "FAULTS_CATCH": "1",
        }
    )
    workers = worker_pids(server)
    assert workers == server.worker_pids, "every worker answered the warm-up"

    created = server.get("/set?k=a&v=1")
    assert created.status == 200, server.log_tail()
    cookie = created.cookie()
    assert cookie
    # Every worker has read the session, so each has pooled Redis connections.
    until_every_worker(server, [("/get", cookie)] * 8, _session_ok({"a": "1"}), "before")

    redis.kill()
    until_every_worker(
        server,
        [("/get", cookie)] * 4 + [("/set?k=b&v=2", cookie)] * 2 + [("/set?k=c&v=3", None)] * 2,
        _fails_cleanly(redis.port),
        "while Redis is down, a session request",
    )
    until_every_worker(server, [("/pid", None)] * 8, _untouched_ok, "while Redis is down, /pid")

    redis.start()  # same port; it kept nothing
    again = server.get("/get", cookie)
    assert again.status == 200, server.log_tail()
    assert again.json() == {"pid": again.json()["pid"], "data": {}, "new": True}
    assert again.set_cookies == [], "an unknown ID is neither adopted nor answered"
    renewed = server.get("/set?k=a&v=again", cookie)
    assert renewed.status == 200, server.log_tail()
    new_cookie = renewed.cookie()
    assert new_cookie
    assert new_cookie != cookie, "strict mode: a write under an unknown ID gets a new ID"
    until_every_worker(server, [("/get", new_cookie)] * 8, _session_ok({"a": "again"}), "after")

    assert worker_pids(server) == workers, "a worker was restarted"
