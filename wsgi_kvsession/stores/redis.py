"""Redis (and Valkey): standalone, Cluster and Sentinel, over redis-py.

Each record is one Redis string: a 17-byte header (a format byte, an 8-byte
version token, the expiry as a double) followed by the value. Keeping the
version and expiry inside the value is what lets every read be a single
``GET``, on Redis 6.2+ or Valkey, on a Cluster as on one server: the
header answers "which version did I read" and "until when is it valid" without
a second command. Redis's own TTL is set on every write too, so Redis reaps
expired sessions by itself and :meth:`RedisStore.cleanup` has nothing to do.

Writes are one round trip each:

* insert: ``SET key value PX ttl NX``;
* update, delete and touch: a small Lua script (``EVALSHA``), because checking
  that the record is still live (and, given a version, still that version) and
  writing must be one atomic step, and a touch must rewrite the header's expiry
  in place (``SETRANGE``) without touching the value or version, and never
  create a key that has gone.

The TTL sent to Redis is relative (``PX``), computed from this machine's clock:
Redis then counts it on its own clock, so a clock difference between the
application servers and Redis does not shorten or lengthen sessions. The
header's expiry is checked on every read as well, to the millisecond.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard
from urllib.parse import unquote, urlsplit

from .base import Record, Store, StoreError, Version, mask_url

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisClusterException, RedisError, ResponseError
    from redis.retry import Retry
    from redis.sentinel import Sentinel
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "RedisStore needs redis-py: pip install 'wsgi-kvsession[redis]'"
    ) from exc

__all__ = ["RedisStore"]

#: Format byte, version token, expiry (Unix time, seconds).
_HEADER = struct.Struct(">c8sd")
_FORMAT = b"\x01"
_TOKEN_SIZE = 8
#: Offset of the expiry in the header, for the touch script's SETRANGE.
_EXPIRY_OFFSET = 1 + _TOKEN_SIZE

#: Errors of redis-py that mean "the store failed" (RedisClusterException is not
#: a RedisError: a Cluster that cannot be reached at all raises it).
_REDIS_ERRORS = (RedisError, RedisClusterException)

# Every script first reads the header and goes on only if the key holds a LIVE
# record of ours: Redis's TTL is rounded up to the millisecond and starts when
# the write arrives, so a key can outlive its header's expiry by a little, and
# a write or touch in that gap must not bring the record back. ``pcall``: a key
# of another type (another application's hash) reads as absent, not an error.
_LIVE_HEADER = f"""
local function live_header(now)
  local head = redis.pcall('GETRANGE', KEYS[1], 0, {_HEADER.size - 1})
  if type(head) ~= 'string' or #head < {_HEADER.size}
      or string.byte(head, 1) ~= {_FORMAT[0]} then
    return nil
  end
  local expires_at = struct.unpack('>d', string.sub(head, {_EXPIRY_OFFSET + 1}))
  if not (expires_at > now) then return nil end
  return head
end
"""

# KEYS[1] the key; ARGV[1] now; ARGV[2] the expected token ('' for any);
# ARGV[3] the new value; ARGV[4] the TTL in milliseconds (<= 0: it ends now).
_UPDATE = _LIVE_HEADER + """
local head = live_header(tonumber(ARGV[1]))
if not head then return 0 end
if ARGV[2] ~= '' and string.sub(head, 2, 9) ~= ARGV[2] then return 0 end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS[1] the key; ARGV[1] now; ARGV[2] the expected token ('' for any).
_DELETE = _LIVE_HEADER + """
local head = live_header(tonumber(ARGV[1]))
if not head then return 0 end
if ARGV[2] ~= '' and string.sub(head, 2, 9) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1] the key; ARGV[1] now; ARGV[2] the packed new expiry; ARGV[3] the TTL
# in milliseconds (<= 0: the record ends now).
_TOUCH = _LIVE_HEADER + f"""
if not live_header(tonumber(ARGV[1])) then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SETRANGE', KEYS[1], {_EXPIRY_OFFSET}, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel")
_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://… (TLS), "
    "redis+cluster://[[user]:password@]host:port[,host:port…], "
    "redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]"
)


def _new_token() -> bytes:
    return os.urandom(_TOKEN_SIZE)


def _ttl_ms(expires_at: float, now: float) -> int:
    """Milliseconds until ``expires_at``, rounded up; <= 0 once it has passed.

    Rounded up so that Redis never reaps a record before its header says it has
    expired: the header check on read takes care of the sub-millisecond rest.
    """
    return math.ceil((expires_at - now) * 1000)


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (for ``SCAN MATCH``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _parse_hosts(netloc_hosts: str, default_port: int, url: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` (IPv6 in brackets) -> ``[(host, port), ...]``."""
    hosts: list[tuple[str, int]] = []
    for item in netloc_hosts.split(","):
        item = item.strip()
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            port = -1
        if not host or not 0 < port < 65536:
            raise ValueError(f"RedisStore: URL {mask_url(url)!r}: bad host:port {item!r}")
        hosts.append((host, port))
    return hosts


class RedisStore(Store):
    """Sessions in Redis or Valkey, one string key each, expired by Redis's TTL.

    Give either a URL or a ready client:

    * ``RedisStore("redis://:password@host:6379/0")``, ``rediss://`` for TLS;
    * ``RedisStore("redis+cluster://host1:7000,host2:7001")``: a Redis Cluster,
      discovered from any of the nodes listed;
    * ``RedisStore("redis+sentinel://host1:26379,host2:26379/mymaster/0")``: the
      primary of the service ``mymaster``, found (and found again after a
      failover) through the Sentinels listed; a password in the URL is the
      primary's, the Sentinels are asked without one;
    * ``RedisStore(client=redis.Redis(...))``, a ``RedisCluster`` or a
      Sentinel's ``master_for(...)`` client: you own it, and :meth:`close`
      leaves it open. It must not decode responses (``decode_responses=False``,
      redis-py's default): session values are bytes.

    ``timeout`` (seconds) bounds connecting and each command. A connection that
    breaks is retried once, at once, on a fresh connection (so a pool recovers
    from a Redis restart without an error); a command that times out is not
    retried, so a Redis that hangs fails within ``timeout`` with a
    :class:`StoreError` (within two timeouts on a Cluster, whose client retries
    a timeout once, and when the primary is looked up through a hung Sentinel).
    """

    def __init__(
        self, url: str | None = None, *, client: Any = None, timeout: float = 5.0
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("RedisStore: give a URL or client=, exactly one of them")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"RedisStore: timeout must be a positive number of seconds, "
                             f"not {timeout!r}")
        self.timeout = float(timeout)
        self.url = url
        self._owns_client = client is None
        self._sentinel: Sentinel | None = None
        self._lock = threading.Lock()
        self._connected: _Client | None = None
        #: Builds the client. A RedisCluster connects as it is created (to learn
        #: the slot layout), and constructing a store must not need the server,
        #: so the client is built on first use, under the lock.
        self._new_client: Callable[[], Any]
        if client is not None:
            if _decodes_responses(client):
                raise ValueError(
                    f"{self!r}: the client decodes responses to str; session values are "
                    "bytes, so create it with decode_responses=False (the default)"
                )
            self._connected = _Client(client)
        elif url is not None:
            self._new_client = self._client_from_url(url)

    def __repr__(self) -> str:
        if self.url is not None:
            return f"RedisStore({mask_url(self.url)!r})"
        client = self._connected.redis if self._connected is not None else None
        return f"RedisStore(client={type(client).__name__})"

    # ------------------------------------------------------------------ clients

    @property
    def _client(self) -> _Client:
        connected = self._connected
        if connected is None:
            with self._lock:
                if self._connected is None:
                    self._connected = _Client(self._new_client())
                connected = self._connected
        return connected

    def _client_from_url(self, url: str) -> Callable[[], Any]:
        """Check ``url`` now; return a function that builds its client."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"RedisStore: unsupported URL {mask_url(url)!r}; supported forms: {_URL_FORMS}"
            )
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        common: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": retry,
        }
        if scheme in ("redis", "rediss"):
            # redis-py reads the scheme case-sensitively; URLs are not.
            url = scheme + url[len(parts.scheme) :]
            try:
                client = redis.Redis.from_url(url, **common)  # does not connect
            except ValueError:  # redis-py's message may quote the URL
                raise ValueError(
                    f"RedisStore: URL {mask_url(url)!r} is not valid; expected {_URL_FORMS}"
                ) from None
            if _decodes_responses(client):
                raise ValueError(
                    f"RedisStore: URL {mask_url(url)!r} asks for decode_responses; "
                    "session values are bytes: remove that option"
                )
            return lambda: client

        # Split by hand, like mask_url: a password may hold "/", "?" or "#".
        userinfo, _, located = url.partition("://")[2].rpartition("@")
        hostinfo, slash, path_and_query = located.partition("/")
        path, question, query = (slash + path_and_query).partition("?")
        username, _, password = userinfo.partition(":")
        credentials: dict[str, Any] = {
            "username": unquote(username) or None,
            "password": unquote(password) or None,
        }
        if question or query or "#" in path:
            raise ValueError(
                f"RedisStore: URL {mask_url(url)!r}: {scheme}:// takes no query options; "
                "for more control pass a client: RedisStore(client=...)"
            )
        if not hostinfo:
            raise ValueError(f"RedisStore: URL {mask_url(url)!r} names no host")

        if scheme.endswith("+cluster"):
            if path not in ("", "/", "/0"):
                raise ValueError(
                    f"RedisStore: URL {mask_url(url)!r}: a Redis Cluster has only database 0"
                )
            hosts = _parse_hosts(hostinfo, 6379, url)
            ssl = scheme == "rediss+cluster"
            return lambda: RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in hosts],
                ssl=ssl,
                **credentials,
                **common,
            )

        # redis+sentinel://hosts/service_name[/db]
        names = [unquote(p) for p in path.split("/") if p]
        if not names or len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
            raise ValueError(
                f"RedisStore: URL {mask_url(url)!r}: a Sentinel URL ends in "
                "/service_name or /service_name/db"
            )
        self._sentinel = Sentinel(
            _parse_hosts(hostinfo, 26379, url),
            sentinel_kwargs={
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
                # redis-py's default would retry a Sentinel ten times with
                # backoff: a hung Sentinel would then take ~50 x timeout.
                "retry": Retry(NoBackoff(), 0),
            },
        )
        master = self._sentinel.master_for(  # does not connect
            names[0], db=int(names[1]) if len(names) == 2 else 0, **credentials, **common
        )
        return lambda: master

    def _fail(self, action: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self!r}: {action} failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------- the protocol

    def load(self, key: str) -> Record | None:
        try:
            raw = self._client.redis.get(key)
        except ResponseError as exc:
            if _wrong_type(exc):
                return None  # another application's hash or list: not a session
            raise self._fail("load", exc) from exc
        except _REDIS_ERRORS as exc:
            raise self._fail("load", exc) from exc
        return _record(raw, time.time())

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:
        ttl = _ttl_ms(expires_at, time.time())
        try:
            if ttl <= 0:
                # Nothing to store: report only whether a live record was in the way.
                return self.load(key) is None
            record = _pack(_new_token(), expires_at, value)
            if self._client.redis.set(key, record, px=ttl, nx=True):
                return True
            # Refused, or our own SET ran and the connection broke before the
            # answer, and the retry was refused: the random token tells which.
            return bool(self._client.redis.get(key) == record)
        except ResponseError as exc:
            if _wrong_type(exc):
                return False
            raise self._fail("insert", exc) from exc
        except _REDIS_ERRORS as exc:
            raise self._fail("insert", exc) from exc

    def update(
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
        now = time.time()
        if version is not None and not _is_token(version):
            return False  # not a version this store handed out: it cannot match
        args = [repr(now), version or b"", _pack(_new_token(), expires_at, value)]
        try:
            done = self._client.update(keys=[key], args=[*args, _ttl_ms(expires_at, now)])
        except _REDIS_ERRORS as exc:
            raise self._fail("update", exc) from exc
        return bool(done)

    def delete(self, key: str, version: Version | None = None) -> bool:
        if version is not None and not _is_token(version):
            return False
        try:
            done = self._client.delete(keys=[key], args=[repr(time.time()), version or b""])
        except _REDIS_ERRORS as exc:
            raise self._fail("delete", exc) from exc
        return bool(done)

    def touch(self, key: str, expires_at: float) -> bool:
        now = time.time()
        args = [repr(now), struct.pack(">d", expires_at), _ttl_ms(expires_at, now)]
        try:
            done = self._client.touch(keys=[key], args=args)
        except _REDIS_ERRORS as exc:
            raise self._fail("touch", exc) from exc
        return bool(done)

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """Yield the live session records under ``prefix``, found with ``SCAN``.

        ``SCAN … MATCH prefix*`` never blocks Redis the way ``KEYS`` does, and
        reads only the keys under the prefix; on a Cluster every primary is
        scanned. Keys that hold something other than a session record (another
        application's data) are skipped. A key written or deleted during the
        scan may or may not be listed.
        """
        try:
            batch: list[bytes] = []
            for name in self._client.redis.scan_iter(
                match=_glob_escape(prefix) + "*", count=1000, _type="string"
            ):
                batch.append(name)
                if len(batch) >= 500:
                    yield from self._fetch(batch)
                    batch = []
            yield from self._fetch(batch)
        except _REDIS_ERRORS as exc:
            raise self._fail("listing records", exc) from exc

    def _fetch(self, names: list[bytes]) -> Iterator[tuple[str, Record]]:
        if not names:
            return
        # A non-transactional pipeline: one round trip per node, any key slots.
        pipe = self._client.redis.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
        now = time.time()
        for name, raw in zip(names, pipe.execute(), strict=True):
            record = _record(raw, now)
            if record is not None:
                yield name.decode("utf-8", "surrogateescape"), record

    def close(self) -> None:
        """Close the connections of a client this store created (not one passed in).

        The store stays usable: the next call connects again.
        """
        connected = self._connected
        if not self._owns_client or connected is None:
            return
        try:
            if isinstance(connected.redis, RedisCluster):
                # RedisCluster.close() forgets the cluster's layout and cannot be
                # used again; dropping the connections keeps the layout.
                connected.redis.disconnect_connection_pools()
            else:
                connected.redis.close()
            if self._sentinel is not None:
                for sentinel in self._sentinel.sentinels:
                    sentinel.close()
        except _REDIS_ERRORS:  # closing a connection that is already broken
            pass


class _Client:
    """A redis-py client with this store's scripts registered on it."""

    def __init__(self, client: Any) -> None:
        self.redis: Any = client
        # Script objects only compute their SHA here; Redis gets the script on
        # first use (EVALSHA, and SCRIPT LOAD once when Redis does not know it).
        self.update = client.register_script(_UPDATE)
        self.delete = client.register_script(_DELETE)
        self.touch = client.register_script(_TOUCH)


def _wrong_type(exc: ResponseError) -> bool:
    return str(exc).startswith("WRONGTYPE")


def _decodes_responses(client: Any) -> bool:
    get_encoder = getattr(client, "get_encoder", None)
    if get_encoder is None:
        return False
    return bool(getattr(get_encoder(), "decode_responses", False))


def _is_token(version: Version) -> TypeGuard[bytes]:
    return isinstance(version, bytes) and len(version) == _TOKEN_SIZE


def _pack(token: bytes, expires_at: float, value: bytes) -> bytes:
    return _HEADER.pack(_FORMAT, token, expires_at) + value


def _record(raw: bytes | None, now: float) -> Record | None:
    """The record a stored string holds, or ``None`` (absent, expired, not ours)."""
    if raw is None or len(raw) < _HEADER.size or raw[:1] != _FORMAT:
        return None
    _, token, expires_at = _HEADER.unpack_from(raw)
    if not expires_at > now:  # also rejects a NaN expiry from foreign bytes
        return None
    return Record(raw[_HEADER.size :], expires_at, token)

