"""The views of the Django integration tests and their URLs.

``/set?k=v&...`` sets keys, ``/get?k=key`` returns ``repr`` of one value,
``/dump`` the ``repr`` of the whole session, ``/nothing`` never touches it,
``/cart`` and ``/append?item=x`` mutate a list in place (no setter runs),
``/same?k=key`` assigns a key its own value, ``/expiry?value=...`` calls
``set_expiry`` (``0``, seconds, ``none``, ``in:<seconds>`` for a datetime that
many seconds ahead), ``/login?user=&password=`` and ``/logout`` use
``django.contrib.auth``, ``/whoami`` names the user, ``/cycle`` and ``/flush``
call what they say, ``/key`` returns ``session_key``, ``/save-key`` saves a new
session to learn its key, ``/vanish`` deletes the session's record behind its
back (another request logging out) and then changes it, ``/own-cookie`` sets
a cookie under the session cookie's name, ``/boom`` changes the session and
fails, ``/stream`` streams a body that mutates the session in place while it
is sent (too late to be saved).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from wsgi_kvsession.ids import store_key
from wsgi_kvsession.integrations.django import get_options, get_store


class Boom(Exception):
    pass


def set_values(request: HttpRequest) -> HttpResponse:
    for key, value in request.GET.items():
        request.session[key] = value
    return HttpResponse("set")


def get_value(request: HttpRequest) -> HttpResponse:
    return HttpResponse(repr(request.session.get(request.GET["k"])))


def dump(request: HttpRequest) -> HttpResponse:
    return HttpResponse(repr(sorted(request.session.items())))


def nothing(request: HttpRequest) -> HttpResponse:
    return HttpResponse("nothing")


def cart(request: HttpRequest) -> HttpResponse:
    request.session["cart"] = []
    return HttpResponse("cart")


def append(request: HttpRequest) -> HttpResponse:
    request.session["cart"].append(request.GET.get("item", "x"))
    return HttpResponse("appended")


def same(request: HttpRequest) -> HttpResponse:
    key = request.GET["k"]
    request.session[key] = request.session[key]
    return HttpResponse("same")


def expiry(request: HttpRequest) -> HttpResponse:
    value = request.GET["value"]
    if value == "none":
        request.session.set_expiry(None)
    elif value.startswith("in:"):
        seconds = int(value[3:])
        request.session.set_expiry(timezone.now() + datetime.timedelta(seconds=seconds))
    else:
        request.session.set_expiry(int(value))
    request.session["expiry"] = value
    return HttpResponse(str(request.session.get_expiry_age()))


def login_view(request: HttpRequest) -> HttpResponse:
    user = authenticate(
        request, username=request.GET["user"], password=request.GET.get("password", "")
    )
    if user is None:
        return HttpResponse("bad credentials", status=403)
    login(request, user)
    return HttpResponse("logged in")


def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("logged out")


def whoami(request: HttpRequest) -> HttpResponse:
    user = request.user
    return HttpResponse(user.get_username() if user.is_authenticated else "anonymous")


def cycle(request: HttpRequest) -> HttpResponse:
    request.session.cycle_key()
    return HttpResponse("cycled")


def flush(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("flushed")


def key(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.session.session_key or "")


def save_key(request: HttpRequest) -> HttpResponse:
    # A common pattern: make sure an anonymous visitor has a session key.
    request.session["visitor"] = True
    if not request.session.session_key:
        request.session.save()
    return HttpResponse(request.session.session_key or "")


def vanish(request: HttpRequest) -> HttpResponse:
    options = get_options()
    request.session.get("a")  # loaded first: the deletion happens meanwhile
    session_key = request.session.session_key
    assert session_key, "the test must send a session cookie"
    session_id = options.ids.decode(session_key)
    assert session_id is not None
    get_store().delete(store_key(options.key_prefix, session_id))
    request.session["after"] = "vanished"
    return HttpResponse("vanished")


def own_cookie(request: HttpRequest) -> HttpResponse:
    # A view that sets a cookie under the session cookie's name itself.
    request.session["a"] = request.GET.get("a", "1")
    response = HttpResponse("own cookie")
    response.set_cookie(request.GET.get("name", "sessionid"), "set-by-the-view")
    return response


def boom(request: HttpRequest) -> HttpResponse:
    request.session["boom"] = "should not be saved"
    raise Boom("boom")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    request.session["cart"] = ["before"]

    def body() -> Iterator[bytes]:
        yield b"streamed"
        # In place, so no setter sees it: only the response's closer can.
        request.session["cart"].append("after the commit")

    return StreamingHttpResponse(body())


urlpatterns = [
    path("set", set_values),
    path("get", get_value),
    path("dump", dump),
    path("nothing", nothing),
    path("cart", cart),
    path("append", append),
    path("same", same),
    path("expiry", expiry),
    path("login", login_view),
    path("logout", logout_view),
    path("whoami", whoami),
    path("cycle", cycle),
    path("flush", flush),
    path("key", key),
    path("save-key", save_key),
    path("vanish", vanish),
    path("own-cookie", own_cookie),
    path("boom", boom),
    path("stream", stream),
]
