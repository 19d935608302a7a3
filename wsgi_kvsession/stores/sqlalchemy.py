"""A store in one table of any SQL database SQLAlchemy (Core 2.x) can reach.

PostgreSQL (psycopg 3), MariaDB/MySQL (PyMySQL) and SQLite are tested; any
other dialect with a unique primary key works through the portable insert path.

What bounds a wait, on an engine the store creates (``timeout`` in seconds;
measured on Linux 6.18 with the tests' proxy and, for the kernel's part, with a
real partition: every packet dropped between two network namespaces):

PostgreSQL (psycopg 3)
    Connecting: ``connect_timeout`` of ``ceil(timeout)`` whole seconds, at
    least 2 (libpq's and psycopg's minimum). Each statement: the server's
    ``statement_timeout`` (``timeout``, lock waits included) ends a slow
    statement cleanly; and the client gives up ``timeout + 0.5`` s after
    sending it, closing the connection, whose state is then unknown. Only this
    client-side deadline bounds a server that holds the connection open but
    never answers (a stopped or hung process, a hung proxy or pooler): there
    the peer's kernel still acknowledges every packet, so TCP sees a healthy
    connection (measured: still waiting after 25 s without the deadline). It
    needs psycopg 3.2 or later (``Connection.wait`` with a ``timeout``); with
    3.1 only the kernel's bounds below apply. The kernel's bounds, for a peer
    that is gone (a partition, a host that lost power): ``tcp_user_timeout``
    (``timeout`` in ms) ends a connection whose sent data stays unacknowledged
    (measured with the same socket options: about ``timeout + 0.4`` s), and
    keepalives (first probe after ``ceil(timeout)`` s of silence, then every
    second) end one waiting for a reply (about ``ceil(timeout) + 1`` s); they
    also clear dead connections idling in the pool. ``tcp_user_timeout`` works
    on Linux only; elsewhere three unanswered probes end the connection.
MariaDB/MySQL (PyMySQL)
    ``connect_timeout``, ``read_timeout`` and ``write_timeout`` of ``timeout``:
    every socket read or write fails after that long without progress, so a
    hung server fails a statement after ``timeout`` (error 2013, "Lost
    connection ... (timed out)"). mysqlclient takes whole seconds.
SQLite
    ``timeout`` is how long a writer waits for another one's lock.

Values in the URL's query or in ``engine_options["connect_args"]`` win over
these; ``-c statement_timeout`` is added to the ``options`` you give unless they
set one. An ``Engine`` you pass in keeps its own settings.

A failed operation is not retried after a timeout, so a dead or hung server
costs one timeout per operation (plus connecting, for a new connection), and
after a failure to connect the first use does not look for the table a second
time. The one retry (besides a deadlock victim, which the database rolled back)
is of a pooled connection found dead on first use: it failed as a disconnect,
promptly, and had served earlier operations (the server restarted or killed
it). Its statement may still have run if the server committed it and then
lost the connection before replying; the retry then reports what it finds, so:
an insert or update whose retry finds the row holding its own new version (a
random 62-bit number drawn for that call) returns True, and False only when
another write holds the row; a delete whose retry finds no live record left
(for a compare-and-delete: none with any version) returns True, as the record
is gone as asked, although it may have been absent all along (the first
attempt never ran) or removed by another client: a client cannot tell these
apart; a touch is idempotent (its retry finds the same record), except that
one moving the expiry into the past then reports False.
"""

from __future__ import annotations

import hashlib
import inspect
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
    from sqlalchemy.schema import CreateColumn
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

#: How long after the server's statement_timeout psycopg stops waiting: a live
#: server's own cancellation arrives first and keeps the connection usable.
_CLIENT_GRACE = 0.5

#: Set in a pooled connection's ``info`` when it is opened, taken by its first
#: use: a connection that fails then was never "stale" and is not retried.
_FRESH = "wsgi_kvsession.fresh"


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
    ``user_id``
        the user the session belongs to (``Session.user_id`` as text; NULL for
        an anonymous session), indexed, so that a session manager finds a
        user's sessions without reading the table. A user ID longer than 255
        characters, or holding a NUL character, is kept as ``sha256:`` and
        its hash. Binary collation on MySQL/MariaDB (``Bob`` is not ``bob``);
    ``created_at``, ``updated_at``
        UTC timestamps of the insert and the last write, for operators only.

    A table created by an earlier version has no ``user_id`` column: a store
    with ``auto_create=True`` adds it (and its index) on first use; with
    migrations, add them in one (see :doc:`/admin`)::

        op.add_column("kvsession", sa.Column("user_id", sa.String(255), nullable=True))
        op.create_index("ix_kvsession_user_id", "kvsession", ["user_id"])
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
    user = sa.String(255).with_variant(
        sa_mysql.VARCHAR(255, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )
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
        sa.Column("user_id", user, nullable=True),
        sa.Index(f"ix_{name}_expires_at", "expires_at"),
        sa.Index(f"ix_{name}_user_id", "user_id"),
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


#: The longest user ID kept as it is in the ``user_id`` column.
_USER_LENGTH = 255


def _user_column(user: str | None) -> str | None:
    """The ``user_id`` column's value for ``user``: the ID itself, or its hash
    when a column of every dialect could not hold it (too long, a NUL, which
    PostgreSQL refuses, or text that is not valid UTF-8)."""
    if user is None:
        return None
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if len(user) <= _USER_LENGTH and "\x00" not in user:
            return user
    return "sha256:" + _hash(user)


def _missing_user_column(exc: BaseException) -> bool:
    """Whether a statement failed because the table has no ``user_id`` column
    (a table created before it existed, with ``auto_create=False``)."""
    text = str(getattr(exc, "orig", None) or exc)
    return "user_id" in text and any(
        phrase in text
        for phrase in ("does not exist", "Unknown column", "no such column", "no column named")
    )


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


def _show_url(url: URL) -> str:
    """The URL for a repr or a message: SQLAlchemy hides the password of the
    user information, and mask_url also the value of ``?password=``,
    ``passwd``, ``sslpassword`` and other secret-looking query parameters."""
    return mask_url(url.render_as_string(hide_password=True))


def _timed_out(exc: BaseException) -> bool:
    """Whether a driver gave up waiting (PyMySQL's read timeout, our deadline)."""
    seen: set[int] = set()
    current: BaseException | None = exc.orig if isinstance(exc, DBAPIError) else exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TimeoutError):  # socket.timeout is TimeoutError
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _connection_lost(exc: BaseException) -> bool:
    return (
        isinstance(exc, OSError)
        or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
        or _timed_out(exc)
    )


def _mark_fresh(dbapi_connection: Any, connection_record: Any) -> None:
    connection_record.info[_FRESH] = True


def _psycopg_with_deadline(seconds: float) -> Any:
    """A psycopg 3 ``Connection`` class whose waits for the server end after ``seconds``.

    psycopg runs every statement as one ``wait`` on its socket (send, then
    read the reply), with no limit of its own; this class gives each wait that
    has none a deadline. When it expires the query is still in flight, so the
    connection is closed (SQLAlchemy then sees a disconnect and drops it) and
    the error is chained to a ``TimeoutError``, which tells ``_run`` not to
    retry. ``None`` when psycopg is missing or older than 3.2.
    """
    try:
        import psycopg
        from psycopg import errors as pg_errors
        from psycopg.abc import PQGen
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    wait_timeout: Any = getattr(pg_errors, "_WaitTimeout", None)
    parameters = inspect.signature(psycopg.Connection.wait).parameters
    if wait_timeout is None or "timeout" not in parameters or "interval" not in parameters:
        return None  # pragma: no cover - psycopg 3.1: no bounded wait

    class DeadlineConnection(psycopg.Connection[Any]):
        def wait(self, gen: PQGen[_T], interval: float = 0.1, timeout: float | None = None) -> _T:
            if timeout is not None:  # a caller's own limit (notifies, COPY)
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(gen, interval, seconds)
            except wait_timeout as exc:
                self.close()
                raise psycopg.OperationalError(
                    f"no reply from the server within {seconds:g} s; connection closed"
                ) from TimeoutError(str(exc))

    return DeadlineConnection


def _is_deadlock(exc: DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40P01", "40001"):  # PostgreSQL
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in (1213,)  # MySQL/MariaDB ER_LOCK_DEADLOCK


def _connect_args(url: URL, timeout: float, given: Mapping[str, Any]) -> dict[str, Any]:
    """Timeouts for the driver, merged with ``given`` (the caller's connect_args).

    What the URL's query or ``given`` sets wins, except that the server-side
    ``statement_timeout`` is added to PostgreSQL ``options`` that set none.
    """
    driver = url.get_driver_name()
    args: dict[str, Any] = {}
    if driver in ("psycopg", "psycopg2"):
        whole = max(1, math.ceil(timeout))  # libpq takes whole seconds here
        args.update(
            connect_timeout=max(2, whole),  # libpq's minimum is 2
            # For a peer that is gone (see the module docstring): unacknowledged
            # data ends the connection after `timeout`; silence while waiting
            # for a reply is probed after `whole` seconds, then every second.
            tcp_user_timeout=max(1, round(timeout * 1000)),
            keepalives=1,
            keepalives_idle=whole,
            keepalives_interval=1,
            keepalives_count=3,
            # Bounds each statement on the server, lock waits included.
            options=f"-c statement_timeout={max(1, round(timeout * 1000))}",
        )
    elif driver == "pymysql":
        args.update(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    elif driver == "mysqldb":
        whole = max(1, math.ceil(timeout))
        args.update(connect_timeout=whole, read_timeout=whole, write_timeout=whole)
    elif driver == "pysqlite":
        args["timeout"] = timeout  # how long to wait for another writer's lock
    merged = {
        name: value for name, value in args.items() if name not in url.query and name not in given
    }
    if "options" in args:
        theirs = given.get("options", url.query.get("options"))
        if isinstance(theirs, str):
            merged.pop("options", None)
            if "statement_timeout" not in theirs:
                merged["options"] = f"{theirs} {args['options']}".strip()
    merged.update({name: value for name, value in given.items() if name not in merged})
    return merged


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

    The user a record belongs to (``user=``) is written to the indexed
    ``user_id`` column by the same statement as the record.

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

    indexes_users = True

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
        self._url_text = _show_url(url)
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
                f"SQLAlchemyStore({_show_url(url)!r}): unknown database dialect or driver: {exc}"
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
        sa.event.listen(engine, "connect", _mark_fresh)
        if engine.dialect.driver == "psycopg" and "creator" not in options:
            connection_class = _psycopg_with_deadline(self.timeout + _CLIENT_GRACE)
            if connection_class is not None:
                # The dialect's own connect step (this engine's dialect object
                # only), so that "do_connect" listeners still run before it and
                # may change the parameters or connect by themselves.
                def connect(*cargs: Any, **cparams: Any) -> Any:
                    return connection_class.connect(*cargs, **cparams)

                engine.dialect.connect = connect  # type: ignore[method-assign]
        return engine

    def _engine_settings(self, url: URL, options: dict[str, Any]) -> dict[str, Any]:
        given = options.pop("connect_args", None) or {}
        if not isinstance(given, Mapping):
            raise ValueError(
                f"SQLAlchemyStore(engine_options={{'connect_args': {given!r}}}): give a dict"
            )
        connect_args = _connect_args(url, self.timeout, given)
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
            "user_id": p("p_user"),
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
        self._user_page_stmt = (
            sa.select(c.id, c.store_key, c.data, c.expires_at, c.version, c.user_id)
            .where(c.user_id == p("p_user"), c.id > p("p_after"), c.expires_at > p("p_now"))
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
            "user_id": p("p_user"),
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
                        "user_id",
                    )
                },
                where=c.expires_at <= p("p_now"),
            )
        self._delete_expired_stmt = sa.delete(t).where(
            c.id == p("p_id"), c.expires_at <= p("p_now")
        )
        # After a retry: whose write is the row, and is there a live one?
        self._version_stmt = sa.select(c.version).where(c.id == p("p_id"))
        self._live_version_stmt = sa.select(c.version).where(live)

    def __repr__(self) -> str:
        return f"SQLAlchemyStore({self._url_text!r}, table={self.table.fullname!r})"

    # ------------------------------------------------------------------ schema

    def create_table(self, *, checkfirst: bool = True) -> None:
        """Create the table and its index (``checkfirst``: only if missing).

        Safe to call from several processes at once: losing a creation race to
        another process is not an error.
        """
        try:
            conn = self.engine.connect()
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"{self!r}: cannot connect: {_describe(exc)}") from exc
        try:
            with conn:
                # DDL in the dialect's ordinary transactional mode, so that on
                # PostgreSQL the table and its index appear together.
                conn.execution_options(isolation_level=conn.default_isolation_level)
                with conn.begin():
                    self.metadata.create_all(conn, checkfirst=checkfirst)
                conn.info.pop(_FRESH, None)  # it has served: now a pooled one
        except (SQLAlchemyError, OSError) as exc:
            # Another process may have created it in the meantime: look again,
            # but not over a connection just lost or timed out, where the look
            # would only wait (and fail) once more.
            if checkfirst and not _connection_lost(exc) and self._table_exists():
                return
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
                self._add_user_column()
                self._table_ready = True

    def _add_user_column(self) -> None:
        """Give a table created before the per-user index its ``user_id``
        column and index (``auto_create=True`` only; migrations do it otherwise).

        Safe to run from several processes at once: losing the race to another
        process is not an error.
        """
        column = self.table.c.user_id
        (index,) = (i for i in self.table.indexes if column in i.columns.values())
        try:
            if not self._has_user_column():
                with self.engine.connect() as conn:
                    conn.info.pop(_FRESH, None)
                    ddl = CreateColumn(column).compile(dialect=conn.dialect)
                    table = conn.dialect.identifier_preparer.format_table(self.table)
                    # DDL in the dialect's transactional mode, as create_table
                    # does: on PostgreSQL the column and its index appear together.
                    conn.execution_options(isolation_level=conn.default_isolation_level)
                    try:
                        with conn.begin():
                            conn.execute(sa.text(f"ALTER TABLE {table} ADD {ddl}"))
                            index.create(conn, checkfirst=True)
                        return
                    except (SQLAlchemyError, OSError):
                        # Another process may have added it meanwhile: look again.
                        if not self._has_user_column():
                            raise
            # The column is there; its index may not be (a table migrated by
            # hand, or a MySQL ALTER whose index creation failed).
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level=conn.default_isolation_level)
                try:
                    with conn.begin():
                        index.create(conn, checkfirst=True)
                except (SQLAlchemyError, OSError):
                    if not self._has_user_index(index.name):
                        raise
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(
                f"{self!r}: cannot add the user_id column to the table: {_describe(exc)}"
            ) from exc

    def _has_user_index(self, name: str | None) -> bool:
        with self.engine.connect() as conn:
            indexes = sa.inspect(conn).get_indexes(self.table.name, schema=self.table.schema)
        return any(i["name"] == name for i in indexes)

    def _has_user_column(self) -> bool:
        with self.engine.connect() as conn:
            columns = sa.inspect(conn).get_columns(self.table.name, schema=self.table.schema)
        return any(c["name"] == "user_id" for c in columns)

    # ----------------------------------------------------------------- running

    def _run(
        self,
        what: str,
        work: Callable[[Connection], _T],
        verify: Callable[[Connection], _T] | None = None,
    ) -> _T:
        """Run ``work`` on a pooled connection; every error becomes StoreError.

        ``verify`` is for a write whose retry reports a refusal: the first
        attempt may have been committed before its reply was lost, and
        ``verify`` says (on the retry's connection) whether that write is there.
        """
        retried = False
        for attempt in range(1, _ATTEMPTS + 1):
            started: float | None = None
            pooled = False
            try:
                self._prepare()  # raises StoreError itself
                with self.engine.connect() as conn:
                    # (An Engine passed in gets no listener marking new
                    # connections: all of its connections count as pooled.)
                    pooled = not conn.info.pop(_FRESH, False)
                    started = time.monotonic()
                    result = work(conn)
                    if retried and verify is not None and not result:
                        result = verify(conn)
                    return result
            except DBAPIError as exc:
                if attempt < _ATTEMPTS and _is_deadlock(exc):
                    continue  # the statement was rolled back as a whole
                if (
                    not retried
                    and exc.connection_invalidated
                    and pooled
                    and started is not None
                    and time.monotonic() - started < self.timeout
                    and not _timed_out(exc)
                ):
                    # A pooled connection the server had closed (a restart, a
                    # killed session), found dead on its first use: the pool
                    # has been emptied, so this attempt gets a fresh one. Not
                    # after a timeout: that would only double the wait.
                    retried = True
                    continue
                if _missing_user_column(exc):
                    raise StoreError(
                        f"{self!r}: {what} failed: the table {self.table.fullname!r} has no "
                        "user_id column (added for the per-user session index); add it and "
                        "its index in a migration: op.add_column(table, sa.Column('user_id', "
                        "sa.String(255), nullable=True)); op.create_index("
                        f"'ix_{self.table.name}_user_id', table, ['user_id']), or build "
                        f"the store with auto_create=True ({_describe(exc)})"
                    ) from exc
                raise StoreError(f"{self!r}: {what} failed: {_describe(exc)}") from exc
            except (SQLAlchemyError, OSError) as exc:
                # OSError: a driver's socket error that escaped its DBAPI wrapping.
                raise StoreError(f"{self!r}: {what} failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _rowcount(self, what: str, stmt: sa.Executable, params: dict[str, Any]) -> int:
        def work(conn: Connection) -> int:
            return conn.execute(stmt, params).rowcount

        return self._run(what, work)

    def _write(
        self,
        what: str,
        stmt: sa.Executable,
        params: dict[str, Any],
        verify: Callable[[Connection], bool] | None,
    ) -> bool:
        def work(conn: Connection) -> bool:
            return conn.execute(stmt, params).rowcount == 1

        return self._run(what, work, verify)

    def _holds(self, key_hash: str, version: int) -> Callable[[Connection], bool]:
        """A check that the row under ``key_hash`` carries ``version``, this
        call's own new version: then the write being retried was committed."""

        def verify(conn: Connection) -> bool:
            found = conn.execute(self._version_stmt, {"p_id": key_hash}).scalar()
            return found is not None and int(found) == version

        return verify

    # ---------------------------------------------------------------- protocol

    def load(self, key: str) -> Record | None:
        def work(conn: Connection) -> Record | None:
            row = conn.execute(self._load_stmt, {"p_id": _hash(key), "p_now": time.time()}).first()
            if row is None:
                return None
            return Record(bytes(row.data), float(row.expires_at), int(row.version))

        return self._run("load", work)

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        params: dict[str, Any] = {
            "p_id": _hash(key),
            "p_key": key,
            "p_data": bytes(value),
            "p_expires_at": float(expires_at),
            "p_new_version": _new_version(),
            "p_ts": _utcnow(),
            "p_user": _user_column(user),
        }
        verify = self._holds(params["p_id"], params["p_new_version"])
        if self._upsert_stmt is not None:
            params["p_now"] = time.time()
            return self._write("insert", self._upsert_stmt, params, verify)
        return self._run("insert", lambda conn: self._insert_portable(conn, params), verify)

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
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        *,
        user: str | None = None,
    ) -> bool:
        params: dict[str, Any] = {
            "p_id": _hash(key),
            "p_now": time.time(),
            "p_data": bytes(value),
            "p_expires_at": float(expires_at),
            "p_new_version": _new_version(),
            "p_ts": _utcnow(),
            "p_user": _user_column(user),
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
        verify = self._holds(params["p_id"], params["p_new_version"])
        return self._write("update", stmt, params, verify)

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

        def verify(conn: Connection) -> bool:
            # The retry removed nothing: if no live record is left, the first
            # attempt most likely did (whose it was cannot be told; see the
            # module docstring). A live record (for a plain delete there is
            # none, or the retry would have removed it) is another's write.
            live = {"p_id": params["p_id"], "p_now": time.time()}
            return conn.execute(self._live_version_stmt, live).first() is None

        return self._write("delete", stmt, params, verify)

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

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        # Through the user_id index, paged by primary key like iter_records.
        # Compared again here: MySQL's collations ignore trailing spaces.
        column = _user_column(user)
        after = ""
        while True:
            params = {"p_user": column, "p_after": after, "p_now": time.time()}

            def page(conn: Connection, params: dict[str, Any] = params) -> list[Any]:
                return list(conn.execute(self._user_page_stmt, params).all())

            rows = self._run("iter_user_records", page)
            for row in rows:
                if row.user_id == column and row.store_key.startswith(prefix):
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
