"""memcached, over pymemcache: one server, or several through ``HashClient``.

Each record is one memcached item: a 20-byte header (a magic, the expiry as a
double, a random 64-bit version token) followed by the value. memcached cannot
tell a client a key's remaining lifetime (its TTL has whole-second resolution
anyway), and a version must survive a touch while changing on every write, so
both live in the header, which every read checks. memcached's own expiry is set
on every write as well, a second or two late, only so that memcached reclaims
the memory by itself: the header decides what is live.

Atomicity comes from memcached's ``add`` (insert-if-absent) and ``gets``/``cas``
(compare-and-set on the item's CAS unique):

* insert: ``add``; when the key is taken by an item whose header says it has
  expired (memcached only expires in whole seconds), ``gets`` + ``cas`` over it;
* update, touch and delete: ``cas`` of the new item against the CAS unique read
  by :meth:`MemcacheStore.load`. The store remembers, in a small bounded map,
  the token, CAS unique, expiry and value each load saw, so the write that
  follows the load of a request is ONE round trip. When the map has nothing (or
  the ``cas`` finds the item changed) the store reads again with ``gets`` and
  retries, a bounded number of times. A touch rewrites the header keeping the
  token and value, which is why it is a ``cas`` and not memcached's ``touch``
  (that would leave the header's expiry stale);
* delete: memcached has no compare-and-delete, so a delete is a ``cas`` to an
  empty tombstone whose header says expired. It is atomic, with or without a
  version: nothing written after the read can be deleted by mistake. The
  tombstone carries a token of its own and memcached keeps it a few seconds
  (longer than a retry can take, see below), so that a delete whose answer a
  dropped connection lost recognises its own tombstone when it reads again.
  (An insert under a key deleted seconds ago replaces the tombstone with a
  ``gets`` + ``cas`` after its ``add`` fails; session keys are never reused.)

A command that fails on a connection the server closed (a restarted memcached,
a reply lost on the way) is sent once more on a new connection, after every
idle connection to that server is dropped (they are all stale after a
restart). Every write is built so that meeting its own earlier result counts
as success: an ``add`` or ``cas`` finds its own token, a delete its own
tombstone.

Every write needs memcached's CAS uniques: a server started with ``-C`` (CAS
disabled) answers 0 for every item, which the store refuses with a
:class:`StoreError` that says so.

After a ``fork()``, the child never uses the parent's connections: the first
call in a new process drops them (closing only the child's copies of the
descriptors, which leaves the parent's connections open) and builds a new
client.

The exptime sent to memcached is relative seconds up to 30 days and an
absolute Unix time beyond (memcached reads anything over 2,592,000 as absolute,
so long sessions depend on the server's clock agreeing with this machine's);
it is never 0 (which means "never expires"), and a record whose expiry has
passed is written with a negative exptime, i.e. not kept.

Keys: memcached keys are at most 250 bytes of printable ASCII without spaces.
A non-empty store key that is such (and does not start with ``~``) is used as it is, so
``session:<sha256 hex>`` is readable in memcached's tools; any other key becomes
``~`` + its SHA-256 in hex. The two forms can never collide.

Operational notes: memcached keeps nothing across a restart and evicts items
under memory pressure (an evicted session is a logged-out user); its default
item size limit (``-I 1m``) rejects values close to 1 MiB with
"object too large for cache", raised as :class:`StoreError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .base import Record, Store, StoreError, Version, mask_url

try:
    from pymemcache.client.base import Client, PooledClient
    from pymemcache.client.hash import HashClient
    from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError
    from pymemcache.pool import ObjectPool
    from pymemcache.serde import LegacyWrappingSerde
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "MemcacheStore needs pymemcache: pip install 'wsgi-kvsession[memcached]'"
    ) from exc

__all__ = ["MemcacheStore"]

DEFAULT_PORT = 11211

# Item layout: magic, expiry (Unix time, float64), version token (uint64), value.
# A tombstone (a deleted record) is a header alone whose expiry is 0.0.
_MAGIC = b"KVM1"
_HEADER = struct.Struct(">4sdQ")

#: memcached reads an exptime above this (30 days) as an absolute Unix time.
_MAX_RELATIVE = 30 * 24 * 3600
#: Added to every exptime: memcached's clock ticks once a second, so an item may
#: otherwise vanish up to a second before the expiry its header promises.
_EXPIRY_SLACK = 1
#: An exptime memcached treats as "already expired" (protocol.txt: negative).
_EXPIRED = -1

#: Printable ASCII without space: what memcached accepts in a key.
_KEY_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F))
_MAX_KEY = 250
_HASHED_MARK = "~"

#: Attempts of one write's read-compare-write loop before giving up: each
#: failed attempt means another writer changed the item in between.
_MAX_ATTEMPTS = 64

#: Bounds of the map of recent loads (entries, and bytes of values held).
_SEEN_ENTRIES = 1024
_SEEN_BYTES = 8 * 1024 * 1024

#: Errors of a connection the server closed: one that sat idle in the pool
#: while memcached restarted, or one dropped before the reply came. The call is
#: retried once on a fresh connection (see ``_call``).
_STALE_CONNECTION = (MemcacheUnexpectedCloseError, ConnectionResetError, BrokenPipeError)
#: A failure that says the server went away (refused, reset, closed): the
#: server's idle pooled connections are dropped too, as they are most likely as
#: dead. A timeout is not one: a slow server has not restarted, and dropping
#: its connections would only add connects to a server already struggling.
_CONNECTION_ERROR = (MemcacheUnexpectedCloseError, OSError)


@dataclass(frozen=True, slots=True)
class _Item:
    expires_at: float
    token: int
    value: bytes


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a load saw: enough to ``cas`` the next write without reading again."""

    cas: bytes
    expires_at: float
    token: int
    value: bytes


def _new_token() -> int:
    # Random, never 0 (the tombstone's): a version never repeats, even for a
    # key deleted and created again.
    return secrets.randbits(64) | 1


def _pack(expires_at: float, token: int, value: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, expires_at, token) + value


def _unpack(raw: object) -> _Item | None:
    """The item in ``raw``, or None for anything that is not one of ours."""
    if not isinstance(raw, bytes) or len(raw) < _HEADER.size:
        return None
    magic, expires_at, token = _HEADER.unpack_from(raw)
    # A NaN expiry compares false both ways, so it would never expire: not ours.
    if magic != _MAGIC or token == 0 or not math.isfinite(expires_at):
        return None
    return _Item(expires_at, token, raw[_HEADER.size :])


def _exptime(expires_at: float, now: float) -> int:
    """memcached's exptime for a record that expires at ``expires_at``."""
    remaining = expires_at - now
    if remaining <= 0:
        return _EXPIRED  # never 0: that would mean "never expires"
    seconds = math.ceil(remaining) + _EXPIRY_SLACK
    if seconds <= _MAX_RELATIVE:
        return seconds
    return math.ceil(expires_at) + _EXPIRY_SLACK


def _memcached_key(key: str, max_len: int) -> str:
    if (
        0 < len(key) <= max_len
        and not key.startswith(_HASHED_MARK)
        and all(c in _KEY_SAFE for c in key)
    ):
        return key
    # surrogatepass: any str at all has an encoding, so any key has a hash.
    return _HASHED_MARK + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _parse_server(spec: str, where: str) -> tuple[str, int]:
    host, port_text = spec, ""
    if spec.startswith("["):  # [IPv6]:port
        end = spec.find("]")
        if end < 0:
            raise ValueError(f"{where}: unterminated IPv6 address in {spec!r}")
        host, rest = spec[1:end], spec[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{where}: expected ':port' after {spec[: end + 1]!r}")
        port_text = rest[1:]
    elif ":" in spec:
        host, _, port_text = spec.rpartition(":")
    if not host:
        raise ValueError(f"{where}: a server needs a host, got {spec!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where}: bad port {port_text!r} in {spec!r}")
    return host, int(port_text)


def _parse_url(url: str) -> list[tuple[str, int]]:
    shown = mask_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "memcached":
        raise ValueError(f"MemcacheStore URL {shown!r}: use memcached://host:port[,host2:port2...]")
    netloc, _, tail = rest.partition("/")
    netloc, query_mark, _ = netloc.partition("?")
    if tail.strip("/") or query_mark or "?" in tail or "#" in rest:
        raise ValueError(
            f"MemcacheStore URL {shown!r}: takes only hosts, no path, query or fragment"
        )
    if "@" in netloc:
        # memcached's text protocol has no authentication (pymemcache speaks no
        # SASL): a password here would be silently ignored, so refuse it.
        raise ValueError(
            f"MemcacheStore URL {shown!r}: memcached has no password authentication "
            "over its text protocol; remove the user:password@ part"
        )
    specs = [unquote(s.strip()) for s in netloc.split(",")]
    if not any(specs):
        raise ValueError(f"MemcacheStore URL {shown!r}: name at least one host")
    return [_parse_server(s, f"MemcacheStore URL {shown!r}") for s in specs]


def _server_text(server: object) -> str:
    if isinstance(server, tuple) and len(server) == 2:
        host, port = server
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(server)


class _NoFailoverHashClient(HashClient):  # type: ignore[misc]
    """A ``HashClient`` without failover: every call goes to its key's node.

    pymemcache's bookkeeping of failing nodes first answers a failing node's
    calls with a default (a read becomes a miss), then removes the node so that
    its keys hash to another node; and it is not thread-safe (two threads that
    see a node recover both ``_failed_clients.pop`` it: KeyError). For sessions
    a miss is a logged-out user, and a session written to another node is lost
    again when its node returns. Here a call to a node that is down simply
    raises, every time, and the node is used again as soon as it answers.
    """

    def _safely_run_func(
        self, client: Any, func: Any, default_val: Any, *args: Any, **kwargs: Any
    ) -> Any:
        return func(*args, **kwargs)

    def _mark_failed_server(self, server: Any) -> None:
        pass  # no bookkeeping: nothing ever reads it


class MemcacheStore(Store):
    """Keeps records in memcached, through pymemcache.

    Give ONE of:

    * ``url``: ``memcached://host:port`` or ``memcached://h1:11211,h2:11211``
      (port 11211 by default, IPv6 hosts in brackets);
    * ``servers``: a list of ``(host, port)`` pairs (or ``"host:port"``);
    * ``client``: a ready pymemcache client (``Client``, ``PooledClient``,
      ``HashClient``), used as it is (its own timeouts and options apply).

    One server gets a ``PooledClient`` (pymemcache's plain ``Client`` is one
    socket, not safe to share between threads), several a ``HashClient`` with
    pooling. Both set TCP_NODELAY (without it each request waits ~40 ms on
    Nagle's algorithm meeting delayed ACKs) and bound connecting and every call
    by ``timeout`` seconds. A plain ``Client`` (or a ``HashClient`` without
    pooling) passed as ``client`` works too: the store then serialises its
    calls with a lock.

    A key always lives on the one node the hash picks, and there is no
    failover: with pymemcache's defaults a failing node is first skipped (its
    reads answered with "miss" without asking it), then removed so its keys
    hash to another node. For sessions a miss means a logged-out user, and a
    new session on another node would be lost again when the node returns. So
    the store sends each command to its key's node itself, past any
    ``HashClient``'s failover bookkeeping (which is also not thread-safe), and
    the ``HashClient`` it builds has none: each operation on a key of a node
    that is down raises :class:`StoreError`, keys of the other nodes keep
    working, and the node is used again as soon as it answers.

    memcached cannot list its keys, so this store has no index by user:
    ``user=`` is accepted on writes and not kept, and listing, counting or
    finding a user's sessions (``SessionManager.iter_sessions``, ``count``,
    ``sessions_of``, ``revoke_user``) raises ``NotImplementedError`` saying so.
    """

    supports_versioning = True

    def __init__(
        self,
        url: str | None = None,
        *,
        servers: Sequence[tuple[str, int] | str] | None = None,
        client: Any = None,
        timeout: float = 5.0,
    ) -> None:
        if sum(x is not None for x in (url, servers, client)) != 1:
            raise ValueError(
                "MemcacheStore: give exactly one of a URL "
                "('memcached://h1:11211,h2:11211'), servers=[(host, port), ...] "
                "or client=<pymemcache client>"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"MemcacheStore(timeout={timeout!r}): give seconds > 0")
        self.timeout = float(timeout)
        self.url: str | None = None
        #: The servers the store builds its client for; None for a given client.
        self._parsed: list[tuple[str, int]] | None = None
        if client is not None:
            _check_client(client)
            self._client: Any = client
            self._servers = _client_servers(client)
        else:
            if url is not None:
                if not isinstance(url, str):
                    raise ValueError(f"MemcacheStore: the URL must be a str, got {url!r}")
                self.url = url
                parsed = _parse_url(url)
            else:
                if isinstance(servers, str | bytes) or not servers:
                    raise ValueError(
                        "MemcacheStore(servers=...): give a non-empty list of (host, port) pairs"
                    )
                parsed = [
                    _parse_server(s, "MemcacheStore(servers=...)")
                    if isinstance(s, str)
                    else _check_pair(s)
                    for s in servers
                ]
            self._servers = [_server_text(s) for s in parsed]
            self._parsed = parsed
            self._client = self._build_client(parsed)
        #: The process the client's connections belong to (see ``_check_fork``).
        self._pid = os.getpid()
        #: One lock per process that rebuilds the client after a fork. A lock
        #: inherited from the parent may have been held by one of its threads
        #: at the fork, and would never be released in the child; a dict's
        #: setdefault is atomic, so the child's threads all get the same new one.
        self._fork_locks: dict[int, threading.Lock] = {}
        self._hash_client = isinstance(self._client, HashClient)
        # pymemcache's Client is one socket: calls on it must not interleave.
        self._unsafe = isinstance(self._client, Client) or (
            self._hash_client and not getattr(self._client, "use_pooling", False)
        )
        self._client_lock = self._new_client_lock()
        prefix = getattr(self._client, "key_prefix", b"") or b""
        self._max_key = _MAX_KEY - len(prefix)
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._seen_bytes = 0
        self._seen_lock = threading.Lock()
        # Long enough for a delete to read back its own tombstone after a lost
        # reply: the failed call, a reconnect, the retry and the read that
        # follows are each bounded by the timeout (see ``delete``).
        self._tombstone_exptime = min(math.ceil(4 * self.timeout) + _EXPIRY_SLACK, _MAX_RELATIVE)

    def _new_client_lock(self) -> contextlib.AbstractContextManager[Any]:
        return threading.Lock() if self._unsafe else contextlib.nullcontext()

    def _build_client(self, servers: list[tuple[str, int]]) -> Any:
        common: dict[str, Any] = {
            "connect_timeout": self.timeout,
            "timeout": self.timeout,
            "no_delay": True,
            # Every call below passes noreply=False where it reads the answer;
            # this makes any call that forgets still wait for it.
            "default_noreply": False,
        }
        if len(servers) == 1:
            return PooledClient(servers[0], **common)
        return _NoFailoverHashClient(
            servers,
            use_pooling=True,
            # Errors raise, never turn into a miss (see the class docstring).
            ignore_exc=False,
            **common,
        )

    def __repr__(self) -> str:
        if self.url is not None:
            return f"MemcacheStore({mask_url(self.url)!r})"
        return f"MemcacheStore({'memcached://' + ','.join(self._servers)!r})"

    # --------------------------------------------------------------- plumbing

    def _check_fork(self) -> None:
        """In a forked child, drop the parent's connections before any call.

        Two processes sharing one connection would interleave their commands
        and read each other's replies (another user's session). Every public
        method calls this first, before it takes any of the store's locks.
        """
        pid = os.getpid()
        if pid == self._pid:
            return
        with self._fork_locks.setdefault(pid, threading.Lock()):
            if self._pid == pid:
                return  # another thread of this process did it
            # Every lock and the map of loads may have been in use by a parent
            # thread at the fork: start afresh rather than wait on them.
            _close_inherited(self._client)
            if self._parsed is not None:
                self._client = self._build_client(self._parsed)
            else:
                _reset_pools(self._client)  # the caller's client, kept
            self._client_lock = self._new_client_lock()
            self._seen = OrderedDict()
            self._seen_bytes = 0
            self._seen_lock = threading.Lock()
            self._pid = pid  # last: other threads see a ready store

    def _key(self, key: str) -> str:
        return _memcached_key(key, self._max_key)

    def _where(self, mkey: str) -> str:
        if self._hash_client:
            with contextlib.suppress(Exception):
                return f" on node {self._client.hasher.get_node(mkey)}"
        return ""

    def _node(self, mkey: str) -> Any:
        """The client of the one server that holds ``mkey``."""
        if not self._hash_client:
            return self._client
        # Straight to the node's client: a HashClient's own call path runs its
        # failover bookkeeping (see the class docstring).
        node = self._client.hasher.get_node(mkey)
        if node is None:
            raise MemcacheError("the HashClient has no server left")
        return self._client.clients[node]

    def _call(self, action: str, method: str, mkey: str, *args: Any, **kwargs: Any) -> Any:
        """Run one pymemcache command, turning every failure into StoreError."""
        for attempt in (1, 2):
            node = None
            try:
                node = self._node(mkey)
                with self._client_lock:
                    return getattr(node, method)(mkey, *args, **kwargs)
            except _CONNECTION_ERROR as exc:
                # After a restart every idle connection to the server is stale:
                # drop them all, or the retry would take the next stale one.
                if node is not None and not isinstance(exc, TimeoutError):
                    _drop_idle(node)
                # A connection the server closed (restarted, or dropped before
                # the reply): try once more on a new connection. Should the
                # command have been executed after all, the retry meets its
                # result: the write loops below recognise their own token.
                if attempt == 1 and isinstance(exc, _STALE_CONNECTION):
                    continue
                raise self._fail(action, mkey, exc) from exc
            except Exception as exc:  # every client-library failure
                raise self._fail(action, mkey, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, action: str, mkey: str, exc: BaseException) -> StoreError:
        text = f"{type(exc).__name__}: {exc}"
        if "too large" in str(exc):
            text += (
                " (the record exceeds memcached's item size limit, 1 MiB by default: "
                "start memcached with a larger -I, e.g. -I 4m)"
            )
        return StoreError(f"{self!r}: {action} failed{self._where(mkey)}: {text}")

    def _gets(self, action: str, mkey: str) -> tuple[_Item | None, bytes | None]:
        """The live-or-not item under ``mkey`` and its CAS unique, or (None, None)."""
        answer = self._call(action, "gets", mkey)
        if not isinstance(answer, tuple) or len(answer) != 2:
            # A client configured to swallow errors answers None: never let
            # that pass for "no session".
            raise StoreError(f"{self!r}: {action} failed{self._where(mkey)}: no answer")
        raw, cas = answer
        if raw is None:
            return None, None
        if not isinstance(cas, bytes) or not cas.isdigit() or int(cas) == 0:
            # memcached -C answers 0 for every item: each cas would then fail
            # as if another writer had changed the item, forever.
            raise StoreError(
                f"{self!r}: {action} failed{self._where(mkey)}: memcached answered "
                f"the CAS unique {cas!r}: CAS is disabled on the server, and every "
                "write of this store needs it (start memcached without -C)"
            )
        return _unpack(raw), cas

    def _cas(self, action: str, mkey: str, data: bytes, cas: bytes, exptime: int) -> bool | None:
        """True: written; False: the item changed since ``cas``; None: it is gone."""
        result: bool | None = self._call(
            action, "cas", mkey, data, cas, expire=exptime, noreply=False
        )
        return result

    def _remember(self, mkey: str, seen: _Seen) -> None:
        size = len(seen.value)
        if size > _SEEN_BYTES // 8:
            self._forget(mkey)
            return
        with self._seen_lock:
            old = self._seen.pop(mkey, None)
            if old is not None:
                self._seen_bytes -= len(old.value)
            self._seen[mkey] = seen
            self._seen_bytes += size
            while len(self._seen) > _SEEN_ENTRIES or self._seen_bytes > _SEEN_BYTES:
                _, dropped = self._seen.popitem(last=False)
                self._seen_bytes -= len(dropped.value)

    def _forget(self, mkey: str) -> _Seen | None:
        """Take what the last load of ``mkey`` saw out of the map (any write
        changes the CAS unique, so an entry serves one write at most)."""
        with self._seen_lock:
            seen = self._seen.pop(mkey, None)
            if seen is not None:
                self._seen_bytes -= len(seen.value)
            return seen

    def _too_busy(self, action: str) -> StoreError:
        return StoreError(
            f"{self!r}: {action} gave up after {_MAX_ATTEMPTS} attempts: "
            "other writers kept changing the record"
        )

    # ---------------------------------------------------------------- protocol

    def load(self, key: str) -> Record | None:
        self._check_fork()
        mkey = self._key(key)
        item, cas = self._gets("load", mkey)
        if item is None or cas is None or item.expires_at <= time.time():
            self._forget(mkey)
            return None
        self._remember(mkey, _Seen(cas, item.expires_at, item.token, item.value))
        return Record(item.value, item.expires_at, item.token)

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        self._check_fork()
        mkey = self._key(key)
        self._forget(mkey)
        token = _new_token()
        data = _pack(expires_at, token, value)
        for _ in range(_MAX_ATTEMPTS):
            exptime = _exptime(expires_at, time.time())
            if self._call("insert", "add", mkey, data, expire=exptime, noreply=False):
                return True
            item, cas = self._gets("insert", mkey)
            if item is None and cas is None:
                continue  # deleted between the add and the gets: add again
            if item is not None and item.token == token:
                return True  # our own add, whose answer a dropped connection lost
            if item is not None and item.expires_at > time.time():
                return False
            # An item memcached still keeps but whose header says it expired
            # (memcached expires in whole seconds), or foreign bytes: replace
            # it, atomically, so that a racing insert cannot win as well.
            if cas is not None and self._cas("insert", mkey, data, cas, exptime):
                return True
        raise self._too_busy("insert")

    def update(
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        *,
        user: str | None = None,
    ) -> bool:
        self._check_fork()
        mkey = self._key(key)
        token = _new_token()
        data = _pack(expires_at, token, value)
        seen = self._forget(mkey)
        if (
            seen is not None
            and (version is None or seen.token == version)
            and seen.expires_at > time.time()
        ):
            # The one-round-trip path: the item is unchanged since the load iff
            # its CAS unique is.
            done = self._cas("update", mkey, data, seen.cas, _exptime(expires_at, time.time()))
            if done is None:
                return False  # gone since the load
            if done:
                return True
        for _ in range(_MAX_ATTEMPTS):
            item, cas = self._gets("update", mkey)
            now = time.time()
            if item is None or cas is None or item.expires_at <= now:
                return False
            if item.token == token:
                return True  # our own cas, whose answer a dropped connection lost
            if version is not None and item.token != version:
                return False
            done = self._cas("update", mkey, data, cas, _exptime(expires_at, now))
            if done is None:
                return False
            if done:
                return True
            # Changed between gets and cas (a touch keeps the token, so the
            # version may still match): read again.
        raise self._too_busy("update")

    def delete(self, key: str, version: Version | None = None) -> bool:
        # A cas to an expired tombstone: a compare-and-delete in one atomic step
        # (a gets + delete would leave a window in which a newer write could be
        # deleted by a delete that compared an older version).
        self._check_fork()
        mkey = self._key(key)
        # The tombstone's own token: should a dropped connection lose the
        # answer to its cas, the retried cas fails (the item changed: it is
        # the tombstone), and the read that follows finds this token. That is
        # why memcached keeps the tombstone a few seconds rather than dropping
        # it at once: a tombstone gone already would read as "nothing there".
        token = _new_token()
        tombstone = _pack(0.0, token, b"")
        exptime = self._tombstone_exptime
        seen = self._forget(mkey)
        if (
            seen is not None
            and (version is None or seen.token == version)
            and seen.expires_at > time.time()
        ):
            done = self._cas("delete", mkey, tombstone, seen.cas, exptime)
            if done is None:
                return False
            if done:
                return True
        for _ in range(_MAX_ATTEMPTS):
            item, cas = self._gets("delete", mkey)
            if item is not None and item.token == token:
                return True  # our own tombstone, whose answer a dropped connection lost
            if item is None or cas is None or item.expires_at <= time.time():
                return False
            if version is not None and item.token != version:
                return False
            done = self._cas("delete", mkey, tombstone, cas, exptime)
            if done is None:
                return False
            if done:
                return True
        raise self._too_busy("delete")

    def touch(self, key: str, expires_at: float) -> bool:
        # Rewrites the header (same token, same value) with a cas, so the
        # expiry every read checks moves with memcached's own.
        self._check_fork()
        mkey = self._key(key)
        seen = self._forget(mkey)
        if seen is not None and seen.expires_at > time.time():
            data = _pack(expires_at, seen.token, seen.value)
            done = self._cas("touch", mkey, data, seen.cas, _exptime(expires_at, time.time()))
            if done is None:
                return False
            if done:
                return True
        for _ in range(_MAX_ATTEMPTS):
            item, cas = self._gets("touch", mkey)
            now = time.time()
            if item is None or cas is None or item.expires_at <= now:
                return False
            data = _pack(expires_at, item.token, item.value)
            done = self._cas("touch", mkey, data, cas, _exptime(expires_at, now))
            if done is None:
                return False
            if done:
                return True
        raise self._too_busy("touch")

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        raise NotImplementedError(
            f"{self!r}: memcached has no command that lists keys, so its sessions "
            "cannot be listed, counted or searched by user"
        )

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        return self.iter_records(prefix)  # raises NotImplementedError, saying why

    def cleanup(self) -> int:
        """memcached expires items by itself: nothing to do."""
        return 0

    def close(self) -> None:
        """Close every pooled connection; the next call opens new ones."""
        self._check_fork()
        with self._seen_lock:
            self._seen.clear()
            self._seen_bytes = 0
        try:
            with self._client_lock:
                self._client.close()
        except Exception as exc:
            raise StoreError(f"{self!r}: close failed: {type(exc).__name__}: {exc}") from exc


def _check_pair(server: object) -> tuple[str, int]:
    if (
        not isinstance(server, tuple)
        or len(server) != 2
        or not isinstance(server[0], str)
        or not server[0]
        or isinstance(server[1], bool)
        or not isinstance(server[1], int)
        or not 0 < server[1] < 65536
    ):
        raise ValueError(
            f"MemcacheStore(servers=...): each server is a (host, port) pair, got {server!r}"
        )
    return server[0], server[1]


def _check_client(client: Any) -> None:
    """Refuse client settings that would turn an outage into a silent miss
    (a logged-out user) or that would decode foreign bytes (pickle)."""
    name = type(client).__name__
    for attr in ("gets", "cas", "add", "close"):
        if not callable(getattr(client, attr, None)):
            raise ValueError(f"MemcacheStore(client={name}): not a pymemcache client")
    if getattr(client, "ignore_exc", False):
        raise ValueError(
            f"MemcacheStore(client={name}): ignore_exc=True turns every memcached "
            "error into a miss, which looks like 'no session'; use ignore_exc=False"
        )
    if isinstance(client, HashClient):
        if client.retry_attempts < sys.maxsize or not client.retry_timeout < 0:
            raise ValueError(
                f"MemcacheStore(client={name}): a HashClient with retry_attempts="
                f"{client.retry_attempts}, retry_timeout={client.retry_timeout} answers "
                "misses for a failing node and then moves its keys to another node; "
                "pass retry_attempts=sys.maxsize, retry_timeout=float('-inf') "
                "(or use MemcacheStore(servers=[...]))"
            )
        kwargs = client.default_kwargs
        has_serde = any(kwargs.get(k) is not None for k in ("serde", "serializer", "deserializer"))
    else:
        serde = getattr(client, "serde", None)
        has_serde = not (
            isinstance(serde, LegacyWrappingSerde)
            and serde.deserialize == serde._default_deserialize
            and serde.serialize == serde._default_serialize
        )
    if has_serde:
        raise ValueError(
            f"MemcacheStore(client={name}): the client has a serde/serializer; the store "
            "writes bytes and must read bytes back (a serde could unpickle foreign data): "
            "pass a client without one"
        )


def _connections(client: Any) -> list[Any]:
    """The pymemcache ``Client`` objects (one socket each) behind ``client``."""
    nodes = list(client.clients.values()) if isinstance(client, HashClient) else [client]
    found: list[Any] = []
    for node in nodes:
        pool = getattr(node, "client_pool", None)
        if isinstance(pool, ObjectPool):
            # The pool's lock is not taken (see _close_inherited): reading the
            # deques may race with a thread of this process, which a retry of
            # the copy would not fix either, so a failure leaves them be.
            with contextlib.suppress(RuntimeError):
                found += [*pool.free, *pool.used]
        else:
            found.append(node)
    return found


def _close_inherited(client: Any) -> None:
    """In a forked child: close the child's copies of the parent's sockets.

    Closing a descriptor the parent holds as well does not end the connection
    (nothing is sent to the server; only ``shutdown`` would), so the parent's
    connections live on. No lock of the client is taken: a parent thread may
    have held one at the fork, and in the child it would never be released.
    """
    for connection in _connections(client):
        with contextlib.suppress(Exception):
            connection.close()


def _reset_pools(client: Any) -> None:
    """Give each pooled node of a caller's client a new, empty pool (the old
    one's lock may be held for ever in a forked child, see _close_inherited).

    The new pool keeps the old one's size limit and idle timeout; its lock is a
    plain ``threading.Lock`` (a pool's ``lock_generator`` is not kept by it).
    """
    nodes = list(client.clients.values()) if isinstance(client, HashClient) else [client]
    for node in nodes:
        old = getattr(node, "client_pool", None)
        if isinstance(old, ObjectPool) and callable(getattr(node, "_create_client", None)):
            node.client_pool = ObjectPool(
                node._create_client,
                after_remove=lambda connection: connection.close(),
                max_size=old.max_size,
                idle_timeout=old.idle_timeout,
            )


def _drop_idle(node: Any) -> None:
    """Close every idle pooled connection of one server's client.

    Only idle ones: a connection in use belongs to another thread's call (that
    call drops it itself if it fails). pymemcache's pool hands out the oldest
    idle connection first, and ``destroy`` closes one, so taking as many as
    were idle drops them all; should they run out meanwhile, ``get`` makes a
    new, still unconnected one, whose ``destroy`` costs nothing.
    """
    pool = getattr(node, "client_pool", None)
    if not isinstance(pool, ObjectPool):
        return  # a plain Client closed its one socket when the call failed
    for _ in range(len(pool.free)):
        try:
            connection = pool.get()
        except Exception:  # e.g. the pool is at its max_size: nothing idle left
            return
        pool.destroy(connection)


def _client_servers(client: Any) -> list[str]:
    if isinstance(client, HashClient):
        return sorted(str(k) for k in client.clients)
    server = getattr(client, "server", None)
    return [_server_text(server)] if server is not None else [f"<{type(client).__name__}>"]
