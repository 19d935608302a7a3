"""A slow or hung store against its ``timeout``: Redis, memcached, PostgreSQL.

Each store reaches its real server through a :class:`FaultProxy`, which
delays every reply by a chosen time, or forwards nothing at all (a black
hole: the connection stays open and silent, as with a hung server). With
``timeout=T``:

* replies late by less than ``T`` cost time, not errors: every operation
  works, through the store and through the middleware;
* replies late by more than ``T`` fail the operation with a
  :class:`StoreError` within ``T`` (+ 0.5 s for PostgreSQL, whose client-side
  deadline leaves the server's ``statement_timeout`` the first word) plus a
  margin, without a retry (no second connection while it waited);
* the late reply, when it does arrive, is never taken for the answer to a
  later command: the connection that timed out is not reused (a client that
  reused it would return one session's record for another's key);
* a black hole fails a warm connection within the same bound, and a new
  connection within the store's connect bound.

tests/stores/ already shows each store failing within its timeout against a
port that never answers; these tests add the delays on either side of the
timeout, the recovery, and the stale reply.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import client_for, set_cookies
from wsgi_kvsession import Session
from wsgi_kvsession.stores import Store

from ..servers import ServerProcess
from ..stores.backend_redis import REDIS_URL, redis_store
from ..stores.backend_sql import table_name
from .app import build_store
from .proxy import FaultProxy
from .support import MARGIN, delete_under, fails_within, new_prefix, redis_upstream

pytestmark = pytest.mark.server

KINDS = ["redis", "memcached", "postgresql"]
TIMEOUT = 1.0
#: How far past ``timeout`` a store gives up on a warm connection, by design.
GRACE = {"redis": 0.0, "memcached": 0.0, "postgresql": 0.5}
#: The bound on an operation that must open a new connection to a hung server:
#: libpq's connect_timeout is whole seconds, at least 2.
CONNECT_BOUND = {
    "redis": TIMEOUT,
    "memcached": TIMEOUT,
    "postgresql": max(2.0, math.ceil(TIMEOUT)) + GRACE["postgresql"],
}
#: A delay a store with ``PATIENT_TIMEOUT`` must absorb, and one a store with
#: ``TIMEOUT`` must give up on.
PATIENT_TIMEOUT = 2.0
SHORT_DELAY = 0.25
LONG_DELAY = TIMEOUT + 1.0


def later(seconds: float = 600.0) -> float:
    return time.time() + seconds


@dataclass
class Slow:
    kind: str
    proxy: FaultProxy
    #: The store under test, through the proxy, with ``timeout=TIMEOUT``.
    store: Store
    #: A store straight on the server, to look at (and set up) the records.
    direct: Store
    #: Another store through the proxy, with the timeout given.
    through: Callable[[float], Store]
    #: Every key of the test starts with it (removed from the shared Redis after).
    prefix: str

    def new_key(self) -> str:
        return self.prefix + secrets.token_hex(32)

    @property
    def warm_bound(self) -> float:
        return TIMEOUT + GRACE[self.kind] + MARGIN


@pytest.fixture(params=KINDS)
def slow(
    request: pytest.FixtureRequest,
    proxy: Callable[[tuple[str, int]], FaultProxy],
    memcached_nodes: Callable[[int], list[ServerProcess]],
) -> Iterator[Slow]:
    kind: str = request.param
    cleanup: list[Callable[[], None]] = []
    table: str | None = None
    prefix = new_prefix()
    try:
        if kind == "redis":
            front = proxy(redis_upstream())
            direct = redis_store(REDIS_URL)
            cleanup.append(lambda: delete_under(direct, prefix))
            proxied = f"redis://127.0.0.1:{front.port}/0"
        elif kind == "memcached":
            (node,) = memcached_nodes(1)
            front = proxy(("127.0.0.1", node.port))
            direct = build_store(kind, f"memcached://127.0.0.1:{node.port}", 5.0)
            proxied = f"memcached://127.0.0.1:{front.port}"
        else:
            url_text = str(request.getfixturevalue("postgresql_url"))  # skips if unreachable
            import sqlalchemy as sa

            from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore

            url = sa.engine.make_url(url_text)
            table = table_name()
            sql = build_store(kind, url.render_as_string(False), 5.0, table)
            assert isinstance(sql, SQLAlchemyStore)
            sql.create_table()
            cleanup.append(lambda: sql.table.drop(sql.engine, checkfirst=True))
            direct = sql
            front = proxy((url.host or "127.0.0.1", url.port or 5432))
            proxied = url.set(host="127.0.0.1", port=front.port).render_as_string(False)
        cleanup.insert(0, direct.close)  # last

        def through(timeout: float) -> Store:
            store = build_store(kind, proxied, timeout, table)
            cleanup.append(store.close)
            return store

        yield Slow(kind, front, through(TIMEOUT), direct, through, prefix)
    finally:
        for step in reversed(cleanup):
            step()


def _routes(session: Session, request: Any) -> Any:
    if request.path == "/set":
        session.update(request.args.items())
        return None
    return repr(dict(session))


def test_replies_late_but_within_the_timeout_work(slow: Slow) -> None:
    # A timeout with room to spare over the delay: on a loaded machine the
    # proxy's own wake-ups may add a few tenths of a second to each reply.
    store = slow.through(PATIENT_TIMEOUT)
    key = slow.new_key()
    assert slow.direct.insert(key, b"existing", later())
    slow.proxy.delay(SHORT_DELAY)
    record = store.load(key)
    assert record is not None
    assert record.value == b"existing"
    assert store.update(key, b"updated", later(), version=record.version) is True
    assert store.touch(key, later(1200)) is True
    updated = slow.direct.load(key)
    assert updated is not None
    assert updated.value == b"updated"
    # And requests through the middleware: an insert, a load and an update.
    client = client_for(_routes, store, key_prefix=slow.prefix)
    assert set_cookies(client.get("/set?a=1"))
    assert client.get("/set?b=2").status_code == 200
    assert slow.proxy.accepted["forward"] >= 1  # it did go through the proxy
    slow.proxy.delay(0)
    assert client.get("/read").text == "{'a': '1', 'b': '2'}"


def test_replies_later_than_the_timeout_fail_fast_and_never_answer_another_call(
    slow: Slow,
) -> None:
    mine, theirs = slow.new_key(), slow.new_key()
    assert slow.direct.insert(mine, b"mine", later())
    assert slow.direct.insert(theirs, b"theirs", later())
    assert slow.store.load(mine) is not None  # warm: a pooled connection
    connections = sum(slow.proxy.accepted.values())

    slow.proxy.delay(LONG_DELAY)
    error, elapsed = fails_within(lambda: slow.store.load(mine), slow.warm_bound)
    assert type(slow.store).__name__ in str(error)
    assert sum(slow.proxy.accepted.values()) == connections, "a timeout was retried"

    # The late reply to that load arrives now; later calls must not read it.
    slow.proxy.delay(0)
    time.sleep(max(0.0, LONG_DELAY - elapsed) + 0.3)
    for _ in range(3):
        record = slow.store.load(theirs)
        assert record is not None
        assert record.value == b"theirs", "the reply of an earlier call was taken for this one"
        again = slow.store.load(mine)
        assert again is not None
        assert again.value == b"mine"


def test_a_black_hole_fails_fast_on_warm_and_new_connections(slow: Slow) -> None:
    key = slow.new_key()
    client = client_for(_routes, slow.store, key_prefix=slow.prefix)
    assert set_cookies(client.get("/set?a=1"))  # warm
    assert slow.direct.insert(key, b"v", later())

    slow.proxy.black_hole()
    # The pooled connection hangs: the request fails within the timeout.
    fails_within(lambda: client.get("/read"), slow.warm_bound)
    # Its connection was dropped; the next call opens a new one, which hangs too.
    fails_within(lambda: slow.store.load(key), CONNECT_BOUND[slow.kind] + MARGIN)
    assert slow.proxy.accepted["black_hole"] >= 1

    slow.proxy.forward()
    assert client.get("/read").text == "{'a': '1'}"
    record = slow.store.load(key)
    assert record is not None
    assert record.value == b"v"
