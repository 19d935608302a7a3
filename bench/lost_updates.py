"""Lost updates under parallel requests: wsgi_kvsession next to Flask-Session.

The scenario of ``tests/http`` (DESIGN.md rule 11), measured instead of
asserted: gunicorn (``-w 4 -k gthread --threads 4``) serves a Flask app; one
session is created, then 40 requests on it are sent at once, each setting a
key of its own (``/set?k=key17&v=17``); then the session is read back and the
keys that are missing are counted. That is repeated ``--runs`` times per
system, each run on a fresh session.

Systems (the Flask app and its routes are the same code for all of them; only
the session backend differs):

* ``kvsession-redis``: wsgi_kvsession's ``init_app`` on the machine's Redis;
* ``flask-session-redis``: Flask-Session 0.8, ``SESSION_TYPE="redis"``, on the
  same Redis;
* ``kvsession-sqlite``, ``kvsession-postgresql``: wsgi_kvsession on SQLite (a
  temporary file) and on PostgreSQL (a fresh table, dropped afterwards);
* ``kvsession-memcached``, ``kvsession-file``: on request (``--systems``).

Run from the repository root, in the development virtualenv (it reuses the
test harness, ``tests/http/harness.py``)::

    pip install -e '.[test,all,bench]'
    python bench/lost_updates.py [--runs 5] [--delay 0] [--systems ...]

Redis is used under a random key prefix whose keys are deleted at the end
(never flushed). Servers: ``KVSESSION_TEST_REDIS_URL`` and
``KVSESSION_TEST_POSTGRESQL_URL``, with the tests' localhost defaults. A system
whose server or library is missing is reported as skipped. Nothing here is a
speed measurement; every request and run is bounded by the harness's timeouts.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: How gunicorn (working in the repository root) finds the app below.
TARGET = "bench.lost_updates:make_app()"
SYSTEMS = [
    "kvsession-redis",
    "flask-session-redis",
    "kvsession-sqlite",
    "kvsession-postgresql",
    "kvsession-memcached",
    "kvsession-file",
]
DEFAULT_SYSTEMS = SYSTEMS[:4]
#: Upper bound of the ``delay`` parameter.
MAX_DELAY = 5.0


# --------------------------------------------------------------------------- the app
# Imported by gunicorn in each worker: only Flask and the session library here.


def make_app() -> Any:
    """The Flask app, its sessions from ``BENCH_SYSTEM`` (set through the environment)."""
    from flask import Flask, request, session

    app = Flask(__name__)
    system = os.environ["BENCH_SYSTEM"]
    url = os.environ["BENCH_STORE_URL"]
    prefix = os.environ["BENCH_KEY_PREFIX"]
    if system == "flask-session":
        import redis
        from flask_session import Session

        app.config.update(
            SESSION_TYPE="redis",
            SESSION_REDIS=redis.Redis.from_url(url),
            SESSION_KEY_PREFIX=prefix,
        )
        Session(app)
    elif system == "wsgi_kvsession":
        from tests.http.app_under_test import build_store
        from wsgi_kvsession.integrations.flask import init_app

        store = build_store(url, os.environ.get("BENCH_SQL_TABLE") or None)
        init_app(app, store, key_prefix=prefix, cookie_secure=False)
    else:
        raise ValueError(f"BENCH_SYSTEM={system!r}")

    @app.get("/set")
    def set_key() -> dict[str, Any]:
        delay = min(max(float(request.args.get("delay", 0)), 0.0), MAX_DELAY)
        if delay:
            session.get(request.args["k"])  # load now, write after the delay
            time.sleep(delay)
        session[request.args["k"]] = request.args["v"]
        return {"pid": os.getpid()}

    @app.get("/get")
    def get_session() -> dict[str, Any]:
        return {"pid": os.getpid(), "data": dict(session)}

    @app.get("/slow-set")
    def slow_set() -> dict[str, Any]:
        session.get(request.args["k"])  # load now, write after the sleep
        time.sleep(min(max(float(request.args.get("sleep", 0)), 0.0), MAX_DELAY))
        session[request.args["k"]] = request.args["v"]
        return {"pid": os.getpid()}

    @app.get("/logout")
    def logout() -> dict[str, Any]:
        # wsgi_kvsession's logout is destroy(); Flask-Session has only clear().
        getattr(session, "destroy", session.clear)()
        return {"pid": os.getpid()}

    @app.get("/pid")
    def pid() -> dict[str, Any]:
        time.sleep(0.1)  # so that parallel calls spread over the workers
        return {"pid": os.getpid()}

    return app


# --------------------------------------------------------------------------- the runner


class Skip(Exception):
    """A system cannot run here (its server or library is missing)."""


@dataclass
class Result:
    system: str
    label: str
    lost: list[int] = field(default_factory=list)
    #: Requests per run that did not answer 200 (their keys count as lost too).
    errors: list[int] = field(default_factory=list)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Per logout race: whether the session was back afterwards.
    resurrected: list[bool] = field(default_factory=list)


@dataclass
class Backend:
    label: str
    env: dict[str, str]
    cleanup: Callable[[], None]


def _redis_url() -> str:
    from tests.stores.backend_redis import REDIS_URL

    return REDIS_URL


@contextmanager
def backend(system: str, work_dir: Path) -> Iterator[Backend]:
    """The store a system runs on: its environment for the app, and its cleanup."""
    prefix = "bench:" + secrets.token_hex(8) + ":"
    env = {"BENCH_KEY_PREFIX": prefix}
    if system.endswith("-redis"):
        try:
            import redis
        except ImportError as exc:
            raise Skip("redis-py is not installed") from exc
        url = _redis_url()
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise Skip(f"no Redis at {url}: {type(exc).__name__}") from exc
        env["BENCH_STORE_URL"] = url

        def drop_keys() -> None:
            # Shared server: delete exactly the keys under our prefix, never flush.
            keys = list(client.scan_iter(match=prefix + "*", count=500))
            if keys:
                client.delete(*keys)
            client.close()

        yield Backend("Redis", env, drop_keys)
    elif system == "kvsession-postgresql":
        try:
            import sqlalchemy as sa

            from tests.stores.backend_sql import POSTGRESQL_URL, table_name
            from wsgi_kvsession.stores.sqlalchemy import SQLAlchemyStore
        except ImportError as exc:
            raise Skip("SQLAlchemy/psycopg are not installed") from exc
        table = table_name()
        store = SQLAlchemyStore(POSTGRESQL_URL, table=table, timeout=5)
        try:
            store.create_table()
        except Exception as exc:
            store.close()
            raise Skip(f"PostgreSQL is not reachable ({store!r}): {exc}") from exc
        env.update(BENCH_STORE_URL=POSTGRESQL_URL, BENCH_SQL_TABLE=table)

        def drop_table() -> None:
            try:
                store.table.drop(store.engine, checkfirst=True)
            except sa.exc.SQLAlchemyError as exc:
                print(f"could not drop table {table}: {exc}", file=sys.stderr)
            finally:
                store.close()

        yield Backend("PostgreSQL", env, drop_table)
    elif system == "kvsession-sqlite":
        env["BENCH_STORE_URL"] = f"sqlite:///{work_dir / 'sessions.db'}"
        yield Backend("SQLite", env, lambda: None)
    elif system == "kvsession-file":
        env["BENCH_STORE_URL"] = f"file://{work_dir / 'sessions'}"
        yield Backend("files", env, lambda: None)
    elif system == "kvsession-memcached":
        if shutil.which("memcached") is None:
            raise Skip("memcached is not installed (apt-get install -y memcached)")
        from tests.stores.backend_memcached import start_memcached, url_of

        server = start_memcached(work_dir)
        env["BENCH_STORE_URL"] = url_of(server)
        yield Backend("memcached", env, server.stop)
    else:
        raise ValueError(system)


#: The logout race: the slow request sleeps this long after loading the session;
#: the logout is sent this long after the slow request.
SLOW_SLEEP = 0.5
LOGOUT_AFTER = 0.2


def logout_race(port: int) -> bool:
    """A slow request loads the session and sleeps; a logout destroys the session
    meanwhile; then the slow request sets a key. Return whether the session is
    back afterwards (the old cookie reads data again). Ordered by sleeps, which
    is good enough for a measurement; the tests order it exactly."""
    import concurrent.futures

    from tests.http.harness import HarnessError, http_get

    first = http_get(port, "/set?k=user&v=alice")
    cookie = first.cookie()
    if first.status != 200 or not cookie:
        raise HarnessError(f"the first request got {first.status}, cookies {first.set_cookies}")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http_get, port, f"/slow-set?k=late&v=1&sleep={SLOW_SLEEP}", cookie)
        time.sleep(LOGOUT_AFTER)
        logout = http_get(port, "/logout", cookie)
        slow_reply = slow.result(timeout=60)
    if logout.status != 200 or slow_reply.status != 200:
        raise HarnessError(f"logout race: logout {logout.status}, slow request {slow_reply.status}")
    after = http_get(port, "/get", cookie)
    data = {k: v for k, v in after.json()["data"].items() if not k.startswith("_")}
    return bool(data)


def run_system(system: str, runs: int, delay: float) -> Result:
    from tests.http.harness import GunicornServer, HarnessError, lost_update_run

    library = "Flask-Session" if system.startswith("flask-session") else "wsgi_kvsession"
    version = metadata.version("flask-session" if library == "Flask-Session" else "wsgi-kvsession")
    result = Result(system, f"{library} {version}")
    with tempfile.TemporaryDirectory(prefix="bench-lost-updates-") as tmp:
        work_dir = Path(tmp)
        try:
            with backend(system, work_dir) as store_backend:
                result.label += f" / {store_backend.label}"
                env = {
                    **store_backend.env,
                    "BENCH_SYSTEM": "flask-session" if library == "Flask-Session" else library,
                }
                try:
                    with GunicornServer(TARGET, env, work_dir) as server:
                        for _ in range(runs):
                            run = lost_update_run(server.port, delay=delay)
                            result.lost.append(len(run.missing))
                            result.errors.append(len(run.failed))
                        for _ in range(runs):
                            result.resurrected.append(logout_race(server.port))
                except HarnessError as exc:
                    result.notes.append(str(exc))
                finally:
                    store_backend.cleanup()
        except Skip as exc:
            result.skipped = str(exc)
    return result


def print_table(results: list[Result], runs: int, n: int) -> None:
    from tests.http.harness import median

    label_width = max(len(r.label) for r in results)
    header = (
        f"{'system / store':<{label_width}}  "
        + " ".join(f"{'run' + str(i + 1):>5}" for i in range(runs))
        + f"  {'median':>6}  {'total':>9}  {'errors':>6}  {'resurrected':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        if r.skipped:
            print(f"{r.label:<{label_width}}  skipped: {r.skipped}")
            continue
        cells = " ".join(f"{x:>5}" for x in r.lost) + " " * (6 * (runs - len(r.lost)))
        from_median = median(r.lost)
        total = f"{sum(r.lost)}/{n * len(r.lost)}"
        resurrected = f"{sum(r.resurrected)}/{len(r.resurrected)}"
        print(
            f"{r.label:<{label_width}}  {cells}  {from_median:>6g}  {total:>9}  "
            f"{sum(r.errors):>6}  {resurrected:>11}"
        )
        for note in r.notes:
            print(f"    {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per system (default 5)")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds each request waits between loading the session and writing it "
        "(default 0: the plain scenario)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS,
        default=DEFAULT_SYSTEMS,
        help=f"which systems to run (default: {' '.join(DEFAULT_SYSTEMS)})",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error("--runs: give 1 to 100")
    if not 0 <= args.delay <= MAX_DELAY:
        parser.error(f"--delay: give 0 to {MAX_DELAY} seconds")
    sys.path.insert(0, str(REPO_ROOT))
    from tests.http.harness import N_PARALLEL, THREADS, WORKERS

    print(
        f"lost updates: {N_PARALLEL} parallel requests on one session, each setting its own "
        f"key; gunicorn {metadata.version('gunicorn')} -w {WORKERS} -k gthread --threads "
        f"{THREADS}; {args.runs} runs; delay {args.delay}s between load and write\n"
        "(cells: keys missing out of 40 after the burst; errors: requests not answered 200;\n"
        f" resurrected: logout races, one per run, after which the old cookie still had data:\n"
        f" a request that loaded the session sleeps {SLOW_SLEEP}s, the logout comes "
        f"{LOGOUT_AFTER}s after it)\n"
    )
    results = [run_system(system, args.runs, args.delay) for system in args.systems]
    print_table(results, args.runs, N_PARALLEL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
