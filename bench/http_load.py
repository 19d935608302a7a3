"""HTTP throughput under gunicorn: requests/s, the same workload under each system.

The systems and their app are those of ``bench/overhead.py`` (imported, not
copied); here each one is served by gunicorn and loaded over loopback:

* gunicorn ``-w 2 -k gthread --threads 4`` per system, bound to 127.0.0.1 on a
  free port, started and stopped by PID (``tests/http/harness.py``). gthread,
  because gunicorn's sync worker closes the connection after every response:
  a keep-alive client would measure a TCP handshake per request instead of the
  session; the threads let a worker overlap store round trips, as deployed.
  Systems whose store lives in the worker's memory (wsgi_kvsession's and
  Beaker's memory stores) run with ONE worker and are marked so: with two, a
  returning cookie lands on a worker that never saw its session.
* The load generator: ``ab`` (ApacheBench, C), one process per connection, so
  each connection carries its own returning session cookie (one shared cookie
  would make the writes of all connections race on one session). Each is bounded
  by a request count (``-n``) and a time limit (``-t``) and keeps its connection
  alive (``-k``). ``--load-tool python`` uses threads with ``http.client``
  instead (no install needed; the client then competes with the server for the
  CPUs, so its numbers are lower: for smoke tests, not for the table).
* Modes ``untouched``, ``read``, ``write`` x payloads ~100 B and ~4 KB; repeats
  interleaved (every cell runs every system in an order rotated per repeat);
  the table shows medians of requests/s and ratios to the floors of
  ``overhead.floor_of`` (bare WSGI / bare Flask for untouched, raw redis-py for
  read and write).
* Every run is verified: no non-2xx answer, no connection error, every body of
  the expected length (``ab``) or value (``python``); after a write run, each
  session's counter read back equals the 2xx writes made on its connection.
  A system that fails shows ``FAIL``, never a number, and the exit status is 1.
* Next to requests/s, the gunicorn workers' CPU µs per request (from ``/proc``):
  on a shared machine other processes move requests/s far more than that.
* Store round trips per request, counted by the servers in a separate untimed
  pass: Redis ``total_reads_processed`` (read events, i.e. round trips) of a
  private redis-server, memcached commands of a private memcached, PostgreSQL
  transactions (the store runs in autocommit: one per statement) of a fresh
  database.

Run from the repository root::

    .venv/bin/python bench/http_load.py [--repeats 3] [--requests 2000]

Output: the tables on stdout, ``bench/results/http.json`` and ``http.png``.
``ab`` comes with ``apt-get install -y apache2-utils``; the script says so when
it is missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import overhead as ov  # noqa: E402 (bench/ is not a package: the path above finds it)

#: How gunicorn (working in the repository root) finds one system's app.
TARGET = "bench.http_load:served_app()"
WORKERS = 2
#: Environment of the gunicorn workers (set by the parent, read by served_app()).
ENV_SYSTEM = "BENCH_HTTP_SYSTEM"
ENV_TMP = "BENCH_HTTP_TMP"
ENV_SEED = "BENCH_HTTP_SEED"
ENV_DROP = "BENCH_HTTP_DROP_WRITES"
ENV_REDIS = "BENCH_HTTP_REDIS_URL"
ENV_MEMCACHED = "BENCH_HTTP_MEMCACHED_URL"
ENV_POSTGRESQL = "BENCH_HTTP_POSTGRESQL_URL"
POSTGRESQL_URL = os.environ.get(
    "KVSESSION_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
#: Seconds until the workers' PostgreSQL backends have reported their statistics.
PG_STATS_DELAY = 10.5
#: --drop-writes: the wrapped app answers every this-many-th /write without writing.
DROP_EVERY = 10
#: A request of the parent (setup, count) and of a load run: socket timeout.
REQUEST_TIMEOUT = 10.0
AB_INSTALL = "apt-get install -y apache2-utils"

WSGIApp = ov.WSGIApp


# ---------------------------------------------------------------------- systems
# Imported by gunicorn in each worker through served_app(): the systems of
# overhead.py, built exactly as the parent builds them.


@contextlib.contextmanager
def seeded_secrets(seed: str) -> Iterator[None]:
    """Make overhead.py's random key prefixes and Flask secret keys the same in every process.

    ``overhead.build_systems`` draws them from ``secrets.token_hex``; each gunicorn
    worker builds the systems anew, and two workers (and the parent, which checks
    the counters and deletes the keys) must agree on them, or a cookie set by one
    worker is unknown to the other. Session ids (``token_urlsafe``) stay random.
    """
    calls = iter(range(1, 1_000_000))

    class Seeded:
        token_urlsafe = staticmethod(secrets.token_urlsafe)
        token_bytes = staticmethod(secrets.token_bytes)

        @staticmethod
        def token_hex(nbytes: int = 32) -> str:
            label = f"{seed}:{next(calls)}".encode()
            return hashlib.blake2b(label, digest_size=nbytes).hexdigest()

    saved = vars(ov)["secrets"]
    setattr(ov, "secrets", Seeded)  # noqa: B010 (a module's global, replaced for a while)
    try:
        yield
    finally:
        setattr(ov, "secrets", saved)  # noqa: B010


def derived(seed: str, label: str, nbytes: int = 6) -> str:
    return hashlib.blake2b(f"{seed}:{label}".encode(), digest_size=nbytes).hexdigest()


EXTRA = ("kvsession-memcached", "kvsession-postgresql", "flask-session-memcached")


def extra_systems(
    tmp: Path, seed: str, have: set[str], only: str | None
) -> tuple[list[ov.System], list[str]]:
    """The issue's systems that overhead.py does not define (yet): memcached and PostgreSQL.

    Only those whose name overhead.py does not already give (``have``); the
    servers are the ones the parent started (URLs in the environment).
    """
    from wsgi_kvsession import KVSessionMiddleware, __version__, get_session

    systems: list[ov.System] = []
    skipped: list[str] = []
    kv = f"wsgi_kvsession {__version__}"
    memcached_url = os.environ.get(ENV_MEMCACHED, "")
    postgresql_url = os.environ.get(ENV_POSTGRESQL, "")

    def wanted(name: str, url: str, why: str) -> bool:
        if name in have or only not in (None, name):
            return False
        if not url and only is None:
            skipped.append(f"{name}: {why}")
        return bool(url)

    if wanted("kvsession-memcached", memcached_url, "no memcached (apt-get install memcached)"):
        from wsgi_kvsession.stores import MemcacheStore

        store = MemcacheStore(memcached_url)
        app = KVSessionMiddleware(
            ov.make_raw_app(get_session),
            store,
            key_prefix=f"bench-http:{derived(seed, 'kvsession-memcached')}:",
        )
        systems.append(
            ov.System(
                "kvsession-memcached", f"{kv} / memcached (WSGI)", "wsgi", app, cleanup=store.close
            )
        )
    if wanted(
        "kvsession-postgresql", postgresql_url, f"PostgreSQL at {POSTGRESQL_URL} unavailable"
    ):
        from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore

        sql_store = SQLAlchemyStore(postgresql_url, table="kvsession_bench")
        app = KVSessionMiddleware(ov.make_raw_app(get_session), sql_store)
        systems.append(
            ov.System(
                "kvsession-postgresql",
                f"{kv} / PostgreSQL (WSGI)",
                "wsgi",
                app,
                cleanup=sql_store.close,
            )
        )
    if wanted("flask-session-memcached", memcached_url, "no memcached (apt-get install memcached)"):
        import flask_session
        from pymemcache.client.base import PooledClient

        host, _, port = memcached_url.removeprefix("memcached://").partition(":")
        flask_app = ov.make_flask_app()
        flask_app.config.update(
            SECRET_KEY=derived(seed, "flask-session-memcached:secret", 32),
            SESSION_TYPE="memcached",
            # The client wsgi_kvsession's MemcacheStore builds: pooled (gthread serves requests
            # on several threads; a plain Client is not thread-safe), TCP_NODELAY, and waiting
            # for each reply. With pymemcache's defaults (noreply, Nagle) Flask-Session loses
            # writes here: the next request, on the other worker, reads before the set landed.
            SESSION_MEMCACHED=PooledClient(
                (host, int(port)),
                timeout=REQUEST_TIMEOUT,
                no_delay=True,
                default_noreply=False,
            ),
            SESSION_KEY_PREFIX=f"bench-http:{derived(seed, 'flask-session-memcached')}:",
        )
        flask_session.Session(flask_app)
        version = getattr(flask_session, "__version__", "?")
        systems.append(
            ov.System(
                "flask-session-memcached",
                f"Flask-Session {version} / memcached",
                "flask",
                flask_app,
            )
        )
    return systems, skipped


def build_all(
    tmp: Path, cleanup: ov.Cleanup, seed: str, only: str | None = None
) -> tuple[list[ov.System], list[str], Any]:
    """overhead.py's systems on this run's servers, then the extra ones, in one order."""
    ov.REDIS_URL = os.environ.get(ENV_REDIS, ov.REDIS_URL)
    with seeded_secrets(seed):
        systems, skipped, redis_client = ov.build_systems(tmp, cleanup)
    extras, more = extra_systems(tmp, seed, {s.name for s in systems}, only)
    # Next to their kin: kvsession's raw WSGI systems, then Flask-Session's.
    order = [s.name for s in systems]
    for extra in extras:
        kin = "kvsession-file" if extra.kind == "wsgi" else "flask-session-redis"
        at = order.index(kin) + 1 if kin in order else len(order)
        systems.insert(at, extra)
        order.insert(at, extra.name)
    return systems, skipped + more, redis_client


def with_probe(app: WSGIApp, drop_every: int) -> WSGIApp:
    """``app`` plus ``/pid`` (the harness's warm-up asks it which worker answers).

    With ``drop_every`` (``--drop-writes``, to test the verification), every
    ``drop_every``-th ``/write`` is answered 200 without reaching the app: a
    system that silently loses writes.
    """
    lock = threading.Lock()
    writes = [0]

    def served(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        dropped = False
        if drop_every and path == "/write":
            with lock:
                writes[0] += 1
                dropped = writes[0] % drop_every == 0
        if path == "/pid" or dropped:
            body = json.dumps({"pid": os.getpid()}).encode() if not dropped else b"1"
            start_response(
                "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            )
            return [body]
        return app(environ, start_response)

    return served


def served_app() -> WSGIApp:
    """gunicorn's app factory: the system named by ``BENCH_HTTP_SYSTEM``."""
    name = os.environ[ENV_SYSTEM]
    systems, _, _ = build_all(Path(os.environ[ENV_TMP]), ov.Cleanup(), os.environ[ENV_SEED], name)
    for system in systems:
        if system.name == name:
            return with_probe(system.app, int(os.environ.get(ENV_DROP, "0")))
    raise LookupError(f"{name}: no such system here (its server or library is missing)")


# ---------------------------------------------------------------------- servers


def store_of(name: str) -> str | None:
    """Which counted server a system's store is on."""
    for store in ("redis", "memcached", "postgresql"):
        if store in name:
            return store
    return None


def one_worker(name: str) -> bool:
    """A store in the worker's memory: two workers would be two stores."""
    return "memory" in name


class Servers:
    """This run's store servers: a private redis-server and memcached, a fresh PostgreSQL
    database; their counters of round trips. Everything is undone by :meth:`close`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.processes: list[Any] = []
        self.notes: list[str] = []
        self.redis: Any = None
        self.redis_private = False
        self.memcached: Any = None
        self.pg_engine: Any = None
        self.pg_database = ""

    def start(self, needed: set[str | None]) -> dict[str, str]:
        """Start the ``needed`` servers that are installed; return the workers' environment."""
        env: dict[str, str] = {}
        if "redis" in needed:
            env[ENV_REDIS] = self.start_redis()
        if "memcached" in needed and shutil.which("memcached") is not None:
            from pymemcache.client.base import Client

            from tests.stores.backend_memcached import start_memcached

            try:
                process = start_memcached(self.tmp)
            except RuntimeError as exc:
                self.notes.append(f"memcached did not start: {exc}")
            else:
                self.processes.append(process)
                env[ENV_MEMCACHED] = f"memcached://127.0.0.1:{process.port}"
                self.memcached = Client(("127.0.0.1", process.port), timeout=5)
        if "postgresql" in needed:
            env.update(self.create_database())
        return env

    def start_redis(self) -> str:
        from tests.servers import ServerProcess, free_port

        url = ov.REDIS_URL
        binary = shutil.which("redis-server")
        if binary is None:
            self.notes.append(
                f"redis-server is not installed: using {url}, shared, so the Redis round "
                "trips counted include other clients'"
            )
        else:
            port = free_port()
            argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
            argv += ["--appendonly", "no"]  # nothing on disk
            try:
                self.processes.append(ServerProcess(argv, port, self.tmp / "redis.log").start())
                url, self.redis_private = f"redis://127.0.0.1:{port}/0", True
            except RuntimeError as exc:
                self.notes.append(f"redis-server did not start ({exc}): using {url}, shared")
        with contextlib.suppress(Exception):
            import redis

            self.redis = redis.Redis.from_url(url, socket_timeout=5)
            self.redis.ping()
        return url

    def create_database(self) -> dict[str, str]:
        """A fresh PostgreSQL database: its counters are this run's, dropping it is ours."""
        try:
            import sqlalchemy as sa

            url = sa.make_url(POSTGRESQL_URL)
            engine = sa.create_engine(
                url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
            )
            name = f"bench_http_{secrets.token_hex(4)}"
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            self.notes.append(f"PostgreSQL at {POSTGRESQL_URL}: {type(exc).__name__}: {exc}")
            return {}
        self.pg_engine, self.pg_database = engine, name
        return {ENV_POSTGRESQL: url.set(database=name).render_as_string(hide_password=False)}

    def counters(self, store: str | None) -> dict[str, float]:
        """The server's counters now (for a system on ``store``)."""
        if store == "redis" and self.redis is not None:
            info = self.redis.info("everything")
            result = {"round_trips": float(info["total_reads_processed"])}
            for key, value in info.items():
                if key.startswith("cmdstat_") and key != "cmdstat_info":
                    result[key.removeprefix("cmdstat_")] = float(value["calls"])
            return result
        if store == "memcached" and self.memcached is not None:
            stats = {k.decode(): v for k, v in self.memcached.stats().items()}
            names = ["cmd_get", "cmd_set", "cmd_touch", "delete_hits", "delete_misses"]
            names += ["incr_hits", "incr_misses", "decr_hits", "decr_misses"]
            result = {name: float(stats.get(name, 0)) for name in names}
            result["round_trips"] = sum(result.values())
            return result
        if store == "postgresql" and self.pg_engine is not None:
            import sqlalchemy as sa

            # An idle backend reports its statistics up to PGSTAT_IDLE_INTERVAL (10 s,
            # PostgreSQL 15+) after its last statement: wait for those of the run.
            time.sleep(PG_STATS_DELAY)
            query = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"
            with self.pg_engine.connect() as conn:
                value = conn.execute(sa.text(query), {"d": self.pg_database}).scalar_one()
            return {"round_trips": float(value)}
        return {}

    def close(self) -> None:
        if self.memcached is not None:
            with contextlib.suppress(Exception):
                self.memcached.close()
        if self.pg_engine is not None:
            import sqlalchemy as sa

            with contextlib.suppress(Exception), self.pg_engine.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)'))
            self.pg_engine.dispose()
        for process in reversed(self.processes):
            process.stop()


# ---------------------------------------------------------------------- clients


def get(port: int, path: str, jar: dict[str, str]) -> tuple[int, bytes, list[str]]:
    """One request as a browser with cookie jar ``jar`` (updated from the answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        headers = {"Connection": "close"}
        if jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        cookies = response.msg.get_all("Set-Cookie") or []
    finally:
        connection.close()
    ov.update_jar(jar, [("Set-Cookie", c) for c in cookies])
    return response.status, body, cookies


@dataclass
class LoadResult:
    """One load run: per connection, the 2xx answers; what went wrong; how long it took."""

    ok: list[int]
    seconds: float
    problems: list[str] = field(default_factory=list)
    keepalive: int = 0
    #: CPU seconds the gunicorn workers spent meanwhile (None where /proc is missing).
    server_cpu: float | None = None

    @property
    def total(self) -> int:
        return sum(self.ok)


_AB = {
    name: re.compile(pattern)
    for name, pattern in {
        "complete": r"Complete requests:\s+(\d+)",
        "failed": r"Failed requests:\s+(\d+)",
        "length": r"\(Connect: \d+, Receive: \d+, Length: (\d+)",
        "non2xx": r"Non-2xx responses:\s+(\d+)",
        "keepalive": r"Keep-Alive requests:\s+(\d+)",
        "document": r"Document Length:\s+(\d+) bytes",
        "seconds": r"Time taken for tests:\s+([\d.]+) seconds",
    }.items()
}


def ab_load(
    port: int, path: str, cookies: list[str], count: int, time_limit: float, expect: bytes | None
) -> LoadResult:
    """``ab -k -c 1 -n count -t time_limit``, one process per cookie, all at once.

    ``expect``: the exact body (its length is what ab can check), or None when the
    length varies (``/write`` answers the counter); ab then gets ``-l``.
    """
    argv = ["ab", "-q", "-k", "-c", "1", "-s", str(int(REQUEST_TIMEOUT))]
    # -t first: it sets -n to 50000, which the -n after it replaces (both bounds hold).
    argv += ["-t", str(max(1, int(time_limit))), "-n", str(count)]
    if expect is None:
        argv.append("-l")
    url = f"http://127.0.0.1:{port}{path}"
    processes = [
        subprocess.Popen(  # noqa: S603 (a fixed argv, no shell)
            [*argv, *(["-H", f"Cookie: {c}"] if c else []), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for c in cookies
    ]
    result = LoadResult([], 0.0)
    deadline = time.monotonic() + time_limit + REQUEST_TIMEOUT + 5
    for i, process in enumerate(processes):
        try:
            out, err = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            result.problems.append(f"connection {i}: ab did not exit in time")
        text = out.decode(errors="replace")
        found = {k: float(m.group(1)) for k, p in _AB.items() if (m := p.search(text))}
        if process.returncode != 0 or "complete" not in found or "seconds" not in found:
            message = err.decode(errors="replace")[-300:]
            result.problems.append(f"connection {i}: ab exited {process.returncode}: {message}")
            result.ok.append(0)
            continue
        result.seconds = max(result.seconds, found["seconds"])
        complete, non2xx = int(found["complete"]), int(found.get("non2xx", 0))
        # Under -l (/write: the counter's length varies) ab still counts length changes.
        failed = int(found.get("failed", 0) - (found.get("length", 0) if expect is None else 0))
        result.ok.append(complete - non2xx)
        result.keepalive += int(found.get("keepalive", 0))
        if complete < count:
            result.problems.append(
                f"connection {i}: {complete} of {count} requests within the time limit"
            )
        if non2xx or failed:
            result.problems.append(
                f"connection {i}: {non2xx} non-2xx, {failed} failed: {text[-400:]}"
            )
        if expect is not None and found.get("document") != len(expect):
            result.problems.append(
                f"connection {i}: body of {found.get('document', '?')} bytes, "
                f"expected {len(expect)}"
            )
    return result


def python_load(
    port: int, path: str, cookies: list[str], count: int, time_limit: float, expect: bytes | None
) -> LoadResult:
    """The same run with one thread and keep-alive ``http.client`` connection per cookie."""
    result = LoadResult([0] * len(cookies), 0.0)
    spans: list[tuple[float, float]] = []
    barrier = threading.Barrier(len(cookies), timeout=REQUEST_TIMEOUT)
    deadline = time.monotonic() + time_limit

    def one(i: int, cookie: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        headers = {"Cookie": cookie} if cookie else {}
        try:
            barrier.wait()
            start = time.perf_counter()
            for done in range(count):
                if time.monotonic() > deadline:
                    result.problems.append(
                        f"connection {i}: {done} of {count} within the time limit"
                    )
                    break
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                if not 200 <= response.status < 300:
                    result.problems.append(f"connection {i}: status {response.status}")
                    break
                result.ok[i] += 1
                if (expect is not None and body != expect) or (
                    expect is None and not body.isdigit()
                ):
                    result.problems.append(f"connection {i}: unexpected body {body[:40]!r}")
                    break
            spans.append((start, time.perf_counter()))
        except Exception as exc:
            result.problems.append(f"connection {i}: {exc!r}")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=one, args=(i, c), daemon=True) for i, c in enumerate(cookies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, deadline + REQUEST_TIMEOUT + 5 - time.monotonic()))
        if thread.is_alive():
            result.problems.append("a client thread did not finish in time")
    if spans:
        result.seconds = max(end for _, end in spans) - min(start for start, _ in spans)
    return result


LOAD_TOOLS = {"ab": ab_load, "python": python_load}


# ---------------------------------------------------------------------- runs


@dataclass
class Served:
    """One system behind its gunicorn, and the sessions of its connections."""

    system: ov.System
    modes: tuple[str, ...]
    workers: int
    server: Any = None
    #: Per payload, per connection: the returning browser's cookies and its writes so far.
    jars: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    writes: dict[str, list[int]] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    round_trips: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    #: Per cell, per repeat: the workers' CPU µs per request.
    cpu_us: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.system.name

    @property
    def label(self) -> str:
        suffix = " [1 worker]" if self.workers == 1 else ""
        return self.system.label + suffix


def setup_sessions(served: Served, payload: str, connections: int) -> None:
    """One session per connection, as a first request of each browser creates it."""
    jars: list[dict[str, str]] = []
    for _ in range(connections):
        jar: dict[str, str] = {}
        if served.modes != ("untouched",):  # a bare app: no session, no cookie
            status, body, _ = get(served.server.port, f"/setup/{payload}", jar)
            if status != 200 or body != b"setup" or not jar:
                raise AssertionError(f"setup: {status} {body[:40]!r}, cookies {jar}")
        jars.append(jar)
    served.jars[payload] = jars
    served.writes[payload] = [0] * connections


def load(
    served: Served, payload: str, mode: str, count: int, time_limit: float, tool: str
) -> LoadResult:
    """One load run of ``count`` requests over the connections; raises on a wrong answer."""
    cookies = ["; ".join(f"{k}={v}" for k, v in jar.items()) for jar in served.jars[payload]]
    expect = {"untouched": b"ok", "read": ov.PAYLOADS[payload].encode(), "write": None}[mode]
    per_connection = max(1, count // len(cookies))
    before = workers_cpu(served.server.worker_pids)
    result = LOAD_TOOLS[tool](
        served.server.port, "/" + mode, cookies, per_connection, time_limit, expect
    )
    after = workers_cpu(served.server.worker_pids)
    if before is not None and after is not None:
        result.server_cpu = after - before
    if result.problems:
        raise AssertionError("; ".join(result.problems[:3]))
    return result


def workers_cpu(pids: set[int]) -> float | None:
    """CPU seconds (user + system) the worker processes have used so far.

    Next to requests/s, which other processes on a shared machine push around,
    CPU time per request is what the server's own work costs.
    """
    total = 0
    try:
        for pid in pids:
            # Fields after the ")" that ends the command name: utime, stime are 14th, 15th.
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def verify_writes(served: Served, payload: str, result: LoadResult) -> None:
    """Each session's counter read back equals the writes answered 2xx on its connection."""
    writes = served.writes[payload]
    for i, jar in enumerate(served.jars[payload]):
        writes[i] += result.ok[i]
        status, body, _ = get(served.server.port, "/count", jar)
        if status != 200 or body != b"%d" % writes[i]:
            raise AssertionError(
                f"connection {i}: counter read back is {body[:20]!r} (status {status}) "
                f"after {writes[i]} writes answered 2xx"
            )


def run_cell(
    served: Served, payload: str, mode: str, count: int, time_limit: float, tool: str
) -> LoadResult:
    """A load run, verified."""
    result = load(served, payload, mode, count, time_limit, tool)
    if mode == "write":
        verify_writes(served, payload, result)
    return result


def start(served: Served, env: dict[str, str], work_dir: Path, threads: int) -> None:
    from tests.http.harness import GunicornServer

    work_dir.mkdir(parents=True, exist_ok=True)
    # Kept before it starts: whatever happens next, the caller stops it by PID.
    served.server = GunicornServer(
        TARGET, {**env, ENV_SYSTEM: served.name}, work_dir, workers=served.workers, threads=threads
    )
    served.server.start()


def start_all(
    fleet: list[Served],
    env: dict[str, str],
    work_dir: Path,
    args: argparse.Namespace,
    skipped: list[str],
) -> list[Served]:
    """Start every system's gunicorn (a few at a time); those that failed are skipped."""

    def one(served: Served) -> None:
        drop = {ENV_DROP: str(DROP_EVERY)} if served.name == args.drop_writes else {}
        start(served, env | drop, work_dir / served.name, args.threads)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(lambda s: _error_of(one, s), fleet))
    for served, error in zip(fleet, errors, strict=True):
        if error is not None:
            skipped.append(f"{served.name}: gunicorn did not serve it: {error}")
            if served.server is not None:
                served.server.stop()
    return [s for s, error in zip(fleet, errors, strict=True) if error is None]


def _error_of(function: Callable[[Served], None], served: Served) -> Exception | None:
    try:
        function(served)
    except Exception as exc:
        return exc
    return None


def measure(
    fleet: list[Served], args: argparse.Namespace
) -> tuple[dict[tuple[str, str, str], list[float]], int]:
    samples: dict[tuple[str, str, str], list[float]] = {}
    warm = max(args.connections, args.requests // 10)
    for served in fleet:
        for payload in ov.PAYLOADS:
            try:
                setup_sessions(served, payload, args.connections)
                for mode in served.modes:  # warm the workers, their connections and imports
                    run_cell(served, payload, mode, warm, args.time_per_run, args.load_tool)
            except Exception as exc:
                for mode in served.modes:
                    served.failures[(mode, payload)] = f"setup/warm-up: {exc}"
    deadline = time.monotonic() + args.time_limit
    done = 0
    for repeat in range(args.repeats):
        if time.monotonic() > deadline:
            print(
                f"time limit of {args.time_limit:.0f} s reached after {done} repeats",
                file=sys.stderr,
            )
            break
        # Rotate the order each repeat so no system always runs first or last.
        order = fleet[repeat % len(fleet) :] + fleet[: repeat % len(fleet)]
        for payload in ov.PAYLOADS:
            for mode in ov.MODES:
                for served in order:
                    if mode not in served.modes or (mode, payload) in served.failures:
                        continue
                    try:
                        result = run_cell(
                            served, payload, mode, args.requests, args.time_per_run, args.load_tool
                        )
                    except Exception as exc:
                        served.failures[(mode, payload)] = str(exc)
                        continue
                    rate = result.total / result.seconds if result.seconds else 0.0
                    samples.setdefault((served.name, mode, payload), []).append(rate)
                    if result.server_cpu is not None and result.total:
                        served.cpu_us.setdefault((mode, payload), []).append(
                            result.server_cpu / result.total * 1e6
                        )
        done += 1
        print(f"repeat {done}/{args.repeats} done", file=sys.stderr)
    return samples, done


def per_request(
    before: dict[str, float], after: dict[str, float], requests: int, store: str
) -> dict[str, float]:
    """The counters' growth per request (Redis: less the reading's own INFO)."""
    own = {"round_trips": 1.0} if store == "redis" else {}
    grown = {key: after[key] - before.get(key, 0.0) - own.get(key, 0.0) for key in after}
    return {key: round(value / requests, 3) for key, value in grown.items() if value > 0}


def count_round_trips(fleet: list[Served], servers: Servers, args: argparse.Namespace) -> None:
    """Store round trips per request, from the servers' counters, in an untimed pass.

    Only this pass's load runs between two readings: the other gunicorns are
    idle, the servers private, and the write checks (which read the counters back
    through the app) wait until the system's last reading. The readings are
    chained, each ending one cell and starting the next, because each PostgreSQL
    reading waits for the workers' backends to report (see Servers.counters).
    """
    for served in fleet:
        store = store_of(served.name)
        if store is None or args.count_requests <= 0:
            continue
        cells = [
            (mode, payload)
            for payload in ov.PAYLOADS
            for mode in served.modes
            if (mode, payload) not in served.failures
        ]
        writes: list[tuple[str, LoadResult]] = []
        before = servers.counters(store) if cells else {}
        for mode, payload in cells:
            try:
                result = load(
                    served, payload, mode, args.count_requests, args.time_per_run, args.load_tool
                )
            except Exception as exc:
                served.failures[(mode, payload)] = f"round-trip pass: {exc}"
                before = servers.counters(store)
                continue
            after = servers.counters(store)
            if before and after and result.total:
                served.round_trips[(mode, payload)] = per_request(
                    before, after, result.total, store
                )
            if mode == "write":
                writes.append((payload, result))
            before = after
        for payload, result in writes:
            try:
                verify_writes(served, payload, result)
            except Exception as exc:
                served.failures[("write", payload)] = f"round-trip pass: {exc}"


# ---------------------------------------------------------------------- report


def ratio_of(
    fleet: dict[str, Served],
    served: Served,
    mode: str,
    payload: str,
    medians: dict[tuple[str, str, str], float],
    floor: str,
) -> float | None:
    value = medians.get((served.name, mode, payload))
    base = medians.get((floor, mode, payload))
    if value is None or not base or served.workers != WORKERS or floor == served.name:
        return None
    if floor in fleet and fleet[floor].workers != WORKERS:
        return None
    return value / base


def table(fleet: list[Served], medians: dict[tuple[str, str, str], float]) -> str:
    by_name = {s.name: s for s in fleet}
    header = f"{'system':<50}"
    for payload in ov.PAYLOADS:
        for mode in ov.MODES:
            header += f" {mode + ' ' + ov.PAYLOAD_LABEL[payload]:>16}"
    header += f" {'round trips u/r/w':>18}"
    lines = [header, "-" * len(header)]
    for served in fleet:
        line = f"{served.label:<50}"
        for payload in ov.PAYLOADS:
            for mode in ov.MODES:
                value = medians.get((served.name, mode, payload))
                if mode not in served.modes:
                    cell = "-"
                elif (mode, payload) in served.failures:
                    cell = "FAIL"
                elif value is None:
                    cell = "n/a"
                else:
                    floor = ov.floor_of(served.system, mode)
                    ratio = ratio_of(by_name, served, mode, payload, medians, floor)
                    cell = f"{value:.0f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")
                line += f" {cell:>16}"
        trips = []
        for mode in ov.MODES:
            counted = served.round_trips.get((mode, "small"))
            if mode not in served.modes:
                trips.append("-")
            elif store_of(served.name) is None:
                trips.append("0" if served.modes == ("untouched",) else "·")
            else:
                trips.append("?" if counted is None else f"{counted.get('round_trips', 0.0):g}")
        line += f" {'/'.join(trips):>18}"
        lines.append(line)
    return "\n".join(lines)


def median_cpu(served: Served, mode: str, payload: str) -> float | None:
    values = served.cpu_us.get((mode, payload))
    return statistics.median(values) if values else None


def cpu_table(fleet: list[Served]) -> str:
    """The workers' CPU µs per request: the server's own cost, whatever else runs."""
    by_name = {s.name: s for s in fleet}
    header = f"{'system':<50}"
    for payload in ov.PAYLOADS:
        for mode in ov.MODES:
            header += f" {mode + ' ' + ov.PAYLOAD_LABEL[payload]:>16}"
    lines = [header, "-" * len(header)]
    for served in fleet:
        line = f"{served.label:<50}"
        for payload in ov.PAYLOADS:
            for mode in ov.MODES:
                value = median_cpu(served, mode, payload)
                floor = by_name.get(ov.floor_of(served.system, mode))
                base = None if floor is None else median_cpu(floor, mode, payload)
                if mode not in served.modes:
                    cell = "-"
                elif (mode, payload) in served.failures:
                    cell = "FAIL"
                elif value is None:
                    cell = "n/a"
                elif not base or floor is served:  # (a tiny run may count 0 CPU ticks)
                    cell = f"{value:.0f}"
                else:
                    cell = f"{value:.0f} ({value / base:.2f}x)"
                line += f" {cell:>16}"
        lines.append(line)
    return "\n".join(lines)


def chart(
    fleet: list[Served], medians: dict[tuple[str, str, str], float], path: Path, title: str
) -> None:
    """overhead.py's chart, of requests/s; the one-worker systems drawn light."""
    ov.chart(
        fleet,
        medians,
        path,
        title,
        xlabel="requests / s (median, higher is better)",
        light=lambda served: served.workers != WORKERS,
    )


def results_json(
    fleet: list[Served],
    samples: dict[tuple[str, str, str], list[float]],
    medians: dict[tuple[str, str, str], float],
    meta: dict[str, Any],
) -> dict[str, Any]:
    by_name = {s.name: s for s in fleet}
    bare_medians = {
        (name, mode, payload): value
        for (name, m, payload), value in medians.items()
        if name in ("bare-wsgi", "bare-flask") and m == "untouched"
        for mode in ov.MODES
    } | {k: v for k, v in medians.items() if k[0] not in ("bare-wsgi", "bare-flask")}

    def cell(served: Served, mode: str, payload: str) -> dict[str, Any]:
        if (mode, payload) in served.failures:
            return {"status": "FAIL", "reason": served.failures[(mode, payload)]}
        bare = "bare-wsgi" if served.system.kind == "wsgi" else "bare-flask"
        return {
            "status": "ok",
            "median_rps": medians.get((served.name, mode, payload)),
            "samples_rps": [round(v, 1) for v in samples.get((served.name, mode, payload), [])],
            "floor": ov.floor_of(served.system, mode),
            "ratio_floor": ratio_of(
                by_name, served, mode, payload, medians, ov.floor_of(served.system, mode)
            ),
            # Against the bare app's untouched rate (it has no session to read or write).
            "ratio_bare": ratio_of(by_name, served, mode, payload, bare_medians, bare),
            "round_trips_per_request": served.round_trips.get((mode, payload)),
            "median_server_cpu_us": median_cpu(served, mode, payload),
            "samples_server_cpu_us": [round(v, 1) for v in served.cpu_us.get((mode, payload), [])],
        }

    return {
        **meta,
        "systems": [
            {
                "name": s.name,
                "label": s.label,
                "kind": s.system.kind,
                "workers": s.workers,
                "store_server": store_of(s.name),
                "results": {
                    f"{mode}/{payload}": cell(s, mode, payload)
                    for payload in ov.PAYLOADS
                    for mode in s.modes
                },
            }
            for s in fleet
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats (1-50, default 3)")
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="requests per system, mode and payload in each repeat, spread over the "
        "connections (16-1000000, default 2000)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="concurrent keep-alive connections, one session each (1-64, default 8)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="gunicorn gthread threads per worker (1-32, default 4)",
    )
    parser.add_argument(
        "--load-tool",
        choices=sorted(LOAD_TOOLS),
        default="ab",
        help="ab (ApacheBench, default) or python (threads; for smoke tests)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        metavar="NAME",
        help="only these systems (names as in overhead.py; default all)",
    )
    parser.add_argument(
        "--time-per-run",
        type=float,
        default=60.0,
        help="time bound of one load run, in seconds (default 60)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=900.0,
        help="start no new repeat after this many seconds (default 900)",
    )
    parser.add_argument(
        "--count-requests",
        type=int,
        default=400,
        help="requests per cell of the untimed round-trip pass (0: skip it)",
    )
    parser.add_argument(
        "--output", type=Path, default=HERE / "results", help="where http.json and http.png go"
    )
    parser.add_argument(
        "--docs-image",
        type=Path,
        default=Path(),
        help="also copy the chart there (e.g. docs/_static/performance-http.png)",
    )
    parser.add_argument(
        "--drop-writes",
        metavar="NAME",
        default="",
        help=f"testing the verification: NAME's server answers every "
        f"{DROP_EVERY}th /write 200 without writing",
    )
    args = parser.parse_args(argv)
    if not (
        1 <= args.repeats <= 50
        and 16 <= args.requests <= 1_000_000
        and 1 <= args.connections <= 64
        and 1 <= args.threads <= 32
    ):
        parser.error("--repeats 1-50, --requests 16-1000000, --connections 1-64, --threads 1-32")
    if args.load_tool == "ab" and shutil.which("ab") is None:
        print(
            f"ab (ApacheBench) is not installed: {AB_INSTALL} (Debian/Ubuntu), "
            "or run with --load-tool python (its client shares the CPUs with the server, "
            "so its numbers are lower)",
            file=sys.stderr,
        )
        return 2

    # A SIGTERM unwinds like Ctrl-C: the finally below stops every server by PID.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    servers = Servers(tmp)
    fleet: list[Served] = []
    systems: list[ov.System] = []
    cleanup = ov.Cleanup()
    skipped: list[str] = []
    try:
        every: set[str | None] = {"redis", "memcached", "postgresql"}
        env = servers.start({store_of(n) for n in args.systems} if args.systems else every)
        seed = secrets.token_hex(16)
        env |= {ENV_TMP: str(tmp / "stores"), ENV_SEED: seed}
        os.environ.update(env)  # the parent builds the systems as the workers will
        (tmp / "stores").mkdir()
        systems, skipped, _ = build_all(tmp / "stores", cleanup, seed)
        wanted = set(args.systems or [s.name for s in systems])
        # The extra systems' servers are started only when asked for: no news then.
        skipped = [r for r in skipped if r.split(":")[0] in wanted or r.split(":")[0] not in EXTRA]
        skipped += servers.notes
        unknown = wanted - {s.name for s in systems}
        skipped += [f"{name}: unknown here (see overhead.py's names)" for name in sorted(unknown)]
        for system in systems:
            if system.name not in wanted:
                continue
            modes = system.modes
            if system.name == "flask-cookie":
                modes = tuple(m for m in modes if m != "write")
                skipped.append(
                    "flask-cookie write: each write answers a new cookie that carries the "
                    "counter, and the load tool sends one fixed cookie per connection"
                )
            fleet.append(Served(system, modes, 1 if one_worker(system.name) else WORKERS))
        fleet = start_all(fleet, env, tmp / "gunicorn", args, skipped)
        for reason in skipped:
            print(f"skipped: {reason}")
        if any(s.workers != WORKERS for s in fleet):
            print(
                "note: [1 worker] systems keep sessions in the worker's memory; "
                "with 2 workers a returning cookie would reach a worker that never saw it"
            )
        started = time.monotonic()
        samples, done = measure(fleet, args)
        count_round_trips(fleet, servers, args)
        seconds = time.monotonic() - started
    finally:
        for served in fleet:
            if served.server is not None:
                served.server.stop()
        if servers.redis is not None and not servers.redis_private:
            for system in systems:
                if system.name == "beaker-redis":
                    cleanup.patterns += [
                        f"beaker_cache:{v}:*"
                        for s in fleet
                        if s.name == system.name
                        for jars in s.jars.values()
                        for jar in jars
                        for v in jar.values()
                    ]
            cleanup.run(servers.redis)
        for system in systems:
            if system.cleanup is not None:
                with contextlib.suppress(Exception):
                    system.cleanup()
        servers.close()
        shutil.rmtree(tmp, ignore_errors=True)

    medians = {key: statistics.median(values) for key, values in samples.items()}
    print()
    print(
        f"median requests/s over {done} repeats x {args.requests} requests, "
        f"{args.connections} keep-alive connections ({args.load_tool}), gunicorn "
        f"-w {WORKERS} -k gthread --threads {args.threads}; ratio to the floor: bare WSGI / "
        f"bare Flask for untouched, raw redis-py for read and write; {seconds:.0f} s"
    )
    print(table(fleet, medians))
    print(
        "round trips u/r/w: per request, counted by the store's server (small payload): "
        "Redis read events, memcached commands, PostgreSQL transactions; · = no server"
    )
    print()
    print(
        "median CPU µs per request of the gunicorn workers (user + system, from /proc; "
        "ratio to the same floors; the store server's CPU is not included)"
    )
    print(cpu_table(fleet))
    failures = [
        (s.name, mode, payload, reason)
        for s in fleet
        for (mode, payload), reason in s.failures.items()
    ]
    for name, mode, payload, reason in failures:
        print(f"FAIL {name} {mode} {payload}: {reason}")

    args.output.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "bench/http_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_tool": args.load_tool,
        "gunicorn": f"-w {WORKERS} -k gthread --threads {args.threads}",
        "connections": args.connections,
        "repeats": done,
        "requests": args.requests,
        "seconds": round(seconds, 1),
        "skipped": skipped,
    }
    result = results_json(fleet, samples, medians, meta)
    (args.output / "http.json").write_text(json.dumps(result, indent=2) + "\n")
    png = args.output / "http.png"
    # The chart needs matplotlib (the bench extra); the table and the JSON do not.
    if importlib.util.find_spec("matplotlib") is None:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')")
    else:
        chart(
            fleet,
            medians,
            png,
            f"HTTP under gunicorn (2 workers, gthread), median requests/s over {done} x "
            f"{args.requests} requests, {args.connections} connections ({args.load_tool}); "
            "red = FAIL, light = 1 worker",
        )
        if str(args.docs_image) not in ("", "."):
            args.docs_image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, args.docs_image)
    print(f"\nwrote {args.output / 'http.json'} and {png}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
