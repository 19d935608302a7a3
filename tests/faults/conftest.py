"""Fixtures of the fault tests: servers they start, proxies, gunicorn.

Every server here binds 127.0.0.1 on a free port and is stopped by PID at
teardown (:class:`tests.servers.ServerProcess`); every proxy is closed. A
missing binary or library skips the test with the reason, and fails it under
``CI=true`` (:func:`tests.stores.registry.skip_or_fail`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from ..http.harness import GunicornServer, HarnessError
from ..servers import ServerProcess, free_port
from ..stores.backend_memcached import start_memcached
from ..stores.backend_redis import redis_server_argv
from ..stores.registry import skip_or_fail
from .proxy import FaultProxy

#: gunicorn's shape in these tests: several worker processes of a few threads.
WORKERS = 3
THREADS = 2
#: The app the fault tests serve (see tests/faults/app.py).
TARGET = "tests.faults.app:make_app()"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[[], ServerProcess]]:
    """Start a redis-server of the test's own (no persistence: a restart loses
    every key); each is stopped by PID at teardown."""
    if importlib.util.find_spec("redis") is None:
        skip_or_fail("redis-py is not installed: pip install 'wsgi-kvsession[redis]'")
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        port = free_port()
        directory = tmp_path / f"redis-{port}"
        directory.mkdir()
        server = ServerProcess(redis_server_argv(port, directory), port, directory / "redis.log")
        started.append(server)
        try:
            return server.start()
        except (OSError, RuntimeError) as exc:
            skip_or_fail(f"could not start redis-server: {exc}")

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def memcached_nodes(tmp_path: Path) -> Iterator[Callable[[int], list[ServerProcess]]]:
    """Start ``n`` memcached nodes of the test's own; killed by PID at teardown
    (memcached keeps nothing to save, and takes most of a second to exit on SIGTERM)."""
    if importlib.util.find_spec("pymemcache") is None:
        skip_or_fail("pymemcache is not installed: pip install 'wsgi-kvsession[memcached]'")
    started: list[ServerProcess] = []

    def start(n: int) -> list[ServerProcess]:
        nodes = []
        for _ in range(n):
            try:
                node = start_memcached(tmp_path)
            except (OSError, RuntimeError) as exc:
                skip_or_fail(f"could not start memcached: {exc}")
            started.append(node)
            nodes.append(node)
        return nodes

    try:
        yield start
    finally:
        for node in started:
            node.kill()


@pytest.fixture
def proxy() -> Iterator[Callable[[tuple[str, int]], FaultProxy]]:
    """Make a :class:`FaultProxy` to an upstream; each is closed at teardown."""
    made: list[FaultProxy] = []

    def make(upstream: tuple[str, int]) -> FaultProxy:
        made.append(FaultProxy(upstream))
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Mapping[str, str]], GunicornServer]]:
    """Start gunicorn (``WORKERS`` x ``THREADS``) on tests/faults/app.py with
    ``env``; stopped by PID at teardown."""
    if importlib.util.find_spec("gunicorn") is None:
        skip_or_fail("gunicorn is not installed: pip install 'wsgi-kvsession[test]'")
    servers: list[GunicornServer] = []

    def start(env: Mapping[str, str]) -> GunicornServer:
        work_dir = tmp_path / f"gunicorn-{len(servers)}"
        work_dir.mkdir()
        server = GunicornServer(TARGET, env, work_dir, workers=WORKERS, threads=THREADS)
        servers.append(server)
        try:
            return server.start()
        except HarnessError as exc:
            pytest.fail(str(exc), pytrace=False)

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
