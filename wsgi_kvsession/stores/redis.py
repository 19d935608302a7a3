"""Redis (and Valkey): standalone, Cluster and Sentinel, over redis-py.

Each record is one Redis string: a header (a format byte, an 8-byte version
token, the expiry as a double, then the record's user: a zero byte for none,
or a one byte, a 4-byte length and the user's ID) followed by the value.
Keeping the version and expiry inside the value is what lets every read be a
single ``GET``, on Redis 6.2+ or Valkey, on a Cluster as on one server: the
header answers "which version did I read" and "until when is it valid" without
a second command. Records of the first format (format byte 1: no user field)
are still read, as records of no user. Redis's own TTL is set on every write too, so Redis reaps
expired sessions by itself and :meth:`RedisStore.cleanup` has nothing to do.

Writes are one round trip each:

* insert: ``SET key value PX ttl NX``;
* update, delete and touch: a small Lua script (``EVALSHA``), because checking
  that the record is still live (and, given a version, still that version) and
  writing must be one atomic step, and a touch must rewrite the header's expiry
  in place (``SETRANGE``) without touching the value or version, and never
  create a key that has gone.

The per-user index is one sorted set per user (``user_index_prefix`` and the
SHA-256 of the user's ID), of the user's session keys, each scored with its
record's expiry; the set's own TTL follows its latest member. On a Cluster the
set and a user's sessions live in different slots, so no script touches both:
every script works on one key, and the index is kept by ordering instead. A
writer adds the key to the set (raising its score, never lowering it) *before*
it writes a record of that user, and a touch adds it before it moves the
expiry of a record it has found to be that user's; members leave the set only
when their score has passed, or when their record is deleted. So the set
holds every live record of its user at every moment (a crash between the two
steps leaves a member too many, which listing skips: each record's header
names its user), and a member whose record passed to another user stays
until its score passes.

The TTL sent to Redis is relative (``PX``), computed from this machine's clock:
Redis then counts it on its own clock, so a clock difference between the
application servers and Redis does not shorten or lengthen sessions. The
header's expiry is checked on every read as well, to the millisecond.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard
from urllib.parse import unquote, urlsplit

from .base import Record, Store, StoreError, Version, mask_url

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
    from redis.retry import Retry
    from redis.sentinel import Sentinel
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "RedisStore needs redis-py: pip install 'wsgi-kvsession[redis]'"
    ) from exc

__all__ = ["RedisStore"]

#: Format byte, version token, expiry (Unix time, seconds); then, in format 2,
#: the user: b"\x00", or b"\x01", its length (uint32) and its UTF-8 bytes.
_HEADER = struct.Struct(">c8sd")
_FORMAT = b"\x02"
_FORMAT_V1 = b"\x01"
_USER_LENGTH = struct.Struct(">I")
_NO_USER = b"\x00"
_HAS_USER = b"\x01"
#: How often a touch re-reads the record's user when it keeps changing.
_TOUCH_ATTEMPTS = 5
#: How many keys' users a store remembers for its touches (see RedisStore._owners).
_OWNER_HINTS = 4096
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
  -- The header and the byte after it (format 2: whether a user follows).
  local head = redis.pcall('GETRANGE', KEYS[1], 0, {_HEADER.size})
  if type(head) ~= 'string' or #head < {_HEADER.size} then return nil end
  local format = string.byte(head, 1)
  if format ~= {_FORMAT[0]} and format ~= {_FORMAT_V1[0]} then return nil end
  local expires_at = struct.unpack('>d', string.sub(head, {_EXPIRY_OFFSET + 1}, {_HEADER.size}))
  if not (expires_at > now) then return nil end
  return head
end
-- The owner of a live record: '-' for none, '+' and the user's ID otherwise.
local function owner(head)
  if string.byte(head, 1) ~= {_FORMAT[0]}
      or string.byte(head, {_HEADER.size + 1}) ~= {_HAS_USER[0]} then
    return '-'
  end
  local field = redis.call('GETRANGE', KEYS[1], {_HEADER.size + 1}, {_HEADER.size + 4})
  if #field < 4 then return '-' end
  local length = struct.unpack('>I4', field)
  if length == 0 then return '+' end
  return '+' .. redis.call(
    'GETRANGE', KEYS[1], {_HEADER.size + 5}, {_HEADER.size + 4} + length)
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
# Returns 0, or the owner of the deleted record (see owner()).
_DELETE = _LIVE_HEADER + """
local head = live_header(tonumber(ARGV[1]))
if not head then return 0 end
if ARGV[2] ~= '' and string.sub(head, 2, 9) ~= ARGV[2] then return 0 end
local who = owner(head)
redis.call('DEL', KEYS[1])
return who
"""

# The per-user index, a sorted set of session keys scored with their expiry.
# KEYS[1] the set; ARGV[1] now; ARGV[2] the session key; ARGV[3] its expiry.
# The score only ever rises (GT), members past their score go, and the set
# lives as long as its latest member (and a second more).
_INDEX = """
redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then return 0 end
redis.call('PEXPIRE', KEYS[1],
  math.ceil((tonumber(last[2]) - tonumber(ARGV[1])) * 1000) + 1000)
return 1
"""

# KEYS[1] the key; ARGV[1] now; ARGV[2] the packed new expiry; ARGV[3] the TTL
# in milliseconds (<= 0: the record ends now); ARGV[4] the owner the caller has
# indexed the key under ('-' for none). A record of another owner is left
# alone and its owner returned, so that the caller indexes it first.
_TOUCH = _LIVE_HEADER + f"""
local head = live_header(tonumber(ARGV[1]))
if not head then return 0 end
local who = owner(head)
if who ~= '-' and who ~= ARGV[4] then return who end
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

    Records written with ``user=`` are indexed in one sorted set per user,
    named ``user_index_prefix`` plus the SHA-256 (hex) of the user's ID (see
    the module docstring); writing or touching a session of a user costs one
    round trip more than an anonymous one.
    """

    indexes_users = True

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        timeout: float = 5.0,
        user_index_prefix: str = "kvsession:user:",
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("RedisStore: give a URL or client=, exactly one of them")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"RedisStore: timeout must be a positive number of seconds, "
                             f"not {timeout!r}")
        if not isinstance(user_index_prefix, str):
            raise ValueError(
                f"RedisStore: user_index_prefix must be a str, not {user_index_prefix!r}"
            )
        self.timeout = float(timeout)
        self.url = url
        #: Prefix of the per-user index sets (one sorted set per user).
        self.user_index_prefix = user_index_prefix
        self._owns_client = client is None
        self._sentinel: Sentinel | None = None
        self._lock = threading.Lock()
        #: The user of records this process read or wrote lately (key -> user),
        #: so that a touch, which follows a load of the same key, can index
        #: the record before moving its expiry without first asking whose it
        #: is. Only a hint: the touch script checks it against the record.
        self._owners: OrderedDict[str, str | None] = OrderedDict()
        self._owners_lock = threading.Lock()
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
            raw = self._client.get(key)
        except ResponseError as exc:
            if _wrong_type(exc):
                return None  # another application's hash or list: not a session
            raise self._fail("load", exc) from exc
        except _REDIS_ERRORS as exc:
            raise self._fail("load", exc) from exc
        parsed = _parse(raw, time.time())
        if parsed is None:
            return None
        self._remember(key, parsed[1])
        return parsed[0]

    def _remember(self, key: str, user: str | None) -> None:
        with self._owners_lock:
            self._owners[key] = user
            self._owners.move_to_end(key)
            if len(self._owners) > _OWNER_HINTS:
                self._owners.popitem(last=False)

    def _index_key(self, user: str) -> str:
        return self.user_index_prefix + hashlib.sha256(_user_bytes(user)).hexdigest()

    def _index(self, user: str, key: str, expires_at: float) -> None:
        """Add ``key`` to ``user``'s index, scored no lower than ``expires_at``:
        called before the record is written or its expiry moved."""
        self._client.index(
            keys=[self._index_key(user)], args=[repr(time.time()), key, repr(expires_at)]
        )

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        ttl = _ttl_ms(expires_at, time.time())
        try:
            if ttl <= 0:
                # Nothing to store: report only whether a live record was in the way.
                return self.load(key) is None
            if user is not None:
                self._index(user, key, expires_at)
            self._remember(key, user)
            record = _pack(_new_token(), expires_at, user, value)
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
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        *,
        user: str | None = None,
    ) -> bool:
        if version is not None and not _is_token(version):
            return False  # not a version this store handed out: it cannot match
        try:
            if user is not None:
                self._index(user, key, expires_at)
            self._remember(key, user)
            now = time.time()
            args = [repr(now), version or b"", _pack(_new_token(), expires_at, user, value)]
            done = self._client.update(keys=[key], args=[*args, _ttl_ms(expires_at, now)])
        except _REDIS_ERRORS as exc:
            raise self._fail("update", exc) from exc
        return bool(done)

    def delete(self, key: str, version: Version | None = None) -> bool:
        if version is not None and not _is_token(version):
            return False
        with self._owners_lock:
            self._owners.pop(key, None)
        try:
            owner = self._client.delete(keys=[key], args=[repr(time.time()), version or b""])
            if isinstance(owner, bytes) and owner.startswith(b"+"):
                # Tidy only: a member whose record is gone is skipped anyway,
                # and leaves the set when its score passes.
                self._client.redis.zrem(self._index_key(_user_of(owner)), key)
        except _REDIS_ERRORS as exc:
            raise self._fail("delete", exc) from exc
        return bool(owner)

    def touch(self, key: str, expires_at: float) -> bool:
        indexed = b"-"  # the owner the key is indexed under for this expiry
        try:
            with self._owners_lock:
                hint = self._owners.get(key)
            if hint is not None:  # as read by the load before this touch
                self._index(hint, key, expires_at)
                indexed = b"+" + _user_bytes(hint)
            for _ in range(_TOUCH_ATTEMPTS):
                now = time.time()
                args = [repr(now), struct.pack(">d", expires_at), _ttl_ms(expires_at, now)]
                done = self._client.touch(keys=[key], args=[*args, indexed])
                if not isinstance(done, bytes):
                    return bool(done)
                # A record of a user: index it under this expiry first (the
                # set must never expire, nor drop the key, before the record).
                indexed = done
                self._index(_user_of(done), key, expires_at)
        except _REDIS_ERRORS as exc:
            raise self._fail("touch", exc) from exc
        raise StoreError(f"{self!r}: touch failed: the session's user kept changing")

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
                    yield from self._fetch(batch, _ANYONE)
                    batch = []
            yield from self._fetch(batch, _ANYONE)
        except _REDIS_ERRORS as exc:
            raise self._fail("listing records", exc) from exc

    def _fetch(self, names: list[bytes], user: str | _Anyone) -> Iterator[tuple[str, Record]]:
        """The live records under ``names``; with ``user``, only that user's."""
        if not names:
            return
        # A non-transactional pipeline: one round trip per node, any key slots.
        pipe = self._client.redis.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
        now = time.time()
        for name, raw in zip(names, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(raw, ResponseError) and _wrong_type(raw):
                continue  # another application's key of another type
            if isinstance(raw, Exception):
                raise raw
            parsed = _parse(raw, now)
            if parsed is not None and (user is _ANYONE or parsed[1] == user):
                yield name.decode("utf-8", "surrogateescape"), parsed[0]

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """Yield the live records of ``user`` under ``prefix``, from the user's
        sorted set: one read of the set, then the records in one pipeline per
        500 keys. Members whose record is gone or has passed to another user
        are skipped."""
        index = self._index_key(user)
        try:
            now = time.time()
            members: list[bytes] = self._client.redis.zrange(
                index, f"({now!r}", "+inf", byscore=True
            )
            start_with = prefix.encode("utf-8", "surrogateescape")
            wanted = sorted(m for m in members if m.startswith(start_with))
            for start in range(0, len(wanted), 500):
                yield from self._fetch(wanted[start : start + 500], user)
        except _REDIS_ERRORS as exc:
            raise self._fail("listing a user's records", exc) from exc

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
    """A redis-py client with this store's scripts registered on it.

    On a plain ``redis.Redis`` with a connection pool (a standalone server, or
    a Sentinel's primary), ``get`` and the scripts go straight to a pooled
    connection: ``send_command`` and ``read_response`` are what
    ``Redis.execute_command`` does, without its per-command bookkeeping (retry
    callbacks, observability hooks), which costs more than the rest of a
    session read. The store's retry rule is kept: a broken connection is
    retried once on a fresh one, a timeout never (redis-py drops a connection
    that timed out, so a late reply is never read as another command's).
    A Cluster, a single-connection client or a subclass takes the usual path.
    """

    def __init__(self, client: Any) -> None:
        self.redis: Any = client
        # Script objects only compute their SHA here; Redis gets the script on
        # first use (EVALSHA, and SCRIPT LOAD once when Redis does not know it).
        self._update = client.register_script(_UPDATE)
        self._delete = client.register_script(_DELETE)
        self._touch = client.register_script(_TOUCH)
        self._index = client.register_script(_INDEX)
        pool = getattr(client, "connection_pool", None)
        self._pool: redis.ConnectionPool | None = (
            pool
            if type(client) is redis.Redis
            and getattr(client, "connection", None) is None
            and isinstance(pool, redis.ConnectionPool)
            else None
        )

    def get(self, key: str) -> Any:
        if self._pool is None:
            return self.redis.get(key)
        return self._direct(self._pool, ("GET", key))

    def update(self, keys: list[str], args: list[Any]) -> Any:
        return self._run(self._update, keys, args)

    def delete(self, keys: list[str], args: list[Any]) -> Any:
        return self._run(self._delete, keys, args)

    def touch(self, keys: list[str], args: list[Any]) -> Any:
        return self._run(self._touch, keys, args)

    def index(self, keys: list[str], args: list[Any]) -> Any:
        return self._run(self._index, keys, args)

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._pool is not None:
            try:
                return self._direct(self._pool, ("EVALSHA", script.sha, len(keys), *keys, *args))
            except NoScriptError:
                pass  # Redis restarted (or its scripts were flushed): the Script loads it
        return script(keys=keys, args=args)

    @staticmethod
    def _direct(pool: redis.ConnectionPool, command: tuple[Any, ...]) -> Any:
        for attempt in (0, 1):
            connection = pool.get_connection()
            try:
                connection.send_command(*command)
                return connection.read_response()
            except RedisConnectionError:
                # A pooled connection that broke (a Redis restart): once more,
                # on a fresh connection. redis-py has already disconnected it.
                connection.disconnect()
                if attempt:
                    raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")  # pragma: no cover


def _wrong_type(exc: ResponseError) -> bool:
    return str(exc).startswith("WRONGTYPE")


def _decodes_responses(client: Any) -> bool:
    get_encoder = getattr(client, "get_encoder", None)
    if get_encoder is None:
        return False
    return bool(getattr(get_encoder(), "decode_responses", False))


def _is_token(version: Version) -> TypeGuard[bytes]:
    return isinstance(version, bytes) and len(version) == _TOKEN_SIZE


class _Anyone:
    """Marker: records of any user (or none)."""


_ANYONE = _Anyone()


def _user_bytes(user: str) -> bytes:
    return user.encode("utf-8", "surrogatepass")


def _user_of(owner: bytes) -> str:
    """The user's ID in an owner answer of a script (``+`` and the ID)."""
    return owner[1:].decode("utf-8", "surrogatepass")


def _pack(token: bytes, expires_at: float, user: str | None, value: bytes) -> bytes:
    head = _HEADER.pack(_FORMAT, token, expires_at)
    if user is None:
        return head + _NO_USER + value
    name = _user_bytes(user)
    return head + _HAS_USER + _USER_LENGTH.pack(len(name)) + name + value


def _parse(raw: bytes | None, now: float) -> tuple[Record, str | None] | None:
    """The live record a stored string holds and its user, or ``None``
    (absent, expired, not ours)."""
    if raw is None or len(raw) < _HEADER.size:
        return None
    form, token, expires_at = _HEADER.unpack_from(raw)
    if not expires_at > now:  # also rejects a NaN expiry from foreign bytes
        return None
    if form == _FORMAT_V1:
        return Record(raw[_HEADER.size :], expires_at, token), None
    if form != _FORMAT:
        return None
    kind = raw[_HEADER.size : _HEADER.size + 1]
    if kind == _NO_USER:
        return Record(raw[_HEADER.size + 1 :], expires_at, token), None
    start = _HEADER.size + 1 + _USER_LENGTH.size
    if kind != _HAS_USER or len(raw) < start:
        return None
    (length,) = _USER_LENGTH.unpack_from(raw, _HEADER.size + 1)
    if len(raw) < start + length:
        return None
    try:
        user = raw[start : start + length].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    return Record(raw[start + length :], expires_at, token), user
