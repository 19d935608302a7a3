"""Building a store from a URL (for configuration files and the CLI)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .base import Store, mask_url
from .file import FileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore

_FORMS = (
    "memory://, file:///path/to/dir, sqlite:///relative.db, sqlite:////absolute.db, "
    "redis://host:6379/0, rediss://…, redis+cluster://host:port[,host:port…], "
    "redis+sentinel://host:port[,host:port…]/service[/db], memcached://host:11211[,host:port…], "
    "or a SQLAlchemy URL (postgresql://…, mysql+pymysql://…, mariadb://…, sqlite+pysqlite:///…)"
)
_REDIS_SCHEMES = frozenset(
    {"redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel"}
)
#: SQLAlchemy dialects (the part of the scheme before "+driver"). Plain
#: ``sqlite`` is not here: ``sqlite:///`` is the embedded SQLiteStore.
_SQL_DIALECTS = frozenset(
    {"postgresql", "postgres", "mysql", "mariadb", "sqlite", "mssql", "oracle"}
)


def store_from_url(url: str) -> Store:
    """Create the store a URL names.

    * ``memory://`` — a new, empty :class:`MemoryStore` on every call;
    * ``file:///var/lib/sessions`` — a :class:`FileStore` in that directory;
    * ``sqlite:///sessions.db`` (relative to the working directory) or
      ``sqlite:////var/lib/sessions.db`` (absolute), as in SQLAlchemy — the
      embedded :class:`SQLiteStore`.

    * ``redis://``, ``rediss://``, ``redis+cluster://``, ``redis+sentinel://`` —
      a :class:`~wsgi_kvsession.stores.RedisStore`;
    * ``memcached://host1:11211,host2:11211`` — a
      :class:`~wsgi_kvsession.stores.MemcacheStore`;
    * any other SQLAlchemy URL (``postgresql://…``, ``mysql+pymysql://…``,
      ``mariadb://…``, ``sqlite+pysqlite:///…``) — a
      :class:`~wsgi_kvsession.stores.SQLAlchemyStore`.

    Building a store never connects to its server. The server stores need their
    client library (``pip install 'wsgi-kvsession[redis]'``, ``[memcached]``,
    ``[sql]``); without it this raises :class:`ImportError` saying so.

    Raises :class:`ValueError` naming the accepted forms for anything else.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"store URL {mask_url(url)!r}: memory:// takes no host or path")
        return MemoryStore()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(
                f"store URL {mask_url(url)!r}: a file store URL is file:///absolute/path/to/dir"
            )
        return FileStore(unquote(parts.path))
    if scheme == "sqlite":
        # SQLAlchemy's form: sqlite:/// + path, so a fourth slash makes it absolute.
        if parts.netloc or len(parts.path) < 2 or parts.path == "/:memory:":
            raise ValueError(
                f"store URL {mask_url(url)!r}: give a database file, sqlite:///relative.db "
                "or sqlite:////absolute/path.db (for an in-process store use memory://)"
            )
        return SQLiteStore(unquote(parts.path[1:]))
    # Imported here, not at the top: each needs its optional client library.
    if scheme in _REDIS_SCHEMES:
        from .redis import RedisStore

        return RedisStore(url)
    if scheme == "memcached":
        from .memcache import MemcacheStore

        return MemcacheStore(url)
    if scheme.partition("+")[0] in _SQL_DIALECTS:
        from .sqlalchemy import SQLAlchemyStore

        return SQLAlchemyStore(url)
    raise ValueError(f"unsupported store URL {mask_url(url)!r}; supported forms: {_FORMS}")
