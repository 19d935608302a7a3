"""The ``wsgi-kvsession`` command: the demo, and the stored sessions at hand.

``pip install 'wsgi-kvsession[cli]'`` brings click and waitress. Every command
takes ``--store URL`` (or ``WSGI_KVSESSION_STORE``) and ``--key-prefix``; the
default store is the demo's, ``sqlite:///sessions.db`` in the working directory.

Sessions are named by their *key hash* (what ``list`` prints): the store never
holds a session ID. ``show`` and ``revoke`` also take an ID itself.

A bad URL, a missing client library or an unreachable store ends the command
with a one-line message (URL masked) and exit status 1, never a traceback.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import decimal
import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from .admin import SessionInfo, SessionManager
from .stores.base import Store, StoreError, mask_url
from .stores.urls import store_from_url

__all__ = ["main"]

DEFAULT_STORE = "sqlite:///sessions.db"
_KEY_HASH = re.compile(r"[0-9a-f]{64}")

F = TypeVar("F", bound=Callable[..., Any])


def _store_options(function: F) -> F:
    """``--store`` and ``--key-prefix``, on every command."""
    function = click.option(
        "--key-prefix",
        default="session:",
        show_default=True,
        help="The key_prefix the app's middleware uses.",
    )(function)
    function = click.option(
        "--store",
        "store_url",
        envvar="WSGI_KVSESSION_STORE",
        default=DEFAULT_STORE,
        show_default=True,
        metavar="URL",
        help="Store URL (also $WSGI_KVSESSION_STORE): memory://, file:///dir, "
        "sqlite:///file.db, redis://host:6379/0, memcached://host:11211, postgresql://…",
    )(function)
    return function


@contextlib.contextmanager
def _opened(store_url: str) -> Iterator[Store]:
    """The store ``store_url`` names; every failure of it as a ClickException."""
    try:
        store = store_from_url(store_url)
    except ValueError as exc:  # the message already masks the URL
        raise click.ClickException(str(exc)) from None
    except ImportError as exc:
        raise click.ClickException(
            f"store URL {mask_url(store_url)!r} needs a client library that is not "
            f"installed ({exc}); e.g. pip install 'wsgi-kvsession[redis]'"
        ) from None
    try:
        yield store
    except StoreError as exc:
        raise click.ClickException(f"store error: {exc}") from None
    except ValueError as exc:  # an option the session manager refuses (key_prefix)
        raise click.ClickException(str(exc)) from None
    except NotImplementedError:
        raise click.ClickException(
            f"{store!r} cannot list its sessions (memcached keeps no list of its keys); "
            "use a store that can (Redis, SQL, SQLite, files) to list, count or find them"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            store.close()


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _sizes(store: Store, prefix: str) -> dict[str, int]:
    """The stored size (bytes) of each record under ``prefix``, by key."""
    return {key: len(record.value) for key, record in store.iter_records(prefix)}


def _readable(value: Any) -> Any:
    """JSON for the tagged types the session serializer keeps."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted((_readable(x) if not isinstance(x, str) else x for x in value), key=str)
    if isinstance(value, bytes):
        return repr(value)
    return str(value)  # Markup and anything else a custom serializer gives


def _find(manager: SessionManager, key_hash_or_id: str) -> SessionInfo | None:
    """The session a key hash (from ``list``) or a session ID names."""
    if _KEY_HASH.fullmatch(key_hash_or_id):
        info = manager.get_by_hash(key_hash_or_id)
        if info is not None:
            return info
    try:
        return manager.get(key_hash_or_id)
    except ValueError:
        if _KEY_HASH.fullmatch(key_hash_or_id):
            return None
        raise click.BadParameter(
            "expected a key hash (64 hex digits, as `list` prints) or a session ID",
            param_hint="KEY_HASH_OR_ID",
        ) from None


# -- the commands ------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wsgi-kvsession")
def main() -> None:
    """Server-side sessions for WSGI: run the demo, inspect and manage stored sessions."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@_store_options
def demo(host: str, port: int, store_url: str, key_prefix: str) -> None:
    """Serve the demo app (waitress) until Ctrl-C."""
    try:
        import waitress  # type: ignore[import-untyped]  # no type hints shipped
    except ImportError:
        raise click.ClickException(
            "the demo needs waitress: pip install 'wsgi-kvsession[cli]'"
        ) from None

    from .demo import make_app

    with _opened(store_url) as store:
        store.load(key_prefix + "0" * 64)  # fail now, not at the first request
        try:
            server = waitress.create_server(
                make_app(store, key_prefix=key_prefix), host=host, port=port
            )
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
        actual = server.effective_port  # the real one when --port 0
        click.echo(f"Serving the wsgi_kvsession demo on http://{host}:{actual}/")
        click.echo(f"Store: {store!r}. Press Ctrl-C to stop.")
        try:
            server.run()  # returns on Ctrl-C / SIGINT (waitress catches the interrupt)
        except KeyboardInterrupt:
            pass  # one that lands outside waitress's loop
        finally:
            server.close()
        click.echo("\nStopped.")


@main.command()
@_store_options
def cleanup(store_url: str, key_prefix: str) -> None:
    """Remove expired sessions; print how many were removed."""
    with _opened(store_url) as store:
        manager = SessionManager(store, key_prefix=key_prefix)
        removed = manager.cleanup()
        click.echo(f"Removed {removed} expired record(s).")
        try:
            records = store.iter_records(key_prefix)
            with click.progressbar(records, label="Counting live sessions") as bar:
                remaining = sum(1 for _ in bar)
        except NotImplementedError:
            return  # memcached: expires by itself, and cannot list
        click.echo(f"{remaining} record(s) remain under {key_prefix!r}.")


@main.command()
@click.option("--top", default=10, show_default=True, type=click.IntRange(0), help="Users shown.")
@_store_options
def stats(top: int, store_url: str, key_prefix: str) -> None:
    """Sessions, bytes, permanent sessions and sessions per user."""
    with _opened(store_url) as store:
        manager = SessionManager(store, key_prefix=key_prefix)
        sizes = _sizes(store, key_prefix)
        users: collections.Counter[str] = collections.Counter()
        live = permanent = anonymous = total = 0
        for info in manager.iter_sessions():
            live += 1
            permanent += info.permanent
            total += sizes.get(info.key, 0)
            if info.user_id is None:
                anonymous += 1
            else:
                users[str(info.user_id)] += 1
        click.echo(f"store:          {store!r}")
        click.echo(f"sessions:       {live}")
        # Records the store lists that are no live session: past the absolute
        # timeout, damaged, or of another serializer (the store's own expired
        # records are invisible to a listing; `cleanup` removes them).
        click.echo(f"not live:       {max(len(sizes) - live, 0)}")
        click.echo(f"total bytes:    {total}")
        click.echo(f"permanent:      {permanent}")
        click.echo(f"anonymous:      {anonymous}")
        click.echo(f"users:          {len(users)}")
        for user, count in users.most_common(top):
            click.echo(f"  {user}: {count}")


@main.command(name="list")
@click.option("--user", help="Only the sessions of this user (Session.user_id).")
@_store_options
def list_(user: str | None, store_url: str, key_prefix: str) -> None:
    """One line per live session: key hash, user, created, expires, size."""
    with _opened(store_url) as store:
        manager = SessionManager(store, key_prefix=key_prefix)
        sizes = _sizes(store, key_prefix)
        sessions = manager.sessions_of(user) if user is not None else manager.iter_sessions()
        count = 0
        for info in sessions:
            count += 1
            who = "-" if info.user_id is None else str(info.user_id)
            size = sizes.get(info.key)
            click.echo(
                f"{info.key_hash}  {who:<16}  {_when(info.created)}  "
                f"{_when(info.expires_at)}  {'?' if size is None else size} B"
            )
        click.echo(f"{count} session(s)", err=True)


@main.command()
@click.argument("key_hash_or_id")
@_store_options
def show(key_hash_or_id: str, store_url: str, key_prefix: str) -> None:
    """A session's metadata and data, as JSON."""
    with _opened(store_url) as store:
        info = _find(SessionManager(store, key_prefix=key_prefix), key_hash_or_id)
        if info is None:
            raise click.ClickException("no live session by that key hash or ID")
        shown = {
            "key_hash": info.key_hash,
            "user_id": info.user_id,
            "created": info.created.isoformat(),
            "written": info.written.isoformat(),
            "expires_at": info.expires_at.isoformat(),
            "permanent": info.permanent,
            "data": info.data,
        }
        click.echo(json.dumps(shown, indent=2, default=_readable, ensure_ascii=False))


@main.command()
@click.argument("key_hash_or_id", required=False)
@click.option("--user", help="Revoke every session of this user (log out everywhere).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_store_options
def revoke(
    key_hash_or_id: str | None, user: str | None, yes: bool, store_url: str, key_prefix: str
) -> None:
    """End one session (KEY_HASH_OR_ID) or every session of a user (--user)."""
    if (key_hash_or_id is None) == (user is None):
        raise click.UsageError("give a KEY_HASH_OR_ID or --user USER (one of them)")
    with _opened(store_url) as store:
        manager = SessionManager(store, key_prefix=key_prefix)
        if user is not None:
            found = len(manager.sessions_of(user))
            if not yes:
                click.confirm(f"Revoke the {found} session(s) of user {user!r}?", abort=True)
            click.echo(f"Revoked {manager.revoke_user(user)} session(s) of user {user!r}.")
            return
        assert key_hash_or_id is not None  # noqa: S101 - checked above
        info = _find(manager, key_hash_or_id)
        if info is None:
            raise click.ClickException("no live session by that key hash or ID")
        if not yes:
            owner = "no user" if info.user_id is None else f"user {info.user_id!r}"
            click.confirm(f"Revoke session {info.key_hash} ({owner})?", abort=True)
        if not manager.revoke_by_hash(info.key_hash):
            raise click.ClickException("the session ended meanwhile")
        click.echo(f"Revoked session {info.key_hash}.")


if __name__ == "__main__":  # python -m wsgi_kvsession.cli
    main()
