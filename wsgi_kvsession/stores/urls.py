"""Building a store from a URL (for configuration files and the CLI)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .base import Store
from .file import FileStore
from .memory import MemoryStore
from .sqlite import SQLiteStore

_FORMS = "memory://, file:///path/to/dir, sqlite:///relative.db, sqlite:////absolute.db"


def _mask(url: str) -> str:
    """The URL with any password replaced, fit for an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def store_from_url(url: str) -> Store:
    """Create the store a URL names.

    * ``memory://`` — a new, empty :class:`MemoryStore` on every call;
    * ``file:///var/lib/sessions`` — a :class:`FileStore` in that directory;
    * ``sqlite:///sessions.db`` (relative to the working directory) or
      ``sqlite:////var/lib/sessions.db`` (absolute), as in SQLAlchemy — the
      embedded :class:`SQLiteStore`.

    Raises :class:`ValueError` naming the accepted forms for anything else.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"store URL {_mask(url)!r}: memory:// takes no host or path")
        return MemoryStore()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(
                f"store URL {_mask(url)!r}: a file store URL is file:///absolute/path/to/dir"
            )
        return FileStore(unquote(parts.path))
    if scheme == "sqlite":
        # SQLAlchemy's form: sqlite:/// + path, so a fourth slash makes it absolute.
        if parts.netloc or len(parts.path) < 2 or parts.path == "/:memory:":
            raise ValueError(
                f"store URL {_mask(url)!r}: give a database file, sqlite:///relative.db "
                "or sqlite:////absolute/path.db (for an in-process store use memory://)"
            )
        return SQLiteStore(unquote(parts.path[1:]))
    raise ValueError(f"unsupported store URL {_mask(url)!r}; supported forms: {_FORMS}")
