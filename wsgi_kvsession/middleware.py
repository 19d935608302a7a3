"""The WSGI middleware: one session per request, persisted at the commit point.

The commit point is the moment the response headers are handed to the
server, which is the last moment a ``Set-Cookie`` can still be added. The
middleware holds the application's ``start_response`` call back until then:
until the application calls ``write()``, yields its first non-empty chunk, or
returns a finished body (a list). So

* a change the application makes after calling ``start_response`` but before
  its body starts is still saved;
* when the application calls ``start_response`` again with ``exc_info``
  (an error page replacing a 200), the final status decides, and a 5xx
  persists nothing by default (rule 12);
* a change after the first chunk cannot be saved and is logged as a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .cookies import Headers, finish_headers
from .options import Options, SessionOptions
from .session import Session
from .stores.base import Store

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: The ``environ`` key under which the middleware puts the request's session.
ENVIRON_KEY = "wsgi_kvsession.session"
#: The ``environ`` key of the middleware that made that session.
MIDDLEWARE_ENVIRON_KEY = "wsgi_kvsession.middleware"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
OptExcInfo = ExcInfo | tuple[None, None, None] | None
Write = Callable[[bytes], object]
StartResponse = Callable[..., Write]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def get_session(environ: dict[str, Any]) -> Session:
    """Return the session of the request described by ``environ``.

    Raises :class:`LookupError` when the request did not pass through
    :class:`KVSessionMiddleware`.
    """
    try:
        return environ[ENVIRON_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise LookupError(
            "no session in the WSGI environ: wrap the application in "
            "KVSessionMiddleware(app, store)"
        ) from None


class KVSessionMiddleware:
    """Server-side sessions for the WSGI application ``app``, kept in ``store``.

    All options are keyword-only and have safe defaults; they are listed in
    :class:`~wsgi_kvsession.options.SessionOptions`. Invalid values raise :class:`ValueError` or
    :class:`TypeError` here, naming the option and the fix.
    """

    def __init__(self, app: WSGIApp, store: Store, **options: Unpack[SessionOptions]) -> None:
        if not isinstance(store, Store):
            raise TypeError(
                f"store={store!r}: give a wsgi_kvsession store, e.g. "
                "store_from_url('sqlite:///sessions.db')"
            )
        self.app = app
        self.store = store
        self.options = Options.from_kwargs(**options)
        #: The options as given, for integrations that fill in the rest from
        #: their framework's settings (explicit options win there).
        self.option_kwargs: SessionOptions = options
        #: Set by an integration whose framework settings decide the options
        #: (Flask's ``app.config``): called once per request, before the
        #: session can be read, so it is read with the right cookie name and keys.
        self.options_provider: Callable[[], Options] | None = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        provider = self.options_provider
        options = provider() if provider is not None else self.options
        session = Session(self.store, options, environ)
        environ[ENVIRON_KEY] = session
        environ[MIDDLEWARE_ENVIRON_KEY] = self
        gate = _HeaderGate(session, start_response)
        app_iter = self.app(environ, gate.start_response)
        if type(app_iter) is list or type(app_iter) is tuple:
            # The body is complete, so the session can no longer change:
            # commit now and hand the body through untouched.
            started_by_write = gate.sent
            gate.send_headers()
            if started_by_write:  # the app called write(): it may have changed more since
                session._after_response()
            return app_iter
        file_wrapper = environ.get("wsgi.file_wrapper")
        if (
            isinstance(file_wrapper, type)
            and isinstance(app_iter, file_wrapper)
            and gate.status is not None
        ):
            # A file the server can send with sendfile() (PEP 3333's file
            # wrapper): reading a file cannot change the session, so commit now
            # and hand the server its own object, or it falls back to reading.
            gate.send_headers()
            return app_iter
        return _Body(app_iter, gate)


def _headers_not_sent(data: bytes) -> None:
    raise RuntimeError("write() before the response started")  # pragma: no cover


class _HeaderGate:
    """Holds the application's response start until the commit point."""

    __slots__ = (
        "_server_start_response",
        "_server_write",
        "exc_info",
        "headers",
        "sent",
        "session",
        "status",
    )

    def __init__(self, session: Session, server_start_response: StartResponse) -> None:
        self.session = session
        self._server_start_response = server_start_response
        self._server_write: Write = _headers_not_sent
        self.status: str | None = None
        self.headers: Headers = []
        self.exc_info: OptExcInfo = None
        self.sent = False

    def start_response(self, status: str, headers: Headers, exc_info: OptExcInfo = None) -> Write:
        if exc_info is not None and exc_info[0] is not None:
            if self.sent:
                # PEP 3333: too late to change the status; re-raise the error.
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        self.status = status
        self.headers = list(headers)
        self.exc_info = exc_info
        return self.write

    def send_headers(self) -> None:
        if self.sent:
            return
        if self.status is None:
            raise RuntimeError("the application did not call start_response()")
        self.sent = True
        try:
            code = int(self.status[:3])
        except ValueError:
            raise RuntimeError(f"invalid WSGI status {self.status!r}") from None
        set_cookie, vary = self.session._commit(code)
        headers = finish_headers(
            self.headers, self.session.options, set_cookie=set_cookie, vary=vary
        )
        self._server_write = self._server_start_response(self.status, headers, self.exc_info)
        self.exc_info = None  # PEP 3333: do not keep the traceback alive

    def write(self, data: bytes) -> None:
        self.send_headers()
        self._server_write(data)


class _Body:
    """The application's body iterable, committing before its first chunk."""

    __slots__ = ("_app_iter", "_gate", "_iterator")

    def __init__(self, app_iter: Iterable[bytes], gate: _HeaderGate) -> None:
        self._app_iter = app_iter
        self._iterator: Iterator[bytes] = iter(app_iter)
        self._gate = gate

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        gate = self._gate
        if gate.sent:
            return next(self._iterator)
        try:
            chunk = next(self._iterator)
        except StopIteration:
            gate.send_headers()
            raise
        if chunk or gate.status is not None:
            # An empty chunk before start_response() is passed on as it is;
            # after it, the server may write (even b""), so the headers go first.
            gate.send_headers()
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._app_iter, "close", None)
            if close is not None:
                close()
        finally:
            self._gate.session._after_response()
