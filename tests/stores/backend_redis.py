"""Redis in the contract suite: the shared server, a Cluster and a Sentinel.

* ``redis``: the machine's Redis at ``KVSESSION_TEST_REDIS_URL`` (default
  ``redis://127.0.0.1:6379/0``). It is shared: tests write only keys under
  their own random prefix and never flush.
* ``redis-cluster``: a 3-node Redis Cluster these tests start (``redis_cluster``).
* ``redis-sentinel``: a primary and one Sentinel watching it, started here too.

The servers started here bind 127.0.0.1 on free ports, keep nothing on disk but
their cluster/sentinel config in a temporary directory, and are stopped by PID
at the end of the test session.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wsgi_kvsession.stores import Store, StoreError

from ..servers import ServerProcess, executable, free_port
from .registry import in_ci, skip_or_fail, store_factory

REDIS_URL = os.environ.get("KVSESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Bound on waiting for a cluster to agree on its slots, or a Sentinel on its primary.
SETTLE_TIMEOUT = 30.0


def redis_store(url: str, **kwargs: object) -> Store:
    """A RedisStore on ``url`` that has answered once, or skip (fail under CI)."""
    try:
        from wsgi_kvsession.stores import RedisStore
    except ImportError:
        skip_or_fail("redis-py is not installed: pip install 'wsgi-kvsession[redis]'")
    store = RedisStore(url, **kwargs)  # type: ignore[arg-type]
    try:
        store.load("test:ping")  # constructing never connects; the first use does
    except StoreError as exc:
        skip_or_fail(f"no Redis at {url}: {exc}")
    return store


def redis_server_argv(port: int, directory: Path, *extra: str) -> list[str]:
    binary = executable("redis-server", "apt-get install -y redis-server")
    return [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        *extra,
    ]  # fmt: skip


def redis_cli(*args: str) -> str:
    binary = executable("redis-cli", "apt-get install -y redis-tools")
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=SETTLE_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def wait_for(condition: str, check: object, timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, RuntimeError, subprocess.SubprocessError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {timeout}s waiting for {condition}")
        time.sleep(0.1)


@dataclass
class RedisServers:
    """Servers started for a test session; stopped together."""

    processes: list[ServerProcess] = field(default_factory=list)

    def start(self, process: ServerProcess) -> ServerProcess:
        self.processes.append(process)
        return process.start()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@dataclass(frozen=True)
class Cluster:
    url: str
    ports: list[int]


@dataclass(frozen=True)
class SentinelSetup:
    url: str
    primary: ServerProcess
    sentinel: ServerProcess


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-node Redis Cluster (no replicas) on free loopback ports."""
    directory = tmp_path_factory.mktemp("redis-cluster")
    servers = RedisServers()
    try:
        ports = []
        for _ in range(3):
            port, bus = free_port(), free_port()
            node_dir = directory / str(port)
            node_dir.mkdir()
            argv = redis_server_argv(
                port,
                node_dir,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(bus),
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            servers.start(ServerProcess(argv, port, node_dir / "redis.log"))
            ports.append(port)
        redis_cli(
            "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas", "0", "--cluster-yes",
        )  # fmt: skip
        for port in ports:
            wait_for(
                f"the cluster node on port {port} to be ready",
                lambda port=port: "cluster_state:ok"
                in redis_cli("-p", str(port), "cluster", "info"),
            )
        yield Cluster(f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", ports)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        if in_ci():
            raise
        pytest.skip(f"could not start a Redis Cluster: {exc}")
    finally:
        servers.stop()


def start_sentinel(directory: Path, servers: RedisServers) -> SentinelSetup:
    """Start a primary and a Sentinel watching it as ``kvsession-primary``."""
    primary_port, sentinel_port = free_port(), free_port()
    primary = servers.start(
        ServerProcess(
            redis_server_argv(primary_port, directory), primary_port, directory / "primary.log"
        )
    )
    config = directory / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\n"
        "bind 127.0.0.1\n"
        f"dir {directory}\n"
        f"sentinel monitor kvsession-primary 127.0.0.1 {primary_port} 1\n"
        "sentinel down-after-milliseconds kvsession-primary 2000\n"
        "sentinel failover-timeout kvsession-primary 10000\n"
    )
    binary = executable("redis-server", "apt-get install -y redis-server")
    sentinel = servers.start(
        ServerProcess(
            [binary, str(config), "--sentinel"], sentinel_port, directory / "sentinel.log"
        )
    )
    wait_for(
        "the Sentinel to know its primary",
        lambda: str(primary_port)
        in redis_cli(
            "-p", str(sentinel_port),
            "sentinel", "get-master-addr-by-name", "kvsession-primary",
        ),
    )  # fmt: skip
    return SentinelSetup(
        f"redis+sentinel://127.0.0.1:{sentinel_port}/kvsession-primary/0", primary, sentinel
    )


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A Redis primary and one Sentinel monitoring it as ``kvsession-primary``."""
    servers = RedisServers()
    try:
        yield start_sentinel(tmp_path_factory.mktemp("redis-sentinel"), servers)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        if in_ci():
            raise
        pytest.skip(f"could not start a Redis Sentinel: {exc}")
    finally:
        servers.stop()


@store_factory("redis", cleanup="native")
def _redis(request: pytest.FixtureRequest) -> Store:
    return redis_store(REDIS_URL)


@store_factory("redis-cluster", cleanup="native")
def _redis_cluster(request: pytest.FixtureRequest) -> Store:
    cluster: Cluster = request.getfixturevalue("redis_cluster")
    return redis_store(cluster.url)


@store_factory("redis-sentinel", cleanup="native")
def _redis_sentinel(request: pytest.FixtureRequest) -> Store:
    setup: SentinelSetup = request.getfixturevalue("redis_sentinel")
    return redis_store(setup.url)
