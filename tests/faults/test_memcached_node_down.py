"""One memcached node of a three-node ``HashClient`` pool down, seen by sessions.

The store-level behaviour (every operation on a dead node's keys raises,
nothing moves to another node, threads racing a restart) is tested in
tests/stores/test_memcached_store.py. Here the same outage goes through the
middleware, with each ``on_store_error`` policy, for users whose sessions
live on different nodes:

* sessions on the live nodes keep working, reads and writes;
* a session on the dead node is never a silent miss: with ``"raise"`` the
  request fails with a :class:`StoreError` naming the node; with ``"empty"``
  it continues with an empty session, and in neither case does the user get a
  new session (no ``Set-Cookie``, nothing written on another node) under the
  cookie they hold;
* a new visitor whose new ID hashes to the dead node fails the same way
  (``"raise"``) or gets no session yet (``"empty"``); one whose ID hashes to a
  live node gets a session;
* when the node comes back (empty: memcached keeps nothing), its users'
  cookies read as no session, new sessions land on it again, and the other
  nodes' sessions were never disturbed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from werkzeug.test import Client

from tests.support import client_for, set_cookies
from wsgi_kvsession import Session, StoreError
from wsgi_kvsession.ids import store_key

from ..servers import ServerProcess
from ..stores.backend_memcached import url_of
from .support import new_prefix

pymemcache = pytest.importorskip("pymemcache", reason="pymemcache is not installed")

from pymemcache.client.base import Client as MemcacheClient  # noqa: E402

from wsgi_kvsession.stores.memcache import MemcacheStore, _memcached_key  # noqa: E402

pytestmark = pytest.mark.server

NODES = 3
TIMEOUT = 1.0
#: Sessions per node the test wants before it stops the first node.
PER_NODE = 3
MAX_SESSIONS = 200


def _routes(session: Session, request: Any) -> Any:
    if request.path == "/set":
        session.update(request.args.items())
        return None
    return repr(dict(session))


class Pool:
    """Three nodes, the store over them, and a direct client per node."""

    def __init__(self, nodes: list[ServerProcess], policy: str) -> None:
        self.nodes = nodes
        self.prefix = new_prefix()
        self.store = MemcacheStore(url_of(*nodes), timeout=TIMEOUT)
        self.policy = policy

    def client(self) -> Client:
        return client_for(_routes, self.store, key_prefix=self.prefix, on_store_error=self.policy)

    def direct(self, node: ServerProcess) -> MemcacheClient:
        return MemcacheClient(("127.0.0.1", node.port), connect_timeout=5, timeout=5)

    def holder(self, session_id: str) -> ServerProcess:
        """The one running node that holds the record of ``session_id``."""
        holding = [n for n in self.nodes if n.pid is not None and self.on_node(n, session_id)]
        assert len(holding) == 1, f"the record is on {len(holding)} nodes"
        return holding[0]

    def on_node(self, node: ServerProcess, session_id: str) -> bool:
        mkey = _memcached_key(store_key(self.prefix, session_id), 250)
        return self.direct(node).get(mkey) is not None


def _cookie(client: Client) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def _users(pool: Pool) -> dict[int, list[tuple[Client, str, str]]]:
    """Sessions (client, session ID, value) sorted by the port of their node,
    at least ``PER_NODE`` on each node."""
    by_port: dict[int, list[tuple[Client, str, str]]] = {n.port: [] for n in pool.nodes}
    for i in range(MAX_SESSIONS):
        if min(len(users) for users in by_port.values()) >= PER_NODE:
            return by_port
        client = pool.client()
        value = f"user{i}"
        assert client.get(f"/set?name={value}").status_code == 200
        session_id = _cookie(client)
        by_port[pool.holder(session_id).port].append((client, session_id, value))
    pytest.fail(f"{MAX_SESSIONS} sessions did not reach every node: {by_port}")


@pytest.mark.parametrize("policy", ["raise", "empty"])
def test_one_node_down_fails_only_its_sessions_loudly(
    memcached_nodes: Callable[[int], list[ServerProcess]], policy: str
) -> None:
    pool = Pool(memcached_nodes(NODES), policy)
    users = _users(pool)
    dead, *alive = pool.nodes
    dead.kill()

    for node in alive:
        for client, session_id, value in users[node.port]:
            assert client.get("/read").text == repr({"name": value})
            response = client.get("/set?seen=down")
            assert response.status_code == 200
            assert set_cookies(response) == []  # updated in place
            assert client.get("/read").text == repr({"name": value, "seen": "down"})
            assert _cookie(client) == session_id

    for client, session_id, _ in users[dead.port]:
        for path in ("/read", "/set?seen=down"):
            if policy == "raise":
                with pytest.raises(StoreError, match=rf"on node 127\.0\.0\.1:{dead.port}"):
                    client.get(path)
            else:
                response = client.get(path)
                assert response.status_code == 200
                assert set_cookies(response) == [], "a new session under the user's cookie"
                if path == "/read":
                    assert response.text == "{}"
        assert _cookie(client) == session_id
        # Nothing was written for this user anywhere else.
        assert not any(pool.on_node(node, session_id) for node in alive)

    # New visitors: a new ID on a live node gets a session, one on the dead
    # node fails (raise) or gets none (empty); never a session on the wrong node.
    outcomes = {"stored": 0, "refused": 0}
    for _ in range(30):
        client = pool.client()
        if policy == "raise":
            try:
                client.get("/set?new=1")
                refused = None
            except StoreError as exc:
                refused = str(exc)
            if refused is not None:
                assert f"node 127.0.0.1:{dead.port}" in refused
                assert client.get_cookie("session") is None
        else:
            response = client.get("/set?new=1")
            assert response.status_code == 200
            refused = None if set_cookies(response) else "no cookie"
        if refused is not None:
            outcomes["refused"] += 1
        else:
            assert pool.holder(_cookie(client)) in alive
            outcomes["stored"] += 1
    assert outcomes["stored"] > 0, outcomes
    assert outcomes["refused"] > 0, outcomes

    dead.start()  # the same port; memcached kept nothing
    for client, session_id, _ in users[dead.port]:
        response = client.get("/read")
        assert response.status_code == 200
        assert response.text == "{}"
        assert set_cookies(response) == []  # the unknown ID is not adopted
        response = client.get("/set?again=1")
        assert set_cookies(response), "a write gets a session again"
        assert _cookie(client) != session_id  # with a new ID (strict mode)
    for node in alive:
        for client, _, value in users[node.port]:
            assert client.get("/read").text == repr({"name": value, "seen": "down"})
    # New sessions land on the node that came back again.
    for _ in range(100):
        client = pool.client()
        client.get("/set?after=1")
        if pool.holder(_cookie(client)) is dead:
            break
    else:
        pytest.fail("no new session landed on the node that came back")
    pool.store.close()
