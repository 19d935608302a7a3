"""The ``wsgi-kvsession`` command, through click's CliRunner (and once for real)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from werkzeug.test import Client
from werkzeug.wrappers import Response

from wsgi_kvsession import KVSessionMiddleware, get_session
from wsgi_kvsession.admin import SessionManager
from wsgi_kvsession.cli import main
from wsgi_kvsession.stores import Store, store_from_url

from .servers import ServerProcess, free_port
from .stores.backend_redis import REDIS_URL, redis_store
from .support import Clock

IDLE = 600


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


class Target:
    """A store URL with a key prefix, and a way to put sessions in it."""

    def __init__(self, url: str, prefix: str = "session:") -> None:
        self.url = url
        self.prefix = prefix
        self.store: Store = store_from_url(url)

    def args(self) -> list[str]:
        return ["--store", self.url, "--key-prefix", self.prefix]

    def manager(self) -> SessionManager:
        return SessionManager(self.store, key_prefix=self.prefix, idle_timeout=IDLE)

    def make_session(self, user: str | None = None, permanent: bool = False, **data: object) -> str:
        """Store one session through the middleware, as a request would; its ID."""

        def app(environ: dict[str, object], start_response: object) -> Response:
            session = get_session(environ)
            session.update(data or {"n": 1})
            session.permanent = permanent
            if user is not None:
                session.user_id = user
            return Response("ok")

        def wsgi(environ, start_response):  # type: ignore[no-untyped-def]
            return app(environ, start_response)(environ, start_response)

        wrapped = KVSessionMiddleware(
            wsgi, self.store, key_prefix=self.prefix, idle_timeout=IDLE, cookie_secure=False
        )
        client = Client(wrapped)
        client.get("/")
        cookie = client.get_cookie("session")
        assert cookie is not None
        return cookie.value


@pytest.fixture(params=["sqlite", "file", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "sqlite":
        made = Target(f"sqlite:///{tmp_path}/sessions.db")
    elif request.param == "file":
        made = Target(f"file://{tmp_path}/sessions")
    else:
        redis_store(REDIS_URL).close()  # skips (fails under CI) without a Redis
        made = Target(REDIS_URL, prefix=f"clitest-{uuid.uuid4().hex}:")
    yield made
    if request.param == "redis":
        for info in list(made.manager().iter_sessions()):
            made.manager().revoke_by_hash(info.key_hash)
    made.store.close()


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Result:
    result = runner.invoke(main, list(args), input=input, catch_exceptions=True)
    # Never a traceback: every failure is a click message and an exit status.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception,
        result.output,
    )
    assert "Traceback" not in result.output
    return result


# -- list, show, stats ---------------------------------------------------------


def test_list_shows_each_live_session(runner: CliRunner, target: Target) -> None:
    first = target.make_session("alice")
    second = target.make_session()
    manager = target.manager()
    result = invoke(runner, "list", *target.args())
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    by_hash = {line.split()[0]: line for line in lines}
    assert set(by_hash) == {manager.key_hash(first), manager.key_hash(second)}
    assert " alice " in by_hash[manager.key_hash(first)]
    assert " - " in by_hash[manager.key_hash(second)]
    assert first not in result.output
    assert second not in result.output
    assert by_hash[manager.key_hash(first)].endswith(" B")


def test_list_user_filters(runner: CliRunner, target: Target) -> None:
    mine = [target.make_session("alice"), target.make_session("alice")]
    target.make_session("bob")
    result = invoke(runner, "list", "--user", "alice", *target.args())
    assert result.exit_code == 0, result.output
    hashes = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert hashes == {target.manager().key_hash(sid) for sid in mine}


def test_show_by_hash_and_by_id_renders_tagged_types(runner: CliRunner, target: Target) -> None:
    import datetime

    sid = target.make_session(
        "alice",
        permanent=True,
        when=datetime.date(2024, 5, 1),
        tags={"b", "a"},
        pair=(1, 2),
        cart=["apple"],
    )
    key_hash = target.manager().key_hash(sid)
    for name in (key_hash, sid):
        # "--": an ID may start with "-" (1 in 64), which click would take for an option.
        result = invoke(runner, "show", *target.args(), "--", name)
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert shown["key_hash"] == key_hash
        assert shown["user_id"] == "alice"
        assert shown["permanent"] is True
        assert shown["data"] == {
            "when": "2024-05-01",
            "tags": ["a", "b"],
            "pair": [1, 2],
            "cart": ["apple"],
        }


def test_show_unknown_and_malformed(runner: CliRunner, target: Target) -> None:
    result = invoke(runner, "show", "0" * 64, *target.args())
    assert result.exit_code == 1
    assert "no live session" in result.output
    result = invoke(runner, "show", "not an id!", *target.args())
    assert result.exit_code == 2
    assert "key hash" in result.output


def test_stats(runner: CliRunner, target: Target) -> None:
    for _ in range(3):
        target.make_session("alice")
    target.make_session("bob", permanent=True)
    target.make_session()
    result = invoke(runner, "stats", "--top", "1", *target.args())
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "sessions:       5" in out
    assert "permanent:      1" in out
    assert "anonymous:      1" in out
    assert "users:          2" in out
    assert "  alice: 3" in out
    assert "bob:" not in out  # --top 1
    total = int(out.split("total bytes:")[1].split()[0])
    assert total > 5 * 20


# -- revoke --------------------------------------------------------------------


def test_revoke_one_asks_first(runner: CliRunner, target: Target) -> None:
    sid = target.make_session("alice")
    key_hash = target.manager().key_hash(sid)
    result = invoke(runner, "revoke", key_hash, *target.args(), input="n\n")
    assert result.exit_code == 1  # aborted
    assert target.manager().get(sid) is not None
    result = invoke(runner, "revoke", key_hash, *target.args(), input="y\n")
    assert result.exit_code == 0, result.output
    assert target.manager().get(sid) is None
    result = invoke(runner, "revoke", key_hash, "--yes", *target.args())
    assert result.exit_code == 1
    assert "no live session" in result.output


def test_revoke_by_id_with_yes(runner: CliRunner, target: Target) -> None:
    sid = target.make_session()
    result = invoke(runner, "revoke", "--yes", *target.args(), "--", sid)
    assert result.exit_code == 0, result.output
    assert target.manager().get(sid) is None


def test_an_id_that_starts_with_a_dash_is_given_after_double_dash(
    runner: CliRunner, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ID in 64 starts with "-"; after "--" click takes it as the argument."""
    real = secrets.token_urlsafe
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n=None: "-" + real(n)[1:])
    sid = target.make_session()
    assert sid.startswith("-")
    assert invoke(runner, "show", *target.args(), "--", sid).exit_code == 0
    result = invoke(runner, "revoke", "--yes", *target.args(), "--", sid)
    assert result.exit_code == 0, result.output
    assert target.manager().get(sid) is None


def test_revoke_user(runner: CliRunner, target: Target) -> None:
    alice = [target.make_session("alice") for _ in range(2)]
    bob = target.make_session("bob")
    result = invoke(runner, "revoke", "--user", "alice", "-y", *target.args())
    assert result.exit_code == 0, result.output
    assert "Revoked 2 session(s)" in result.output
    assert all(target.manager().get(sid) is None for sid in alice)
    assert target.manager().get(bob) is not None


def test_revoke_needs_exactly_one_target(runner: CliRunner, target: Target) -> None:
    assert invoke(runner, "revoke", *target.args()).exit_code == 2
    assert invoke(runner, "revoke", "0" * 64, "--user", "a", *target.args()).exit_code == 2


# -- cleanup -------------------------------------------------------------------


def test_cleanup_counts_the_expired(runner: CliRunner, tmp_path: Path, clock: Clock) -> None:
    target = Target(f"sqlite:///{tmp_path}/s.db")
    old = [target.make_session() for _ in range(3)]
    clock.advance(IDLE + 5)
    fresh = target.make_session("alice")
    result = invoke(runner, "cleanup", *target.args())
    assert result.exit_code == 0, result.output
    assert "Removed 3 expired record(s)." in result.output
    assert "1 record(s) remain" in result.output
    assert all(target.manager().get(sid) is None for sid in old)
    assert target.manager().get(fresh) is not None
    again = invoke(runner, "cleanup", *target.args())
    assert "Removed 0 expired record(s)." in again.output


def test_cleanup_on_redis_counts_nothing(runner: CliRunner, target: Target) -> None:
    result = invoke(runner, "cleanup", *target.args())
    assert result.exit_code == 0, result.output
    assert "Removed 0 expired record(s)." in result.output


def test_memory_store_url_is_empty_each_time(runner: CliRunner) -> None:
    result = invoke(runner, "stats", "--store", "memory://")
    assert result.exit_code == 0
    assert "sessions:       0" in result.output
    assert invoke(runner, "list", "--store", "memory://").stdout == ""
    assert "Removed 0" in invoke(runner, "cleanup", "--store", "memory://").output


def test_store_from_the_environment(runner: CliRunner, tmp_path: Path) -> None:
    target = Target(f"sqlite:///{tmp_path}/env.db")
    target.make_session("alice")
    result = runner.invoke(main, ["list"], env={"WSGI_KVSESSION_STORE": target.url})
    assert result.exit_code == 0, result.output
    assert "alice" in result.output


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["list", "stats", "cleanup", "show", "revoke"])
def test_bad_url_is_a_clear_masked_error(runner: CliRunner, command: str) -> None:
    extra = {"show": ["0" * 64], "revoke": ["0" * 64, "--yes"]}.get(command, [])
    result = invoke(runner, command, *extra, "--store", "bogus://user:hunter2@host/")
    assert result.exit_code == 1
    assert "unsupported store URL" in result.output
    assert "hunter2" not in result.output


@pytest.mark.parametrize("command", ["list", "stats", "cleanup", "show", "revoke", "demo"])
def test_unreachable_store_is_a_clear_error(runner: CliRunner, command: str) -> None:
    extra = {"show": ["0" * 64], "revoke": ["0" * 64, "--yes"]}.get(command, [])
    url = "redis://:hunter2@127.0.0.1:1/0"
    result = invoke(runner, command, *extra, "--store", url)
    assert result.exit_code == 1, result.output
    assert "store error: RedisStore(" in result.output
    assert "hunter2" not in result.output


def test_memcached_listing_is_a_clear_message(runner: CliRunner) -> None:
    pytest.importorskip("pymemcache")
    result = invoke(runner, "list", "--store", "memcached://127.0.0.1:1")
    assert result.exit_code == 1
    assert "cannot list its sessions" in result.output


# -- the demo, for real ------------------------------------------------------------


def test_demo_serves_over_http_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    script = Path(sys.executable).parent / "wsgi-kvsession"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "wsgi_kvsession.cli"]
    server = ServerProcess(
        [*argv, "demo", "--port", str(port), "--store", f"sqlite:///{tmp_path}/demo.db"],
        port,
        tmp_path / "demo.log",
        cwd=tmp_path,
    )
    with server:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
            assert "wsgi_kvsession demo" in response.read().decode()
            assert "session=" in response.headers["Set-Cookie"]
        process = server.process
        assert process is not None
        os.kill(process.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.returncode == 0, server.log_tail()
    log = server.log_tail()
    assert f"http://127.0.0.1:{port}/" in log
    assert "Stopped." in log
    assert "Traceback" not in log
    assert (tmp_path / "demo.db").exists()
