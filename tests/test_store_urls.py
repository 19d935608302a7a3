"""``store_from_url``: the store URLs of the configuration files and the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from wsgi_kvsession.stores import FileStore, MemoryStore, SQLiteStore, store_from_url
from wsgi_kvsession.stores.base import mask_url


def test_memory_url_gives_a_new_empty_store_each_call() -> None:
    one = store_from_url("memory://")
    two = store_from_url("memory://")
    assert isinstance(one, MemoryStore)
    assert isinstance(two, MemoryStore)
    assert one is not two
    assert one.insert("k", b"value", time.time() + 60) is True
    assert two.load("k") is None
    assert store_from_url("memory://").load("k") is None


def test_memory_url_scheme_is_case_insensitive() -> None:
    assert isinstance(store_from_url("MEMORY://"), MemoryStore)


def test_file_url_gives_a_file_store_at_that_path(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = store_from_url(f"file://{directory}")
    assert isinstance(store, FileStore)
    assert store.directory == directory
    assert store.insert("session:k", b"value", time.time() + 60) is True
    assert directory.is_dir()


def test_file_url_with_localhost_and_escapes(tmp_path: Path) -> None:
    store = store_from_url(f"file://localhost{tmp_path}/my%20sessions")
    assert isinstance(store, FileStore)
    assert store.directory == tmp_path / "my sessions"


def test_sqlite_url_with_three_slashes_is_relative_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = store_from_url("sqlite:///rel.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "rel.db"
    assert store.insert("session:k", b"value", time.time() + 60) is True
    store.close()
    assert (tmp_path / "rel.db").is_file()


def test_sqlite_url_relative_subdirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = store_from_url("sqlite:///var/db/sessions.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "var" / "db" / "sessions.db"


def test_sqlite_url_with_four_slashes_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "abs" / "x.db"
    target.parent.mkdir()
    store = store_from_url(f"sqlite:///{target}")  # target starts with "/": four slashes
    assert f"sqlite:///{target}".startswith("sqlite:////")
    assert isinstance(store, SQLiteStore)
    assert store.path == target
    assert store.insert("session:k", b"value", time.time() + 60) is True
    store.close()
    assert target.is_file()


@pytest.mark.parametrize(
    ("url", "form"),
    [
        ("sqlite://", "sqlite:///"),
        ("sqlite:///", "sqlite:///"),
        ("sqlite:///:memory:", "sqlite:///"),
        ("sqlite://host/x.db", "sqlite:///"),
        ("file://relative", "file:///"),
        ("file://relative/path", "file:///"),
        ("file:relative", "file:///"),
        ("memory://host", "memory://"),
        ("memory:///path", "memory://"),
        ("ftp://x", "memory://"),
        ("x", "memory://"),
        ("", "memory://"),
    ],
)
def test_a_bad_url_names_the_accepted_forms(url: str, form: str) -> None:
    with pytest.raises(ValueError) as info:
        store_from_url(url)
    assert form in str(info.value)


def test_an_unsupported_scheme_lists_every_accepted_form() -> None:
    with pytest.raises(ValueError) as info:
        store_from_url("ftp://x")
    message = str(info.value)
    for form in ("memory://", "file:///", "sqlite:///", "sqlite:////"):
        assert form in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@host",
        "redis://user:secret@host:6379/0",
        "rediss://:secret@host/1",
        "ftp://someone:secret@example.org/",
        "sqlite://user:secret@host/x.db",
        "file://user:secret@host/dir",
        "memory://user:secret@host",
        "redis+cluster://:secret@h1:7000,h2:7001",
        "redis+sentinel://user:secret@h1:26379/mymaster/0",
        "redis+cluster://:secret@h1:notaport",
        "memcached://user:secret@h1:11211",
        "postgresql://app:secret@db.example/app",
        "mysql+pymysql://app:secret@db.example/app",
        "mariadb://app:secret@db.example:bad/app",
        "redis://host:6379/0?password=secret",
        "redis://user@host/0?db=1&password=secret&ssl_cert_reqs=none",
        "rediss://host/0?username=u;PASSWORD=secret",
        "postgresql://app@db.example/app?password=secret&sslmode=require",
        "postgresql://app@db.example/app?sslpassword=secret",
        "mysql+pymysql://app@db.example/app?passwd=secret",
        "redis+sentinel://h1:26379/mymaster/0?password=secret",
        "memcached://h1:11211?auth_token=secret",
    ],
)
def test_an_error_never_shows_the_password(url: str) -> None:
    # Whether the URL is refused (a ValueError) or accepted, the password must
    # not show: in the error message, or in the store's repr (which every
    # StoreError message uses).
    try:
        store = store_from_url(url)
    except Exception as exc:  # whatever a backend raises, it must mask
        text = str(exc)
    else:
        text = repr(store)
        store.close()
    assert "secret" not in text


@pytest.mark.parametrize(
    ("url", "store_class"),
    [
        ("redis://localhost:6379/0", "RedisStore"),
        ("REDIS://localhost", "RedisStore"),
        ("rediss://localhost:6380/1", "RedisStore"),
        ("redis+cluster://h1:7000,h2:7001", "RedisStore"),
        ("redis+sentinel://h1:26379/mymaster/0", "RedisStore"),
        ("memcached://h1:11211,h2:11211", "MemcacheStore"),
        ("memcached://h1", "MemcacheStore"),
        ("postgresql://app@db.example/app", "SQLAlchemyStore"),
        ("postgresql+psycopg://app@db.example/app", "SQLAlchemyStore"),
        ("mysql+pymysql://app@db.example/app", "SQLAlchemyStore"),
        ("mariadb://app@db.example/app", "SQLAlchemyStore"),
        ("sqlite+pysqlite:///sessions.db", "SQLAlchemyStore"),
    ],
)
def test_server_store_urls_build_their_store_without_connecting(url: str, store_class: str) -> None:
    # Every host here is unreachable: building a store must not connect.
    store = store_from_url(url)
    assert type(store).__name__ == store_class
    store.close()


def test_plain_sqlite_stays_the_embedded_store(tmp_path: Path) -> None:
    assert isinstance(store_from_url(f"sqlite:///{tmp_path}/x.db"), SQLiteStore)
    assert type(store_from_url(f"sqlite+pysqlite:///{tmp_path}/x.db")).__name__ == (
        "SQLAlchemyStore"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:p@h:1/0?password=x&db=2", "redis://u:***@h:1/0?password=***&db=2"),
        ("redis://:a/b?c#d@h/0", "redis://:***@h/0"),
        ("postgresql://h/app?sslmode=require", "postgresql://h/app?sslmode=require"),
        ("redis://user@h/0", "redis://user@h/0"),
        ("x?token=abc", "x?token=***"),
    ],
)
def test_mask_url_keeps_everything_but_the_secrets(url: str, shown: str) -> None:
    assert mask_url(url) == shown
