"""memcached in the contract suite: one server, and a HashClient over two.

* ``memcached``: one memcached these tests start (``memcached_server``), used
  through a ``PooledClient``;
* ``memcached-hash``: two more (``memcached_pair``), used through a
  ``HashClient(use_pooling=True)``, so that keys spread over both nodes.

The servers bind 127.0.0.1 on free ports, run with ``-I 4m`` (the contract
writes 1 MiB values; memcached's default item limit of 1 MiB, which includes
the item's own overhead, would refuse them), ``-m 64`` and UDP off, and are
stopped by PID at the end of the test session. As root, memcached refuses to
start without ``-u root``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsgi_kvsession.stores import Store

from ..servers import ServerProcess, executable, free_port
from .registry import skip_or_fail, store_factory


def memcached_argv(port: int, *extra: str) -> list[str]:
    binary = executable("memcached", "apt-get install -y memcached")
    argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-m", "64", "-U", "0", *extra]
    if "-I" not in extra:
        argv += ["-I", "4m"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root otherwise
    return argv


def start_memcached(log_dir: Path, *extra: str, port: int | None = None) -> ServerProcess:
    """Start a private memcached on 127.0.0.1 (a free port unless given)."""
    port = free_port() if port is None else port
    server = ServerProcess(memcached_argv(port, *extra), port, log_dir / f"memcached-{port}.log")
    return server.start()


def memcache_store(url: str, **kwargs: object) -> Store:
    try:
        from wsgi_kvsession.stores import MemcacheStore
    except ImportError:
        skip_or_fail("pymemcache is not installed: pip install 'wsgi-kvsession[memcached]'")
    return MemcacheStore(url, **kwargs)  # type: ignore[arg-type]


def url_of(*servers: ServerProcess) -> str:
    return "memcached://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)


@pytest.fixture(scope="session")
def memcached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_memcached(tmp_path_factory.mktemp("memcached"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def memcached_pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    log_dir = tmp_path_factory.mktemp("memcached-pair")
    first = start_memcached(log_dir)
    try:
        second = start_memcached(log_dir)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@store_factory("memcached", cleanup="native")
def _memcached(request: pytest.FixtureRequest) -> Store:
    server: ServerProcess = request.getfixturevalue("memcached_server")
    return memcache_store(url_of(server))


@store_factory("memcached-hash", cleanup="native")
def _memcached_hash(request: pytest.FixtureRequest) -> Store:
    pair: tuple[ServerProcess, ServerProcess] = request.getfixturevalue("memcached_pair")
    return memcache_store(url_of(*pair))
