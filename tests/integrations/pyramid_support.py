"""Helpers of the Pyramid integration tests: a standard Pyramid app, the two
ways it gets its sessions, and WebTest replies.

The ``backend`` fixture (memory and Redis, counted) is the Flask tests' one,
from ``conftest.py`` next to this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import webtest  # type: ignore[import-untyped]
from pyramid.config import Configurator
from pyramid.csrf import LegacySessionCSRFStoragePolicy
from pyramid.events import NewRequest, NewResponse
from pyramid.httpexceptions import HTTPFound
from pyramid.request import Request
from pyramid.response import Response
from pyramid.router import Router

from wsgi_kvsession import KVSessionMiddleware
from wsgi_kvsession.integrations.pyramid import KVSession, KVSessionFactory
from wsgi_kvsession.middleware import ENVIRON_KEY

from .flask_support import Backend, Reply, SetCookie, parse_set_cookie

__all__ = [
    "CSRF_POLICIES",
    "MODES",
    "SECRET",
    "Backend",
    "Crash",
    "Reply",
    "Retry",
    "SetCookie",
    "add_views",
    "make_app",
    "make_config",
    "parse_set_cookie",
    "paste_app",
    "reply",
    "retry_policy",
    "session_cookie",
]

#: A signing key long enough to be used (16 characters or more).
SECRET = "pyramid-integration-secret-0123456789"

#: How the app gets its sessions: a KVSessionMiddleware around the app with
#: ``includeme`` (no settings), or ``KVSessionFactory(store)`` with no middleware.
MODES = ["middleware", "factory"]


class Boom(Exception):
    """What ``/boom`` raises; an exception view answers it with a 500."""


class Crash(Exception):
    """What ``/crash`` raises; no exception view answers it."""


class Retry(Exception):
    """A retryable error (pyramid_retry's ``RetryableException``): what
    ``/retry`` raises on the first attempt."""


class AnsweredRetry(Retry):
    """A retryable error an exception view answers (``/retry?answered=503``)."""


def retry_policy(attempts: int) -> Callable[[dict[str, Any], Router], Any]:
    """An execution policy that does what pyramid_retry's
    ``RetryableExecutionPolicy`` does (pyramid_retry is not installed here):
    each attempt is a new ``Request`` on the same ``environ``, numbered in
    ``environ["retry.attempt"]``; a :class:`Retry` raised, or answered by an
    exception view (``request.exception``), starts the next attempt and
    discards the response, except on the last attempt."""

    def policy(environ: dict[str, Any], router: Router) -> Any:
        for number in range(attempts):
            last = number + 1 == attempts
            environ["retry.attempt"] = number
            environ["retry.attempts"] = attempts
            context = router.request_context(environ)
            request = context.begin()
            try:
                response = router.invoke_request(request)
                if isinstance(getattr(request, "exception", None), Retry) and not last:
                    continue
                return response
            except Retry:
                if last:
                    raise
            finally:
                context.end()
                del environ["retry.attempt"], environ["retry.attempts"]
        raise AssertionError("every attempt ended in a retry")  # pragma: no cover

    return policy


def _session(request: Request) -> KVSession:
    session = request.session
    assert isinstance(session, KVSession)
    return session


def add_views(config: Configurator) -> None:
    """The views most tests use; all answer text.

    GET: ``/set?k=v&...`` sets keys, ``/get?k=key`` the ``repr`` of one value,
    ``/dump`` of the sorted items, ``/nothing`` never touches the session,
    ``/info`` JSON of ``new``, ``created`` and ``id``, ``/owner`` JSON of whether
    the session is the one in ``environ`` and how many response callbacks wait,
    ``/flash?msg=&queue=&dup=0``,
    ``/peek?queue=`` and ``/pop?queue=`` the flash API (JSON lists),
    ``/token`` the CSRF token (``get_csrf_token``), ``/rotate`` a new one,
    ``/cart`` a list ``cart``, ``/append?item=x`` appends to it in place,
    ``/append-changed`` the same and calls ``changed()``, ``/changed`` only calls
    ``changed()``, ``/permanent`` makes the session permanent, ``/boom`` changes
    it and raises (an exception view answers 500), ``/redirect`` sets ``r`` and
    raises HTTPFound, ``/crash`` sets ``crash`` and raises :class:`Crash`, which
    no exception view answers. ``/retry`` (under :func:`retry_policy`) sets
    ``charged`` and raises :class:`Retry` on the first attempt, and sets
    ``attempt`` and answers the sorted items on the next; with
    ``?answered=503`` the first attempt's error is answered by an exception
    view with that status.

    POST (CSRF-checked when the config requires it): ``/submit`` stores the
    field ``v``, ``/login`` stores ``user`` (field ``user``), sets ``user_id`` and
    regenerates, ``/logout`` invalidates, ``/logout-and-flash`` invalidates and
    then flashes "logged out".

    Any request with ``?late=x`` sets ``late`` to ``"late:x"`` in a
    ``NewResponse`` subscriber, after the response callbacks ran; with
    ``?late_item=y`` the subscriber appends ``y`` to ``cart`` in place, with
    ``?late_read=k`` it reads ``k``. With ``?finished=x`` a finished callback
    sets ``finished`` to ``"finished:x"``.
    """

    def route(name: str, path: str, view: Callable[[Request], Any], **kwargs: Any) -> None:
        config.add_route(name, path)
        config.add_view(view, route_name=name, renderer="string", **kwargs)

    def set_values(request: Request) -> str:
        for key, value in request.GET.items():
            _session(request)[key] = value
        return "set"

    def get_value(request: Request) -> str:
        return repr(_session(request).get(request.GET["k"]))

    def dump(request: Request) -> str:
        return repr(sorted(_session(request).items()))

    def nothing(request: Request) -> str:
        return "nothing"

    def info(request: Request) -> str:
        session = _session(request)
        return json.dumps({"new": session.new, "created": session.created, "id": session.id})

    def owner(request: Request) -> str:
        session = _session(request)
        return json.dumps(
            {
                "same": session.raw is request.environ.get(ENVIRON_KEY),
                "callbacks": len(request.response_callbacks or ()),
            }
        )

    def flash(request: Request) -> str:
        _session(request).flash(
            request.GET["msg"],
            queue=request.GET.get("queue", ""),
            allow_duplicate=request.GET.get("dup", "1") == "1",
        )
        return "flashed"

    def peek(request: Request) -> str:
        return json.dumps(_session(request).peek_flash(request.GET.get("queue", "")))

    def pop(request: Request) -> str:
        return json.dumps(_session(request).pop_flash(request.GET.get("queue", "")))

    def token(request: Request) -> str:
        return str(_session(request).get_csrf_token())

    def rotate(request: Request) -> str:
        return str(_session(request).new_csrf_token())

    def cart(request: Request) -> str:
        _session(request)["cart"] = []
        return "cart"

    def append(request: Request) -> str:
        _session(request)["cart"].append(request.GET.get("item", "x"))
        return "appended"

    def append_changed(request: Request) -> str:
        session = _session(request)
        session["cart"].append(request.GET.get("item", "x"))
        session.changed()
        return "appended"

    def changed(request: Request) -> str:
        _session(request).changed()
        return "changed"

    def permanent(request: Request) -> str:
        session = _session(request)
        session.permanent = True
        session["p"] = "1"
        return "permanent"

    def boom(request: Request) -> str:
        _session(request)["boom"] = "must not be saved"
        raise Boom("boom")

    def redirect(request: Request) -> str:
        _session(request)["r"] = "1"
        raise HTTPFound(location="/dump")

    def crash(request: Request) -> str:
        _session(request)["crash"] = "must not be saved"
        raise Crash("crash")

    def retry(request: Request) -> str:
        session = _session(request)
        attempt = request.environ["retry.attempt"]
        if attempt == 0:
            session["charged"] = "yes"  # undone in the database by the retry
            if "answered" in request.GET:
                raise AnsweredRetry("conflict")
            raise Retry("conflict")
        session["attempt"] = str(attempt)
        return repr(sorted(session.items()))

    def submit(request: Request) -> str:
        _session(request)["v"] = request.POST.get("v", "")
        return "submitted"

    def login(request: Request) -> str:
        session = _session(request)
        session.regenerate()
        session["user"] = request.POST["user"]
        session.user_id = request.POST["user"]
        return "logged in"

    def logout(request: Request) -> str:
        _session(request).invalidate()
        return "logged out"

    def logout_and_flash(request: Request) -> str:
        session = _session(request)
        session.invalidate()
        session.flash("logged out")
        return "logged out"

    def whoami(request: Request) -> str:
        return str(_session(request).get("user", "anonymous"))

    for name, view in [
        ("set", set_values),
        ("get", get_value),
        ("dump", dump),
        ("nothing", nothing),
        ("info", info),
        ("owner", owner),
        ("flash", flash),
        ("peek", peek),
        ("pop", pop),
        ("token", token),
        ("rotate", rotate),
        ("cart", cart),
        ("append", append),
        ("append-changed", append_changed),
        ("changed", changed),
        ("permanent", permanent),
        ("boom", boom),
        ("redirect", redirect),
        ("crash", crash),
        ("retry", retry),
        ("whoami", whoami),
    ]:
        route(name, "/" + name, view, request_method="GET")
    for name, view in [
        ("submit", submit),
        ("login", login),
        ("logout", logout),
        ("logout-and-flash", logout_and_flash),
    ]:
        route(name, "/" + name, view, request_method="POST")

    def late_change(event: NewResponse) -> None:
        # After the response callbacks: the middleware saves this, the
        # factory's own commit has already happened.
        late = event.request.GET.get("late")
        if late is not None:
            _session(event.request)["late"] = "late:" + late
        late_item = event.request.GET.get("late_item")
        if late_item is not None:
            _session(event.request)["cart"].append(late_item)  # no setter sees this
        late_read = event.request.GET.get("late_read")
        if late_read is not None:
            _session(event.request).get(late_read)

    config.add_subscriber(late_change, NewResponse)

    def finished_change(event: NewRequest) -> None:
        finished = event.request.GET.get("finished")
        if finished is not None:

            def change(request: Request) -> None:
                _session(request)["finished"] = "finished:" + finished

            event.request.add_finished_callback(change)

    config.add_subscriber(finished_change, NewRequest)

    def error_view(exc: Exception, request: Request) -> Response:
        return Response(f"error: {exc}", status=500)

    config.add_view(error_view, context=Boom)

    def answered_retry_view(exc: Exception, request: Request) -> Response:
        return Response(f"retry: {exc}", status=int(request.GET["answered"]))

    config.add_view(answered_retry_view, context=AnsweredRetry)


def make_config(settings: dict[str, Any] | None = None, *, csrf: bool = False) -> Configurator:
    """A Configurator with the standard views (and required CSRF checks)."""
    config = Configurator(settings=settings or {})
    if csrf:
        config.set_default_csrf_options(require_csrf=True)
    add_views(config)
    return config


#: The CSRF storage policies: ``includeme``'s and Pyramid's default one.
CSRF_POLICIES = ["kvsession", "legacy"]


def make_app(
    backend: Backend,
    mode: str,
    *,
    csrf: bool = False,
    csrf_policy: str = "kvsession",
    attempts: int | None = None,
    **options: Any,
) -> Any:
    """The standard Pyramid app with sessions from ``backend`` in one of the
    :data:`MODES`, set up with ``includeme``; ``options`` are session options
    (``cookie_secure`` False, as WebTest talks plain http). ``csrf_policy``
    ``"legacy"`` puts Pyramid's default CSRF storage policy back; ``attempts``
    sets :func:`retry_policy` as the execution policy."""
    options = backend.options(**{"cookie_secure": False, **options})
    config = make_config(csrf=csrf)
    config.include("wsgi_kvsession.integrations.pyramid")
    if csrf_policy == "legacy":
        config.set_csrf_storage_policy(LegacySessionCSRFStoragePolicy())
    if attempts is not None:
        config.set_execution_policy(retry_policy(attempts))
    if mode == "middleware":
        return KVSessionMiddleware(config.make_wsgi_app(), backend.store, **options)
    if mode == "factory":
        # The app's own factory wins over the one includeme set.
        config.set_session_factory(KVSessionFactory(backend.store, **options))
        return config.make_wsgi_app()
    raise AssertionError(mode)  # pragma: no cover - a typo in a test


def paste_app(global_config: dict[str, Any], **settings: Any) -> Any:
    """A PasteDeploy app factory (``use = call:...``) for the standard app,
    with ``includeme`` and whatever settings its section gives."""
    config = make_config(settings, csrf=settings.get("csrf") == "true")
    config.include("wsgi_kvsession.integrations.pyramid")
    return config.make_wsgi_app()


def reply(response: Any) -> Reply:
    """A WebTest response as a :class:`Reply`."""
    return Reply(response.status_int, response.text, list(response.headerlist))


def session_cookie(client: webtest.TestApp, name: str = "session") -> str | None:
    """The value of cookie ``name`` in ``client``'s jar."""
    value = client.cookies.get(name)
    return None if value is None else str(value)
