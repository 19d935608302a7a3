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
  empty tombstone with a negative exptime, which memcached treats as "expired
  at once" (and the tombstone's header says expired too). It is atomic, with or
  without a version: nothing written after the read can be deleted by mistake.

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
    from pymemcache.exceptions import MemcacheUnexpectedCloseError
    from pymemcache.serde import LegacyWrappingSerde
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "MemcacheStore needs pymemcache: pip install 'wsgi-kvsession[memcached]'"
    ) from exc

__all__ = ["MemcacheStore"]

DEFAULT_PORT = 11211

# Item layout: magic, expiry (Unix time, float64), version token (uint64), value.
_MAGIC = b"KVM1"
_HEADER = struct.Struct(">4sdQ")
#: The header of a deleted record: expired, token 0 (no live record has it).
_TOMBSTONE = _HEADER.pack(_MAGIC, 0.0, 0)

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

#: Errors of a connection the server closed while it sat idle in the pool (a
#: restarted memcached): the command never reached a live server, so the call
#: is retried once on a fresh connection (see ``_call``).
_STALE_CONNECTION = (MemcacheUnexpectedCloseError, ConnectionResetError, BrokenPipeError)


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
    if magic != _MAGIC or token == 0:
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


class MemcacheStore(Store):
    """Keeps records in memcached, through pymemcache.

    Give ONE of:

    * ``url``: ``memcached://host:port`` or ``memcached://h1:11211,h2:11211``
      (port 11211 by default, IPv6 hosts in brackets);
    * ``servers``: a list of ``(host, port)`` pairs (or ``"host:port"``);
    * ``client``: a ready pymemcache client (``Client``, ``PooledClient``,
      ``HashClient``), used as it is (its own timeouts and options apply).

    One server gets a ``PooledClient`` (pymemcache's plain ``Client`` is one
    socket, not safe to share between threads), several a
    ``HashClient(use_pooling=True)``. Both set TCP_NODELAY (without it each
    request waits ~40 ms on Nagle's algorithm meeting delayed ACKs) and bound
    connecting and every call by ``timeout`` seconds. A plain ``Client`` (or a
    ``HashClient`` without pooling) passed as ``client`` works too: the store
    then serialises its calls with a lock.

    A key always lives on the one node the hash picks. The ``HashClient`` the
    store builds never marks a node dead: with pymemcache's defaults a failing
    node is first skipped (its reads answered with "miss" without asking it),
    then removed so its keys hash to another node. For sessions a miss means a
    logged-out user, and a new session on another node would be lost again when
    the node returns; so ``ignore_exc=False``, ``retry_attempts`` is never
    reached and ``retry_timeout`` is always passed (every call tries the node
    again): each operation on a key of a node that is down raises
    :class:`StoreError`, keys of the other nodes keep working, and the node is
    used again as soon as it answers.
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
            self._client = self._build_client(parsed)
        self._hash_client = isinstance(self._client, HashClient)
        # pymemcache's Client is one socket: calls on it must not interleave.
        unsafe = isinstance(self._client, Client) or (
            self._hash_client and not getattr(self._client, "use_pooling", False)
        )
        self._client_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if unsafe else contextlib.nullcontext()
        )
        prefix = getattr(self._client, "key_prefix", b"") or b""
        self._max_key = _MAX_KEY - len(prefix)
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._seen_bytes = 0
        self._seen_lock = threading.Lock()

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
        return HashClient(
            servers,
            use_pooling=True,
            # Errors raise, never turn into a miss (see the class docstring).
            ignore_exc=False,
            # A node is never marked dead and removed from the hash ring (its
            # keys would move to another node): the attempts are never exhausted...
            retry_attempts=sys.maxsize,
            # ...and the wait between retries is always over, so no call is
            # answered with a silent default while a node is "failed".
            retry_timeout=float("-inf"),
            # Unused, since no node is ever marked dead.
            dead_timeout=0,
            **common,
        )

    def __repr__(self) -> str:
        if self.url is not None:
            return f"MemcacheStore({mask_url(self.url)!r})"
        return f"MemcacheStore({'memcached://' + ','.join(self._servers)!r})"

    # --------------------------------------------------------------- plumbing

    def _key(self, key: str) -> str:
        return _memcached_key(key, self._max_key)

    def _where(self, mkey: str) -> str:
        if self._hash_client:
            with contextlib.suppress(Exception):
                return f" on node {self._client.hasher.get_node(mkey)}"
        return ""

    def _call(self, action: str, method: str, mkey: str, *args: Any, **kwargs: Any) -> Any:
        """Run one pymemcache command, turning every failure into StoreError."""
        function = getattr(self._client, method)
        for attempt in (1, 2):
            try:
                with self._client_lock:
                    return function(mkey, *args, **kwargs)
            except _STALE_CONNECTION as exc:
                # A pooled connection the server closed while it was idle (the
                # server restarted): the server never saw the command, so try
                # once more on a new connection. Should the command have been
                # executed after all, the retry meets its result: the loops
                # below recognise their own token, a delete finds nothing.
                if attempt == 1:
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
        mkey = self._key(key)
        item, cas = self._gets("load", mkey)
        if item is None or cas is None or item.expires_at <= time.time():
            self._forget(mkey)
            return None
        self._remember(mkey, _Seen(cas, item.expires_at, item.token, item.value))
        return Record(item.value, item.expires_at, item.token)

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:
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
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
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
        mkey = self._key(key)
        seen = self._forget(mkey)
        if (
            seen is not None
            and (version is None or seen.token == version)
            and seen.expires_at > time.time()
        ):
            done = self._cas("delete", mkey, _TOMBSTONE, seen.cas, _EXPIRED)
            if done is None:
                return False
            if done:
                return True
        for _ in range(_MAX_ATTEMPTS):
            item, cas = self._gets("delete", mkey)
            if item is None or cas is None or item.expires_at <= time.time():
                return False
            if version is not None and item.token != version:
                return False
            done = self._cas("delete", mkey, _TOMBSTONE, cas, _EXPIRED)
            if done is None:
                return False
            if done:
                return True
        raise self._too_busy("delete")

    def touch(self, key: str, expires_at: float) -> bool:
        # Rewrites the header (same token, same value) with a cas, so the
        # expiry every read checks moves with memcached's own.
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

    def cleanup(self) -> int:
        """memcached expires items by itself: nothing to do."""
        return 0

    def close(self) -> None:
        """Close every pooled connection; the next call opens new ones."""
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


def _client_servers(client: Any) -> list[str]:
    if isinstance(client, HashClient):
        return sorted(str(k) for k in client.clients)
    server = getattr(client, "server", None)
    return [_server_text(server)] if server is not None else [f"<{type(client).__name__}>"]
