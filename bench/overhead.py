"""In-process session overhead: µs per request, the same workload under each system.

Every system serves the same four paths from a tiny app, called directly as a WSGI
callable (no server, no sockets other than the store's):

* ``/untouched``: the handler never reads the session;
* ``/read``: the handler returns the session's ``payload`` string;
* ``/write``: the handler increments the session's counter ``n`` and returns it;
* ``/setup/<size>`` and ``/count``: not timed; they create the session and read
  the counter back for verification.

A first request (``/setup/small`` or ``/setup/large``) creates the session; its
cookie is kept in a small cookie jar, and the timed requests reuse prebuilt
environs that carry it, like a returning browser (a ``Set-Cookie`` in a timed
response updates the jar, as a browser would: Flask's cookie sessions need that).

Runs are interleaved: for each repeat, every (payload, mode) cell runs every
system once, in a rotated order, so drift of the machine hits all systems
equally. The table shows the median over repeats. Every batch is verified: each
response must be 200 with the expected body (the payload for ``/read``, the next
counter value for ``/write``) and, after each write batch, ``/count`` must equal
the number of writes made so far. A system that fails is printed as FAIL.

Run from the repository root::

    .venv/bin/python bench/overhead.py [--repeats N] [--requests M]

Redis is used at ``KVSESSION_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
under random key prefixes whose keys are deleted at the end; it is never flushed.
memcached is a private one started for the run (when installed); PostgreSQL (at
``KVSESSION_TEST_POSTGRESQL_URL``) gets a fresh database, dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

REDIS_URL = os.environ.get("KVSESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODES = ("untouched", "read", "write")
# Hex text: Flask's cookie sessions compress the cookie, and 4 KB of hex still fits
# a browser's 4 KB cookie once compressed; for server-side stores it is 4 KB.
_rng = random.Random(8)  # noqa: S311 (benchmark data, not a secret)
PAYLOADS = {
    "small": "".join(_rng.choice("0123456789abcdef") for _ in range(100)),
    "large": "".join(_rng.choice("0123456789abcdef") for _ in range(4096)),
}
PAYLOAD_LABEL = {"small": "100 B", "large": "4 KB"}
TTL = 3600

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# ---------------------------------------------------------------------------- apps


def make_raw_app(
    get: Callable[[dict[str, Any]], Any],
    save: Callable[[dict[str, Any]], None] | None = None,
) -> WSGIApp:
    """The workload as a plain WSGI app over a session mapping found by ``get``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/untouched":
            body = b"ok"
        elif path == "/read":
            body = get(environ).get("payload", "").encode()
        elif path == "/write":
            session = get(environ)
            n = session.get("n", -(10**9)) + 1
            session["n"] = n
            if save is not None:
                save(environ)
            body = str(n).encode()
        elif path == "/count":
            body = str(get(environ).get("n")).encode()
        else:  # /setup/<size>
            session = get(environ)
            session["payload"] = PAYLOADS[path.rpartition("/")[2]]
            session["n"] = 0
            if save is not None:
                save(environ)
            body = b"setup"
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def make_flask_app() -> Any:
    """The workload as a Flask app over ``flask.session``."""
    from flask import Flask, session

    app = Flask("bench_overhead")
    app.config["SECRET_KEY"] = secrets.token_hex(32)

    @app.get("/untouched")
    def untouched() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return str(session.get("payload", ""))

    @app.get("/write")
    def write() -> str:
        n = session.get("n", -(10**9)) + 1
        session["n"] = n
        return str(n)

    @app.get("/count")
    def count() -> str:
        return str(session.get("n"))

    @app.get("/setup/<size>")
    def setup(size: str) -> str:
        session["payload"] = PAYLOADS[size]
        session["n"] = 0
        return "setup"

    return app


def _cookie(environ: dict[str, Any], name: str) -> str:
    for part in environ.get("HTTP_COOKIE", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def make_raw_redis_floor(client: Any, prefix: str) -> WSGIApp:
    """The physical floor: one GET (read) or GET + SETEX (write), nothing else.

    The stored value is ``b"<n>|<payload>"``: the least encoding that carries both.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        headers = [("Content-Type", "text/plain")]
        if path == "/untouched":
            body = b"ok"
        elif path.startswith("/setup/"):
            sid = secrets.token_urlsafe(32)
            payload = PAYLOADS[path.rpartition("/")[2]].encode()
            client.execute_command("SETEX", prefix + sid, TTL, b"0|" + payload)
            headers.append(("Set-Cookie", f"sid={sid}; Path=/; HttpOnly"))
            body = b"setup"
        else:
            key = prefix + _cookie(environ, "sid")
            value = client.get(key) or b"|"
            n, _, payload = value.partition(b"|")
            if path == "/read":
                body = payload
            elif path == "/count":
                body = n
            else:  # /write
                body = b"%d" % (int(n) + 1)
                client.execute_command("SETEX", key, TTL, body + b"|" + payload)
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    return app


def make_flask_redis_floor(client: Any, prefix: str) -> Any:
    """Bare Flask plus the raw floor: the view does the GET / GET + SETEX itself."""
    from flask import Flask, request

    app = Flask("bench_floor")

    @app.get("/untouched")
    def untouched() -> str:
        return "ok"

    @app.get("/setup/<size>")
    def setup(size: str) -> Any:
        sid = secrets.token_urlsafe(32)
        client.execute_command("SETEX", prefix + sid, TTL, b"0|" + PAYLOADS[size].encode())
        response = app.make_response("setup")
        response.set_cookie("sid", sid, httponly=True)
        return response

    def load() -> tuple[str, bytes, bytes]:
        key = prefix + request.cookies.get("sid", "")
        n, _, payload = (client.get(key) or b"|").partition(b"|")
        return key, n, payload

    @app.get("/read")
    def read() -> bytes:
        return load()[2]

    @app.get("/count")
    def count() -> bytes:
        return load()[1]

    @app.get("/write")
    def write() -> bytes:
        key, n, payload = load()
        body = b"%d" % (int(n) + 1)
        client.execute_command("SETEX", key, TTL, body + b"|" + payload)
        return body

    return app


# ---------------------------------------------------------------------------- systems


@dataclass
class System:
    name: str
    label: str
    kind: str  # "wsgi" or "flask": which floor it is compared with
    app: WSGIApp
    modes: tuple[str, ...] = MODES
    cleanup: Callable[[], None] | None = None
    #: Per payload: the cookie jar of the returning browser and writes made so far.
    jars: dict[str, dict[str, str]] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)


class Cleanup:
    """Redis key prefixes to delete at the end (SCAN + DEL, never FLUSH)."""

    def __init__(self) -> None:
        self.patterns: list[str] = []
        self.actions: list[Callable[[], None]] = []

    def run(self, client: Any) -> int:
        deleted = 0
        for pattern in self.patterns:
            keys = list(client.scan_iter(match=pattern, count=500))
            for start in range(0, len(keys), 500):
                deleted += client.delete(*keys[start : start + 500])
        for action in self.actions:
            with contextlib.suppress(Exception):
                action()
        return deleted


def build_systems(tmp: Path, cleanup: Cleanup) -> tuple[list[System], list[str], Any]:
    from wsgi_kvsession import KVSessionMiddleware, __version__, get_session
    from wsgi_kvsession.stores import FileStore, MemoryStore, RedisStore, SQLiteStore

    systems: list[System] = []
    skipped: list[str] = []
    kv = f"wsgi_kvsession {__version__}"

    def bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    systems.append(System("bare-wsgi", "bare WSGI", "wsgi", bare_wsgi, ("untouched",)))
    systems.append(System("bare-flask", "bare Flask", "flask", make_flask_app(), ("untouched",)))

    redis_client = None
    try:
        import redis

        redis_client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        redis_client.ping()
    except Exception as exc:
        skipped.append(f"every Redis system: Redis at {REDIS_URL} is unavailable ({exc})")
        redis_client = None

    def kv_prefix() -> str:
        prefix = f"bench-overhead:{secrets.token_hex(6)}:"
        cleanup.patterns.append(prefix + "*")
        return prefix

    if redis_client is not None:
        prefix = kv_prefix()
        systems.append(
            System(
                "redis-floor",
                "raw redis-py floor (WSGI)",
                "wsgi",
                make_raw_redis_floor(redis_client, prefix),
                ("read", "write"),
            )
        )
        prefix = kv_prefix()
        systems.append(
            System(
                "flask-redis-floor",
                "raw redis-py floor (Flask)",
                "flask",
                make_flask_redis_floor(redis_client, prefix),
                ("read", "write"),
            )
        )

    # wsgi_kvsession, raw WSGI middleware; cookie_secure stays on (environs are https).
    stores: list[tuple[str, str, Callable[[], Any]]] = [
        ("kvsession-memory", "memory", MemoryStore),
        ("kvsession-sqlite", "SQLite", lambda: SQLiteStore(tmp / "sessions.db")),
        ("kvsession-file", "files", lambda: FileStore(tmp / "files")),
    ]
    if redis_client is not None:
        stores.append(("kvsession-redis", "Redis", lambda: RedisStore(REDIS_URL)))
    for name, label, factory in stores:
        try:
            store = factory()
            options: dict[str, Any] = {"key_prefix": kv_prefix()} if label == "Redis" else {}
            app = KVSessionMiddleware(make_raw_app(get_session), store, **options)
            close = getattr(store, "close", None)
            systems.append(System(name, f"{kv} / {label} (WSGI)", "wsgi", app, cleanup=close))
        except Exception as exc:
            skipped.append(f"{name}: {exc}")

    # wsgi_kvsession, Flask integration.
    try:
        from wsgi_kvsession.integrations.flask import init_app

        flask_stores: list[tuple[str, str, Callable[[], Any]]] = [
            ("kvsession-flask-memory", "memory", MemoryStore)
        ]
        if redis_client is not None:
            flask_stores.append(("kvsession-flask-redis", "Redis", lambda: RedisStore(REDIS_URL)))
        for name, label, factory in flask_stores:
            app = make_flask_app()
            options = {"key_prefix": kv_prefix()} if label == "Redis" else {}
            store = init_app(app, factory(), **options)
            systems.append(
                System(
                    name,
                    f"{kv} / {label} (Flask)",
                    "flask",
                    app,
                    cleanup=getattr(store, "close", None),
                )
            )
    except Exception as exc:
        skipped.append(f"kvsession-flask-*: {exc}")

    systems.append(System("flask-cookie", "Flask cookie sessions", "flask", make_flask_app()))

    if redis_client is not None:
        try:
            import flask_session
            from flask_session import Session as FlaskSession

            app = make_flask_app()
            app.config.update(
                SESSION_TYPE="redis",
                SESSION_REDIS=redis_client,
                SESSION_KEY_PREFIX=kv_prefix(),
            )
            FlaskSession(app)
            version = getattr(flask_session, "__version__", "?")
            systems.append(
                System("flask-session-redis", f"Flask-Session {version} / Redis", "flask", app)
            )
        except Exception as exc:
            skipped.append(f"flask-session-redis: {exc}")

    try:
        import beaker
        from beaker.middleware import SessionMiddleware

        def beaker_session(environ: dict[str, Any]) -> Any:
            return environ["beaker.session"]

        def beaker_save(environ: dict[str, Any]) -> None:
            environ["beaker.session"].save()

        beaker_types: list[tuple[str, str, dict[str, Any]]] = [
            ("beaker-memory", "memory", {"session.type": "memory"})
        ]
        if redis_client is not None:
            beaker_types.append(
                ("beaker-redis", "Redis", {"session.type": "ext:redis", "session.url": REDIS_URL})
            )
        for name, label, config in beaker_types:
            app = SessionMiddleware(
                make_raw_app(beaker_session, beaker_save),
                {"session.auto": False, "session.timeout": TTL, **config},
            )
            systems.append(
                System(name, f"Beaker {beaker.__version__} / {label} (WSGI)", "wsgi", app)
            )
    except Exception as exc:
        skipped.append(f"beaker-*: {exc} (pip install beaker)")

    return systems, skipped, redis_client


# ---------------------------------------------------------------------------- client


def base_environ(path: str, jar: dict[str, str]) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench.example",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "bench.example",
        "HTTP_USER_AGENT": "bench/overhead",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if jar:
        environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in jar.items())
    return environ


def update_jar(jar: dict[str, str], headers: list[tuple[str, str]]) -> bool:
    """Apply the response's Set-Cookie headers to ``jar``; True when it changed."""
    changed = False
    for name, value in headers:
        if name.lower() != "set-cookie":
            continue
        pair, _, attributes = value.partition(";")
        key, _, cookie_value = pair.strip().partition("=")
        attrs = attributes.lower().replace(" ", "")
        if "max-age=0" in attrs or "expires=thu,01jan1970" in attrs or not cookie_value:
            changed = jar.pop(key, None) is not None or changed
        elif jar.get(key) != cookie_value:
            jar[key] = cookie_value
            changed = True
    return changed


def request(system: System, payload: str, path: str) -> bytes:
    """One untimed request, through the cookie jar."""
    jar = system.jars.setdefault(payload, {})
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen[:] = [status, headers]
        return lambda data: None

    result = system.app(base_environ(path, jar), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not seen or not seen[0].startswith("200"):
        raise AssertionError(f"{path}: status {seen[0] if seen else None}")
    update_jar(jar, seen[1])
    return body


def run_batch(system: System, payload: str, mode: str, count: int) -> float:
    """Time ``count`` requests of ``mode``; return µs per request. Raises on a wrong answer."""
    jar = system.jars[payload]
    base = base_environ("/" + mode, jar)
    if mode == "untouched":
        expected = [b"ok"] * count
    elif mode == "read":
        expected = [PAYLOADS[payload].encode()] * count
    else:
        done = system.writes.get(payload, 0)
        expected = [b"%d" % k for k in range(done + 1, done + count + 1)]
    app = system.app
    seen: list[Any] = [None, None]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen[0] = status
        seen[1] = headers
        return None

    gc.collect()
    start = time.perf_counter_ns()
    for want in expected:
        environ = base.copy()
        result = app(environ, start_response)
        body = b"".join(result)
        close = getattr(result, "close", None)
        if close is not None:
            close()
        if body != want or seen[0][:3] != "200":
            raise AssertionError(
                f"{mode}: got {seen[0]!r} {body[:40]!r}..., expected 200 {want[:40]!r}..."
            )
        for name, _value in seen[1]:
            if name == "Set-Cookie" and update_jar(jar, seen[1]):
                # A returning browser sends the new cookie from now on.
                base = base_environ("/" + mode, jar)
                break
    elapsed = time.perf_counter_ns() - start
    if mode == "write":
        system.writes[payload] = system.writes.get(payload, 0) + count
        stored = request(system, payload, "/count")
        if stored != b"%d" % system.writes[payload]:
            raise AssertionError(
                f"write: counter read back is {stored!r} after {system.writes[payload]} writes"
            )
    return elapsed / count / 1000


# ---------------------------------------------------------------------------- run


def floor_of(system: System, mode: str) -> str:
    if mode == "untouched":
        return "bare-wsgi" if system.kind == "wsgi" else "bare-flask"
    return "redis-floor" if system.kind == "wsgi" else "flask-redis-floor"


def measure(
    systems: list[System], repeats: int, requests: int, time_limit: float
) -> tuple[dict[tuple[str, str, str], list[float]], int]:
    samples: dict[tuple[str, str, str], list[float]] = {}
    warmup = max(50, requests // 10)
    for system in systems:
        for payload in PAYLOADS:
            try:
                if system.modes == ("untouched",):
                    # A bare app has no session: no setup, so the browser sends no
                    # cookie (a Flask cookie session would be decoded on every request).
                    system.jars[payload] = {}
                else:
                    request(system, payload, f"/setup/{payload}")
                system.writes[payload] = 0
                for mode in system.modes:  # warm caches, connections and imports
                    run_batch(system, payload, mode, warmup)
            except Exception as exc:
                for mode in system.modes:
                    system.failures[(mode, payload)] = f"setup/warm-up: {exc!r}"
    deadline = time.monotonic() + time_limit
    done = 0
    for repeat in range(repeats):
        if time.monotonic() > deadline:
            print(f"time limit of {time_limit:.0f} s reached after {done} repeats", file=sys.stderr)
            break
        # Rotate the order each repeat so no system always runs first or last.
        order = systems[repeat % len(systems) :] + systems[: repeat % len(systems)]
        for payload in PAYLOADS:
            for mode in MODES:
                for system in order:
                    if mode not in system.modes or (mode, payload) in system.failures:
                        continue
                    try:
                        us = run_batch(system, payload, mode, requests)
                    except Exception as exc:
                        system.failures[(mode, payload)] = repr(exc)
                        continue
                    samples.setdefault((system.name, mode, payload), []).append(us)
        done += 1
        print(f"repeat {done}/{repeats} done", file=sys.stderr)
    return samples, done


def targets(medians: dict[tuple[str, str, str], float]) -> list[dict[str, Any]]:
    """The issue's targets, small payload, from this run's medians."""

    def m(name: str, mode: str) -> float | None:
        return medians.get((name, mode, "small"))

    rows: list[dict[str, Any]] = []

    def add(text: str, value: float | None, limit: float, unit: str, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        rows.append({"target": text, "value": value, "limit": limit, "unit": unit, "met": met})

    bare = m("bare-wsgi", "untouched")
    for name in ("kvsession-memory", "kvsession-redis"):
        value = m(name, "untouched")
        add(
            f"{name} untouched ≤ bare WSGI + 5 µs",
            None if value is None or bare is None else value - bare,
            5.0,
            "µs over",
            True,
        )
    for mode in ("read", "write"):
        value, floor = m("kvsession-redis", mode), m("redis-floor", mode)
        add(
            f"kvsession-redis {mode} ≤ 1.15x raw redis-py floor",
            None if value is None or floor is None else value / floor,
            1.15,
            "x",
            True,
        )
    flask_bare, wsgi_bare = m("bare-flask", "untouched"), m("bare-wsgi", "untouched")
    for mode in ("read", "write"):
        value, floor = m("kvsession-flask-redis", mode), m("flask-redis-floor", mode)
        add(
            f"kvsession-flask-redis {mode} ≤ 1.10x (Flask + raw floor, measured)",
            None if value is None or floor is None else value / floor,
            1.10,
            "x",
            True,
        )
        raw = m("redis-floor", mode)
        summed = None if None in (raw, flask_bare, wsgi_bare) else raw + flask_bare - wsgi_bare  # type: ignore[operator]
        add(
            f"kvsession-flask-redis {mode} ≤ 1.10x (bare Flask + raw floor - bare WSGI)",
            None if value is None or summed is None else value / summed,
            1.10,
            "x",
            True,
        )
    for mode, factor in (("read", 2.0), ("write", 1.4)):
        value, other = m("kvsession-flask-redis", mode), m("flask-session-redis", mode)
        add(
            f"Flask-Session/Redis {mode} ÷ kvsession-flask-redis ≥ {factor}x",
            None if value is None or other is None else other / value,
            factor,
            "x",
            False,
        )
    for mode in ("read", "write"):
        value, other = m("kvsession-memory", mode), m("beaker-memory", mode)
        add(
            f"Beaker memory {mode} ÷ kvsession-memory ≥ 1.5x",
            None if value is None or other is None else other / value,
            1.5,
            "x",
            False,
        )
    return rows


def table(systems: list[System], medians: dict[tuple[str, str, str], float]) -> str:
    header = f"{'system':<44}"
    for payload in PAYLOADS:
        for mode in MODES:
            header += f" {mode + ' ' + PAYLOAD_LABEL[payload]:>22}"
    lines = [header, "-" * len(header)]
    for system in systems:
        line = f"{system.label:<44}"
        for payload in PAYLOADS:
            for mode in MODES:
                if mode not in system.modes:
                    cell = "-"
                elif (mode, payload) in system.failures:
                    cell = "FAIL"
                else:
                    value = medians.get((system.name, mode, payload))
                    floor = medians.get(
                        (
                            floor_of(system, mode),
                            mode if mode != "untouched" else "untouched",
                            payload,
                        )
                    )
                    if value is None:
                        cell = "n/a"
                    elif floor is None or floor_of(system, mode) == system.name:
                        cell = f"{value:.1f}"
                    else:
                        cell = f"{value:.1f} ({value / floor:.2f}x)"
                line += f" {cell:>22}"
        lines.append(line)
    return "\n".join(lines)


class Charted(Protocol):
    """What :func:`chart` needs of a system (overhead.py's and http_load.py's)."""

    name: str
    label: str
    failures: dict[tuple[str, str], str]


def chart(
    systems: Sequence[Charted],
    medians: dict[tuple[str, str, str], float],
    path: Path,
    title: str,
    *,
    xlabel: str = "µs / request (median)",
    light: Callable[[Any], bool] = lambda system: False,
) -> None:
    """A bar chart of ``medians``: a panel per (payload, mode), a bar per system,
    first system on top. ``light`` marks systems drawn in a light colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PAYLOADS), len(MODES), figsize=(16, 9), sharey=True)
    # Versions are in the JSON; on the chart they only crowd the labels.
    names = [re.sub(r" \d+(\.\d+)+\S*", "", s.label) for s in systems]
    for row, payload in enumerate(PAYLOADS):
        for col, mode in enumerate(MODES):
            ax = axes[row][col]
            values, colors, texts = [], [], []
            for system in systems:
                value = medians.get((system.name, mode, payload))
                failed = (mode, payload) in system.failures
                values.append(0.0 if value is None or failed else value)
                texts.append("FAIL" if failed else f"{value:.0f}" if value else "")
                colors.append(
                    "#c0392b"
                    if failed
                    else "#aed6f1"
                    if light(system)
                    else "#2e86c1"
                    if system.name.startswith("kvsession")
                    else "#7f8c8d"
                    if "floor" in system.name or "bare" in system.name
                    else "#e67e22"
                )
            bars = ax.barh(range(len(systems)), values, color=colors)
            for bar, text in zip(bars, texts, strict=True):
                ax.text(
                    bar.get_width(),
                    bar.get_y() + bar.get_height() / 2,
                    " " + text,
                    va="center",
                    fontsize=7,
                )
            ax.set_title(f"{mode}, {PAYLOAD_LABEL[payload]}", fontsize=10)
            ax.set_yticks(range(len(systems)), names, fontsize=7)
            # The axes share y: inverting each one would flip the shared axis back and forth.
            ax.set_ylim(len(systems) - 0.5, -0.5)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_xlim(0, max([*values, 1.0]) * 1.25)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="repeats (1-100, default 7)")
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="requests per system, mode and payload in each repeat (10-100000, default 2000)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=900.0,
        help="start no new repeat after this many seconds (default 900)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "results",
        help="where overhead.json and overhead.png go",
    )
    parser.add_argument(
        "--docs-image",
        type=Path,
        default=ROOT / "docs/_static/performance.png",
        help="copy of the chart for the docs ('' for none)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.repeats <= 100 or not 10 <= args.requests <= 100_000:
        parser.error("--repeats must be 1-100 and --requests 10-100000")

    # A SIGTERM unwinds like Ctrl-C, so the finally below still deletes this run's keys.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    cleanup = Cleanup()
    redis_client = None
    # memcached and PostgreSQL systems come from http_load.py, which also starts a private
    # memcached and creates a fresh PostgreSQL database (both undone by servers.close()).
    import http_load

    servers = http_load.Servers(tmp)
    try:
        os.environ.update(servers.start({"memcached", "postgresql"}))
        skipped = list(servers.notes)
        systems, more, redis_client = http_load.build_all(tmp, cleanup, secrets.token_hex(8))
        skipped += more
        for reason in skipped:
            print(f"skipped: {reason}")
        started = time.monotonic()
        samples, done = measure(systems, args.repeats, args.requests, args.time_limit)
        seconds = time.monotonic() - started
    finally:
        if redis_client is not None:
            for system in locals().get("systems", []):
                if system.name == "beaker-redis":
                    for jar in system.jars.values():
                        for value in jar.values():
                            cleanup.patterns.append(f"beaker_cache:{value}:*")
            for system in locals().get("systems", []):
                if system.cleanup is not None:
                    cleanup.actions.append(system.cleanup)
            deleted = cleanup.run(redis_client)
            print(f"deleted {deleted} Redis keys under this run's prefixes", file=sys.stderr)
        else:
            for system in locals().get("systems", []):
                if system.cleanup is not None:
                    with contextlib.suppress(Exception):
                        system.cleanup()
        servers.close()
        shutil.rmtree(tmp, ignore_errors=True)

    medians = {key: statistics.median(values) for key, values in samples.items()}
    print()
    print(
        f"median µs/request over {done} repeats x {args.requests} requests "
        f"(ratio to the floor: bare WSGI / bare Flask for untouched, "
        f"raw redis-py floor for read and write); {seconds:.0f} s"
    )
    print(table(systems, medians))
    failures = [
        (s.name, mode, payload, reason)
        for s in systems
        for (mode, payload), reason in s.failures.items()
    ]
    for name, mode, payload, reason in failures:
        print(f"FAIL {name} {mode} {payload}: {reason}")
    print()
    print("targets (small payload, this run):")
    target_rows = targets(medians)
    for row in target_rows:
        status = "n/a" if row["met"] is None else "met" if row["met"] else "NOT met"
        value = "n/a" if row["value"] is None else f"{row['value']:.2f} {row['unit']}"
        print(f"  {row['target']:<68} {value:>14}  {status}")

    args.output.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "bench/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "repeats": done,
        "requests": args.requests,
        "seconds": round(seconds, 1),
        "skipped": skipped,
        "systems": [
            {
                "name": s.name,
                "label": s.label,
                "kind": s.kind,
                "results": {
                    f"{mode}/{payload}": (
                        {"status": "FAIL", "reason": s.failures[(mode, payload)]}
                        if (mode, payload) in s.failures
                        else {
                            "status": "ok",
                            "median_us": medians.get((s.name, mode, payload)),
                            "samples_us": samples.get((s.name, mode, payload), []),
                            "floor": floor_of(s, mode),
                        }
                    )
                    for payload in PAYLOADS
                    for mode in s.modes
                },
            }
            for s in systems
        ],
        "targets": target_rows,
    }
    (args.output / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    png = args.output / "overhead.png"
    # The chart needs matplotlib (the bench extra); the table and the JSON do not.
    if importlib.util.find_spec("matplotlib") is None:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')")
    else:
        chart(
            systems,
            medians,
            png,
            f"In-process session overhead, median µs/request over {done} x {args.requests} "
            f"requests (Python {result['python']}); red = FAIL",
        )
        if str(args.docs_image) not in ("", "."):
            args.docs_image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, args.docs_image)
    print(f"\nwrote {args.output / 'overhead.json'} and {png}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
