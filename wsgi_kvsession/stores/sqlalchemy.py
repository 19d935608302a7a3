"""A store in one table of any SQL database SQLAlchemy (Core 2.x) can reach.

PostgreSQL (psycopg 3), MariaDB/MySQL (PyMySQL) and SQLite are tested; any
other dialect with a unique primary key works through the portable insert path.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql as sa_mysql
    from sqlalchemy.dialects import postgresql as sa_postgresql
    from sqlalchemy.dialects import sqlite as sa_sqlite
    from sqlalchemy.engine import URL, Connection, Engine, make_url
    from sqlalchemy.exc import (
        ArgumentError,
        DBAPIError,
        IntegrityError,
        NoSuchModuleError,
        SQLAlchemyError,
        StatementError,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "SQLAlchemyStore needs SQLAlchemy 2: pip install 'wsgi-kvsession[sql]'"
    ) from exc

from .base import Record, Store, StoreError, Version, mask_url

_T = TypeVar("_T")

#: Table and schema names: plain identifiers, short enough that the index name
#: ``ix_<table>_expires_at`` stays within PostgreSQL's 63-character limit
#: (MySQL allows 64), so the name in the database is the name in the MetaData.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,48}")

#: Drivers used when a URL names none: the ones the ``sql`` extra installs.
#: (SQLAlchemy's own default for ``postgresql://`` is psycopg2, not installed.)
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",  # the Heroku-style DATABASE_URL spelling
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}

#: Rows fetched per statement by iter_records(). Values can be large, so a page
#: is small; each page is its own statement, so no transaction stays open
#: while the caller works through the records.
_PAGE = 100

#: Attempts of a statement the database rolled back as a deadlock victim. Every
#: operation is a single autocommit statement, so running it again is safe.
_ATTEMPTS = 3


def define_table(
    metadata: sa.MetaData, name: str = "kvsession", *, schema: str | None = None
) -> sa.Table:
    """Define the store's table in ``metadata`` and return it.

    Call it on your application's ``MetaData`` (for example Flask-SQLAlchemy's
    ``db.metadata``) so that Alembic's autogenerate (``flask db migrate``)
    creates the table; then build the store with ``auto_create=False``.

    Columns:

    ``id``
        the SHA-256 (hex) of the store key: a fixed-size primary key, whatever
        the ``key_prefix`` holds or however long the key is;
    ``store_key``
        the key itself, for :meth:`SQLAlchemyStore.iter_records`;
    ``data``
        the value (``LONGBLOB`` on MySQL/MariaDB, whose ``BLOB`` stops at 64 KiB);
    ``expires_at``
        Unix time as a double, indexed for cleanup. A float keeps sub-second
        precision on every dialect (MySQL's ``DATETIME`` drops fractions unless
        declared ``DATETIME(6)``, SQLite has no date type) and compares directly
        with the application's ``time.time()``, with no time zone in play.
        A double, not ``Float``: MySQL's ``FLOAT`` is single precision, which
        rounds today's epoch to about two minutes;
    ``version``
        a random 62-bit integer, new on every write (the compare-and-set token);
    ``created_at``, ``updated_at``
        UTC timestamps of the insert and the last write, for operators only.
    """
    for option, value in (("table", name), ("schema", schema)):
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(
                f"SQLAlchemyStore({option}={value!r}): use at most 49 letters, digits "
                "and underscores, not starting with a digit"
            )
    key_hash = sa.String(64).with_variant(
        sa_mysql.CHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )
    data = sa.LargeBinary().with_variant(sa_mysql.LONGBLOB(), "mysql", "mariadb")
    return sa.Table(
        name,
        metadata,
        sa.Column("id", key_hash, primary_key=True),
        sa.Column("store_key", sa.Text(), nullable=False),
        sa.Column("data", data, nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
        schema=schema,
        # InnoDB for row locks and a transactional unique key; utf8mb4 so that
        # any key_prefix fits in store_key. (The mariadb dialect reads its own
        # prefix, the mysql dialect, also used for MariaDB servers, the other.)
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mariadb_engine="InnoDB",
        mariadb_charset="utf8mb4",
    )


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _new_version() -> int:
    # Random rather than a counter: a key deleted and created again never
    # repeats a version that an old reader may still hold.
    return secrets.randbits(62)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _describe(exc: BaseException) -> str:
    """The error without the statement's parameters (they hold session data)."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        orig = exc.orig
        return f"{type(orig).__name__}: {str(orig).strip()}"
    return f"{type(exc).__name__}: {exc}"


def _is_deadlock(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):  # PostgreSQL
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in (1213,)  # MySQL/MariaDB ER_LOCK_DEADLOCK


def _connect_args(url: URL, timeout: float) -> dict[str, Any]:
    """Timeouts for the driver; whatever the URL's query sets wins."""
    driver = url.get_driver_name()
    args: dict[str, Any] = {}
    if driver in ("psycopg", "psycopg2"):
        # libpq takes whole seconds, at least 2.
        args["connect_timeout"] = max(2, math.ceil(timeout))
        # Bounds each statement on the server, lock waits included. psycopg has
        # no client-side read timeout: a peer that vanishes mid-query is
        # noticed through TCP keepalives (or tcp_user_timeout in the URL).
        args["options"] = f"-c statement_timeout={max(1, round(timeout * 1000))}"
    elif driver == "pymysql":
        args.update(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    elif driver == "mysqldb":
        whole = max(1, math.ceil(timeout))
        args.update(connect_timeout=whole, read_timeout=whole, write_timeout=whole)
    elif driver == "pysqlite":
        args["timeout"] = timeout  # how long to wait for another writer's lock
    return {name: value for name, value in args.items() if name not in url.query}


def _skip_rollback_in_autocommit(dialect: sa.Dialect) -> None:
    """Make the dialect of an engine the store created skip needless ROLLBACKs.

    SQLAlchemy ends every connection use with the DBAPI ``rollback()``, even in
    autocommit mode, trusting the driver to make that free; psycopg does, but
    PyMySQL sends a ``ROLLBACK`` each time: a round trip per operation for
    nothing. PyMySQL knows its autocommit state from the server's last reply,
    so the rollback is skipped only when no transaction can be open.
    """
    original = dialect.do_rollback

    def do_rollback(dbapi_connection: Any) -> None:
        get_autocommit = getattr(dbapi_connection, "get_autocommit", None)
        if get_autocommit is not None and get_autocommit():
            return
        original(dbapi_connection)

    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


class SQLAlchemyStore(Store):
    """Keeps records in one table, through SQLAlchemy Core.

    ``url_or_engine`` is a SQLAlchemy URL (``postgresql://user:pw@host/db``,
    ``mysql://…``, ``mariadb://…``, ``sqlite+pysqlite:////abs/path.db``; a URL
    naming no driver gets psycopg 3 or PyMySQL) or an existing ``Engine``.

    The store creates its own engine from a URL: every statement runs in
    autocommit mode (each operation is one statement, so no transaction ever
    spans two round trips, and no isolation-level snapshot can make a
    read-then-write wrong), a connection the server has closed (a database
    restart, a killed connection) is detected when it fails, the pool is
    emptied and the operation retried once on a new connection (cheaper than
    pinging before every use), and ``timeout`` bounds connecting and each
    statement.
    ``engine_options`` are passed on to ``create_engine`` over those defaults.

    An ``Engine`` you pass stays yours: the store runs its statements through
    ``engine.execution_options(isolation_level="AUTOCOMMIT")`` (which leaves
    your engine's own settings alone), ``timeout`` and ``engine_options`` do not
    apply, and :meth:`close` does not dispose it.

    The table (see :func:`define_table`) is created on first use when missing;
    pass ``auto_create=False`` when migrations manage it, and call
    :meth:`create_table` yourself if you like.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        table: str = "kvsession",
        schema: str | None = None,
        timeout: float = 5.0,
        auto_create: bool = True,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(
                f"SQLAlchemyStore(timeout={timeout!r}): give a positive number of seconds"
            )
        self.timeout = float(timeout)
        self.metadata = sa.MetaData()
        #: The store's table, for Alembic (``target_metadata``) or your own queries.
        self.table = define_table(self.metadata, table, schema=schema)
        self.auto_create = auto_create

        if isinstance(url_or_engine, Engine):
            if engine_options:
                raise ValueError(
                    "SQLAlchemyStore(engine_options=...): only used when the store "
                    "creates the engine from a URL; configure your Engine instead"
                )
            self.owns_engine = False
            self._user_engine: Engine | None = url_or_engine
            url = url_or_engine.url
            engine: Engine = url_or_engine.execution_options(isolation_level="AUTOCOMMIT")
        elif isinstance(url_or_engine, (str, URL)):
            self.owns_engine = True
            self._user_engine = None
            url = self._parse_url(url_or_engine)
            engine = self._create_engine(url, dict(engine_options or {}))
        else:
            raise ValueError(
                f"SQLAlchemyStore({type(url_or_engine).__name__}): give a SQLAlchemy URL "
                "(a str or sqlalchemy.URL) or a sqlalchemy.Engine"
            )
        #: The engine the store runs its statements through.
        self.engine: Engine = engine
        self._url_text = mask_url(url.render_as_string(hide_password=False))
        self._dialect = engine.dialect.name
        self._lock = threading.Lock()
        self._table_ready = False
        self._pid = os.getpid()
        self._build_statements()

    # ------------------------------------------------------------ construction

    def _parse_url(self, raw: str | URL) -> URL:
        try:
            url = make_url(raw)
        except (ArgumentError, ValueError) as exc:
            shown = mask_url(raw) if isinstance(raw, str) else "<URL>"
            raise ValueError(
                f"SQLAlchemyStore({shown!r}): not a SQLAlchemy URL, e.g. "
                "postgresql://user:password@host/dbname"
            ) from exc
        default = _DEFAULT_DRIVERS.get(url.drivername)
        if default is not None:
            url = url.set(drivername=default)
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            if (
                database in ("", ":memory:")
                or database.startswith("file::memory:")
                or ("mode=memory" in database)
            ):
                raise ValueError(
                    "SQLAlchemyStore needs a database shared by every request and "
                    "worker: give sqlite+pysqlite:////path/to/file.db (or use MemoryStore)"
                )
        return url

    def _create_engine(self, url: URL, options: dict[str, Any]) -> Engine:
        try:
            # Loads the dialect and the driver, but does not connect.
            engine = sa.create_engine(url, **self._engine_settings(url, options))
        except NoSuchModuleError as exc:
            raise ValueError(
                f"SQLAlchemyStore({mask_url(url.render_as_string(hide_password=False))!r}): "
                f"unknown database dialect or driver: {exc}"
            ) from exc
        except ImportError as exc:
            raise ImportError(
                f"SQLAlchemyStore: the driver for {url.drivername!r} is missing ({exc}); "
                "pip install 'wsgi-kvsession[sql]' installs psycopg and PyMySQL"
            ) from exc
        except (TypeError, ArgumentError) as exc:
            raise ValueError(f"SQLAlchemyStore(engine_options=...): {exc}") from exc
        if engine.dialect.driver == "pymysql":
            _skip_rollback_in_autocommit(engine.dialect)
        return engine

    def _engine_settings(self, url: URL, options: dict[str, Any]) -> dict[str, Any]:
        connect_args = _connect_args(url, self.timeout)
        connect_args.update(options.pop("connect_args", {}))
        settings: dict[str, Any] = {
            # One statement per operation, so autocommit: no BEGIN/COMMIT round
            # trips (psycopg) and no open transaction between statements.
            "isolation_level": "AUTOCOMMIT",
            # No pool_pre_ping: it would cost a round trip on every operation.
            # A dead pooled connection (server restart, killed session, idle
            # timeout) is handled optimistically instead: SQLAlchemy reports
            # the disconnect, drops the whole pool, and _run retries once.
            # Nothing to roll back in autocommit mode: skip the pool's reset
            # (a ROLLBACK, which PyMySQL sends over the wire every time).
            "pool_reset_on_return": None,
            # Statement parameters are session data: never in an error or log.
            "hide_parameters": True,
            "connect_args": connect_args,
        }
        if "poolclass" not in options:
            settings["pool_timeout"] = self.timeout  # waiting for a free connection
        settings.update(options)
        return settings

    def _build_statements(self) -> None:
        t = self.table
        c = t.c
        p = sa.bindparam
        live = sa.and_(c.id == p("p_id"), c.expires_at > p("p_now"))
        self._load_stmt = sa.select(c.data, c.expires_at, c.version).where(live)
        write: dict[str, Any] = {
            "data": p("p_data"),
            "expires_at": p("p_expires_at"),
            "version": p("p_new_version"),
            "updated_at": p("p_ts"),
        }
        self._update_stmt = sa.update(t).where(live).values(write)
        self._update_cas_stmt = sa.update(t).where(live, c.version == p("p_version")).values(write)
        self._touch_stmt = sa.update(t).where(live).values(expires_at=p("p_expires_at"))
        self._delete_stmt = sa.delete(t).where(live)
        self._delete_cas_stmt = sa.delete(t).where(live, c.version == p("p_version"))
        self._page_stmt = (
            sa.select(c.id, c.store_key, c.data, c.expires_at, c.version)
            .where(c.id > p("p_after"), c.expires_at > p("p_now"))
            .order_by(c.id)
            .limit(_PAGE)
        )
        row: dict[str, Any] = {
            "id": p("p_id"),
            "store_key": p("p_key"),
            "data": p("p_data"),
            "expires_at": p("p_expires_at"),
            "version": p("p_new_version"),
            "created_at": p("p_ts"),
            "updated_at": p("p_ts"),
        }
        self._insert_stmt: sa.Executable = sa.insert(t).values(row)
        self._upsert_stmt: sa.Executable | None = None
        if self._dialect in ("postgresql", "sqlite"):
            # Native upsert that replaces only an EXPIRED row: one statement,
            # atomic against a concurrent insert of the same key (the loser
            # waits for the winner's row, then finds it live: rowcount 0).
            dialect_insert = (
                sa_postgresql.insert if self._dialect == "postgresql" else sa_sqlite.insert
            )
            ins = dialect_insert(t).values(row)
            # preserve_rowcount: SQLAlchemy keeps rowcount only for UPDATE and
            # DELETE unless asked; it is how we learn whether the row was written.
            self._upsert_stmt = ins.execution_options(preserve_rowcount=True).on_conflict_do_update(
                index_elements=[c.id],
                set_={
                    name: ins.excluded[name]
                    for name in (
                        "store_key",
                        "data",
                        "expires_at",
                        "version",
                        "created_at",
                        "updated_at",
                    )
                },
                where=c.expires_at <= p("p_now"),
            )
        self._delete_expired_stmt = sa.delete(t).where(
            c.id == p("p_id"), c.expires_at <= p("p_now")
        )

    def __repr__(self) -> str:
        return f"SQLAlchemyStore({self._url_text!r}, table={self.table.fullname!r})"

    # ------------------------------------------------------------------ schema

    def create_table(self, *, checkfirst: bool = True) -> None:
        """Create the table and its index (``checkfirst``: only if missing).

        Safe to call from several processes at once: losing a creation race to
        another process is not an error.
        """
        try:
            with self.engine.connect() as conn:
                # DDL in the dialect's ordinary transactional mode, so that on
                # PostgreSQL the table and its index appear together.
                conn.execution_options(isolation_level=conn.default_isolation_level)
                with conn.begin():
                    self.metadata.create_all(conn, checkfirst=checkfirst)
        except (SQLAlchemyError, OSError) as exc:
            if checkfirst and self._table_exists():
                return  # another process created it in the meantime
            raise StoreError(f"{self!r}: cannot create the table: {_describe(exc)}") from exc

    def _table_exists(self) -> bool:
        try:
            with self.engine.connect() as conn:
                return sa.inspect(conn).has_table(self.table.name, schema=self.table.schema)
        except (SQLAlchemyError, OSError):
            return False

    def _prepare(self) -> None:
        if self.owns_engine and self._pid != os.getpid():
            # A forked worker must not share the parent's sockets: forget the
            # inherited pool without closing the parent's connections.
            with self._lock:
                if self._pid != os.getpid():
                    self.engine.dispose(close=False)
                    self._pid = os.getpid()
        if self._table_ready or not self.auto_create:
            return
        with self._lock:
            if not self._table_ready:
                self.create_table(checkfirst=True)
                self._table_ready = True

    # ----------------------------------------------------------------- running

    def _run(self, what: str, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` on a pooled connection; every error becomes StoreError."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self._prepare()  # raises StoreError itself
                with self.engine.connect() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if attempt < _ATTEMPTS and _is_deadlock(exc):
                    continue  # the statement was rolled back as a whole
                if attempt == 1 and exc.connection_invalidated:
                    # A pooled connection the server had closed; the pool has
                    # been emptied, so this attempt gets a fresh connection.
                    continue
                raise StoreError(f"{self!r}: {what} failed: {_describe(exc)}") from exc
            except (SQLAlchemyError, OSError) as exc:
                # OSError: a driver's socket error that escaped its DBAPI wrapping.
                raise StoreError(f"{self!r}: {what} failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _rowcount(self, what: str, stmt: sa.Executable, params: dict[str, Any]) -> int:
        def work(conn: Connection) -> int:
            return conn.execute(stmt, params).rowcount

        return self._run(what, work)

    # ---------------------------------------------------------------- protocol

    def load(self, key: str) -> Record | None:
        def work(conn: Connection) -> Record | None:
            row = conn.execute(self._load_stmt, {"p_id": _hash(key), "p_now": time.time()}).first()
            if row is None:
                return None
            return Record(bytes(row.data), float(row.expires_at), int(row.version))

        return self._run("load", work)

    def insert(self, key: str, value: bytes, expires_at: float) -> bool:
        params = {
            "p_id": _hash(key),
            "p_key": key,
            "p_data": bytes(value),
            "p_expires_at": float(expires_at),
            "p_new_version": _new_version(),
            "p_ts": _utcnow(),
        }
        if self._upsert_stmt is not None:
            params["p_now"] = time.time()
            return self._rowcount("insert", self._upsert_stmt, params) == 1
        return self._run("insert", lambda conn: self._insert_portable(conn, params))

    def _insert_portable(self, conn: Connection, params: dict[str, Any]) -> bool:
        # MySQL/MariaDB (and other dialects). ON DUPLICATE KEY UPDATE cannot
        # say "only if expired": it has no WHERE, its assignments see the
        # columns already assigned to their left, and with CLIENT_FOUND_ROWS
        # (set by SQLAlchemy) its rowcount is 1 both for a new row and for a
        # duplicate left unchanged. So: a plain INSERT, which the primary key
        # makes insert-if-absent; only if the key is taken, delete the row if
        # it has expired and insert again. Each is an autocommit statement of
        # its own; no transaction is needed, because the DELETE only ever
        # removes a row that is already absent to every reader, and the
        # primary key alone decides which of racing INSERTs wins. A new key
        # (the normal case: keys hash random IDs) costs one statement.
        try:
            conn.execute(self._insert_stmt, params)
            return True
        except IntegrityError:
            pass
        conn.execute(self._delete_expired_stmt, {"p_id": params["p_id"], "p_now": time.time()})
        try:
            conn.execute(self._insert_stmt, params)
            return True
        except IntegrityError:
            # A row that survived the delete, or one inserted after it by a
            # racing insert: either way a live record exists.
            return False

    def update(
        self, key: str, value: bytes, expires_at: float, version: Version | None = None
    ) -> bool:
        params: dict[str, Any] = {
            "p_id": _hash(key),
            "p_now": time.time(),
            "p_data": bytes(value),
            "p_expires_at": float(expires_at),
            "p_new_version": _new_version(),
            "p_ts": _utcnow(),
        }
        if version is None:
            stmt = self._update_stmt
        elif isinstance(version, int) and not isinstance(version, bool):
            # The WHERE clause is checked against the latest committed row
            # (PostgreSQL re-checks it after waiting for a concurrent writer;
            # InnoDB's UPDATE reads with a lock), so this is an atomic CAS.
            stmt = self._update_cas_stmt
            params["p_version"] = version
        else:
            return False  # not a version this store ever handed out
        # rowcount counts matched rows on every tested driver (SQLAlchemy sets
        # CLIENT_FOUND_ROWS for MySQL drivers).
        return self._rowcount("update", stmt, params) == 1

    def delete(self, key: str, version: Version | None = None) -> bool:
        # Only a live row counts; an expired one is left to cleanup() (and an
        # insert replaces it).
        params: dict[str, Any] = {"p_id": _hash(key), "p_now": time.time()}
        if version is None:
            stmt = self._delete_stmt
        elif isinstance(version, int) and not isinstance(version, bool):
            stmt = self._delete_cas_stmt
            params["p_version"] = version
        else:
            return False
        return self._rowcount("delete", stmt, params) == 1

    def touch(self, key: str, expires_at: float) -> bool:
        # Only the expiry: the version stays, so a compare-and-set by a request
        # that read the record before the touch still succeeds.
        params = {"p_id": _hash(key), "p_now": time.time(), "p_expires_at": float(expires_at)}
        return self._rowcount("touch", self._touch_stmt, params) == 1

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        # Pages by primary key, each page its own statement: no long read
        # transaction and no server-side cursor held while the caller works.
        after = ""
        while True:
            params = {"p_after": after, "p_now": time.time()}

            def page(conn: Connection, params: dict[str, Any] = params) -> list[Any]:
                return list(conn.execute(self._page_stmt, params).all())

            rows = self._run("iter_records", page)
            for row in rows:
                if not row.store_key.startswith(prefix):
                    continue  # rows are in hash order: a prefix is no range here
                yield (
                    row.store_key,
                    Record(bytes(row.data), float(row.expires_at), int(row.version)),
                )
            if len(rows) < _PAGE:
                return
            after = rows[-1].id

    def cleanup(self, batch_size: int = 1000) -> int:
        """Delete expired rows, ``batch_size`` per statement; return how many.

        Each batch is its own (autocommit) transaction, so a large cleanup never
        holds many row locks for long. Rows that expire while it runs are left
        for the next cleanup.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"cleanup(batch_size={batch_size!r}): give a positive integer")
        t, c = self.table, self.table.c
        now = time.time()
        stmt: sa.Executable
        if self._dialect in ("mysql", "mariadb"):
            # MySQL cannot take LIMIT in an IN (subquery); DELETE has its own.
            stmt = (
                sa.delete(t)
                .where(c.expires_at <= now)
                .with_dialect_options(**{f"{self._dialect}_limit": batch_size})
            )
        else:
            batch = sa.select(c.id).where(c.expires_at <= now).limit(batch_size)
            if self._dialect == "postgresql":
                # Two cleanups running at once skip each other's rows instead
                # of waiting for (or deadlocking on) them.
                batch = batch.with_for_update(skip_locked=True)
            stmt = sa.delete(t).where(c.id.in_(batch.scalar_subquery()))
        removed = 0
        while True:
            count = self._rowcount("cleanup", stmt, {})
            removed += count
            if count < batch_size:
                return removed

    def close(self) -> None:
        """Close the pooled connections of an engine the store created.

        The store may be used again afterwards (the pool reconnects). An
        ``Engine`` passed in by the caller is left alone: its owner disposes it.
        """
        if self.owns_engine:
            self.engine.dispose()
