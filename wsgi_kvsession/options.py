"""The middleware's options, checked once at construction.

Every invalid value or combination is refused here, with a message that names
the option and the fix, so that a misconfiguration fails at start-up rather
than on the first request (or, worse, silently in a browser that drops a
cookie it considers invalid).
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from .cookies import MAX_ATTRIBUTE_BYTES, MAX_SET_COOKIE_BYTES, attribute_value, largest_set_cookie
from .events import EventHook
from .ids import IdCodec
from .serializers import Serializer, TaggedJSONSerializer

Seconds = int | float | datetime.timedelta

DEFAULT_IDLE_TIMEOUT = datetime.timedelta(days=14)
DEFAULT_ABSOLUTE_TIMEOUT = datetime.timedelta(days=30)
#: The most a read-only request waits before it slides the idle deadline.
DEFAULT_MAX_TOUCH_INTERVAL = 60.0
if TYPE_CHECKING:
    from typing_extensions import Unpack


class SessionOptions(TypedDict, total=False):
    """The keyword options of :class:`~wsgi_kvsession.KVSessionMiddleware` (and
    of everything else that reads or writes sessions), all optional."""

    #: Name of the session cookie. ``__Host-`` and ``__Secure-`` prefixes are checked.
    cookie_name: str
    cookie_path: str
    cookie_domain: str | None
    #: Send the cookie over HTTPS only. Turn off only for local development.
    cookie_secure: bool
    cookie_httponly: bool
    #: ``"Lax"`` (default), ``"Strict"``, ``"None"`` (needs Secure) or None.
    cookie_samesite: str | None
    #: CHIPS partitioned cookie (needs Secure).
    cookie_partitioned: bool
    #: Inactivity after which a session ends (default 14 days).
    idle_timeout: Seconds | None
    #: Age after which a session ends however active (default 30 days).
    absolute_timeout: Seconds | None
    #: How far the idle deadline must move before a read-only request slides it.
    touch_interval: Seconds | None
    #: Signing key(s) for the cookie value: the first signs, all verify.
    secret_key: str | bytes | Sequence[str | bytes] | None
    #: Prefix of every store key; give apps that share a store distinct prefixes.
    key_prefix: str
    serializer: Serializer | None
    #: Random bits in a session ID (default 256, at least 128).
    id_bits: int
    #: Persist the session on 5xx responses too (default False).
    save_on_server_error: bool
    #: ``"raise"`` (default): a store failure is an error; ``"empty"``: log it
    #: and continue with an empty session that is not saved.
    on_store_error: Literal["raise", "empty"]
    #: When a read-only request of a permanent session re-sends its cookie (a
    #: changed session always does): ``"on_touch"`` (default) when its idle
    #: deadline slid, ``"every_request"`` always (Flask's
    #: ``SESSION_REFRESH_EACH_REQUEST``), ``"on_change"`` never.
    cookie_refresh: Literal["on_touch", "every_request", "on_change"]
    #: Whether a new session starts permanent (default False); the app can
    #: still set ``session.permanent`` either way.
    permanent_by_default: bool
    #: Called with a :class:`~wsgi_kvsession.events.SessionEventInfo` for every
    #: lifecycle event (created, regenerated, destroyed, expired, rejected...).
    on_event: EventHook | None


_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
#: A ``Domain`` attribute as Werkzeug writes it (IDNA already applied): a
#: host name or address, nothing that could end the attribute.
_DOMAIN_ATTRIBUTE = re.compile(r"[A-Za-z0-9._-]*")
#: Added to the timeout that bounds a permanent cookie's Max-Age: a record
#: written by a server whose clock runs ahead (up to ``session.MAX_CLOCK_SKEW``,
#: 300 s) lives that much longer; a day covers it.
_MAX_AGE_ALLOWANCE = 86400


def _seconds(name: str, value: Seconds | None, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name}={value!r}: give seconds (int or float) or a timedelta")
    if seconds < 0 or (seconds == 0 and not allow_zero) or seconds != seconds:
        raise ValueError(f"{name}={value!r}: must be greater than 0")
    return seconds


@dataclass(frozen=True)
class Options:
    """Validated settings shared by the middleware, sessions and admin tools.

    Build it with :meth:`from_kwargs`; the keyword names are those of
    :class:`~wsgi_kvsession.KVSessionMiddleware`.
    """

    cookie_name: str
    cookie_path: str
    cookie_domain: str | None
    cookie_secure: bool
    cookie_httponly: bool
    cookie_samesite: str | None
    cookie_partitioned: bool
    idle_timeout: float | None
    absolute_timeout: float | None
    touch_interval: float
    key_prefix: str
    serializer: Serializer
    ids: IdCodec
    save_on_server_error: bool
    on_store_error: Literal["raise", "empty"]
    cookie_refresh: Literal["on_touch", "every_request", "on_change"] = "on_touch"
    permanent_by_default: bool = False
    on_event: EventHook | None = None

    @classmethod
    def from_kwargs(cls, **options: Unpack[SessionOptions]) -> Options:
        """Check keyword options (see :class:`SessionOptions`) and build ``Options``."""
        unknown = sorted(set(options) - set(SessionOptions.__annotations__))
        if unknown:
            hints = [
                f"{name!r}"
                + "".join(
                    f" (did you mean {m!r}?)"
                    for m in difflib.get_close_matches(name, SessionOptions.__annotations__, 1)
                )
                for name in unknown
            ]
            raise TypeError(f"unknown session option(s): {', '.join(hints)}")
        cookie_name = options.get("cookie_name", "session")
        cookie_path = options.get("cookie_path", "/")
        cookie_domain = options.get("cookie_domain")
        cookie_secure = options.get("cookie_secure", True)
        cookie_httponly = options.get("cookie_httponly", True)
        cookie_samesite = options.get("cookie_samesite", "Lax")
        cookie_partitioned = options.get("cookie_partitioned", False)
        idle_timeout = options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT)
        absolute_timeout = options.get("absolute_timeout", DEFAULT_ABSOLUTE_TIMEOUT)
        touch_interval = options.get("touch_interval")
        key_prefix = options.get("key_prefix", "session:")
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix={key_prefix!r}: must be a str")
        serializer = options.get("serializer")
        on_store_error = options.get("on_store_error", "raise")
        if not cookie_name or any(c in cookie_name for c in ' ;,="\t\r\n()<>@:\\/[]?{}'):
            raise ValueError(f"cookie_name={cookie_name!r}: use a non-empty cookie token")
        if not cookie_path.startswith("/"):
            raise ValueError(f"cookie_path={cookie_path!r}: must start with '/'")
        samesite = None
        if cookie_samesite is not None:
            samesite = _SAMESITE.get(str(cookie_samesite).lower())
            if samesite is None:
                raise ValueError(
                    f"cookie_samesite={cookie_samesite!r}: use 'Lax', 'Strict', 'None' or None"
                )
            if samesite == "None" and not cookie_secure:
                raise ValueError(
                    "cookie_samesite='None' needs cookie_secure=True: browsers reject "
                    "SameSite=None cookies without Secure"
                )
        if cookie_partitioned and not cookie_secure:
            raise ValueError("cookie_partitioned=True needs cookie_secure=True (CHIPS)")
        if cookie_name.startswith("__Host-") and (
            not cookie_secure or cookie_domain is not None or cookie_path != "/"
        ):
            raise ValueError(
                f"cookie_name={cookie_name!r}: a __Host- cookie needs cookie_secure=True, "
                "cookie_domain=None and cookie_path='/'"
            )
        if cookie_name.startswith("__Secure-") and not cookie_secure:
            raise ValueError(
                f"cookie_name={cookie_name!r}: a __Secure- cookie needs cookie_secure=True"
            )
        idle = _seconds("idle_timeout", idle_timeout)
        absolute = _seconds("absolute_timeout", absolute_timeout)
        if idle is None and absolute is None:
            raise ValueError(
                "idle_timeout and absolute_timeout are both None: sessions would never "
                "expire; set at least one of them"
            )
        touch = _seconds("touch_interval", touch_interval, allow_zero=True)
        if touch is None:
            touch = min(DEFAULT_MAX_TOUCH_INTERVAL, idle / 4) if idle else 0.0
        elif idle is not None and touch >= idle:
            raise ValueError(
                f"touch_interval={touch_interval!r} must be shorter than "
                f"idle_timeout={idle_timeout!r}, or sessions expire between touches"
            )
        if on_store_error not in ("raise", "empty"):
            raise ValueError(f"on_store_error={on_store_error!r}: use 'raise' or 'empty'")
        on_event = options.get("on_event")
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event={on_event!r}: give a callable taking a SessionEventInfo")
        cookie_refresh = options.get("cookie_refresh", "on_touch")
        if cookie_refresh not in ("on_touch", "every_request", "on_change"):
            raise ValueError(
                f"cookie_refresh={cookie_refresh!r}: use 'on_touch', 'every_request' or 'on_change'"
            )
        if cookie_domain is not None and not isinstance(cookie_domain, str):
            raise TypeError(f"cookie_domain={cookie_domain!r}: give a str or None")
        built = cls(
            cookie_name=cookie_name,
            cookie_path=cookie_path,
            cookie_domain=cookie_domain,
            cookie_secure=bool(cookie_secure),
            cookie_httponly=bool(cookie_httponly),
            cookie_samesite=samesite,
            cookie_partitioned=bool(cookie_partitioned),
            idle_timeout=idle,
            absolute_timeout=absolute,
            touch_interval=touch,
            key_prefix=key_prefix,
            serializer=serializer if serializer is not None else TaggedJSONSerializer(),
            ids=IdCodec(options.get("id_bits", 256), options.get("secret_key")),
            save_on_server_error=bool(options.get("save_on_server_error", False)),
            on_store_error=on_store_error,
            cookie_refresh=cookie_refresh,
            permanent_by_default=bool(options.get("permanent_by_default", False)),
            on_event=on_event,
        )
        _check_cookie_size(built)
        return built

    def expires_at(self, created: float, now: float) -> float:
        """The deadline of a session created at ``created`` and active at ``now``."""
        deadlines = []
        if self.idle_timeout is not None:
            deadlines.append(now + self.idle_timeout)
        if self.absolute_timeout is not None:
            deadlines.append(created + self.absolute_timeout)
        return min(deadlines)


def _check_cookie_size(options: Options) -> None:
    """Refuse options whose session cookie a browser would drop or rescope.

    ASVS 5 3.3.5 (checklist item S16): the largest ``Set-Cookie`` the options
    can produce (the longest cookie value with every attribute, and a
    permanent cookie's ``Max-Age`` and ``Expires``) must fit in
    :data:`~wsgi_kvsession.cookies.MAX_SET_COOKIE_BYTES`, and ``Domain`` and
    ``Path`` in the 1024 bytes browsers read of an attribute. Checked once
    here, so that no response needs to measure its header.
    """
    encoded = {"cookie_name": options.cookie_name}
    attributes: tuple[tuple[str, Literal["Domain", "Path"], str | None], ...] = (
        ("cookie_domain", "Domain", options.cookie_domain),
        ("cookie_path", "Path", options.cookie_path),
    )
    for name, attribute, value in attributes:
        if value is None:
            continue
        try:
            written: str | None = attribute_value(attribute, value)
        except UnicodeError:
            written = None  # IDNA refused it: a label empty or over 63 characters
        if written is None or (attribute == "Domain" and not _DOMAIN_ATTRIBUTE.fullmatch(written)):
            kind = "domain name" if attribute == "Domain" else "path"
            raise ValueError(f"{name}={value!r}: not a {kind} a cookie can carry")
        if len(written) > MAX_ATTRIBUTE_BYTES:
            raise ValueError(
                f"{name}: {len(written)} bytes in the Set-Cookie header; browsers ignore a "
                f"{attribute} attribute over {MAX_ATTRIBUTE_BYTES} bytes (the cookie would "
                f"then apply elsewhere): use a shorter {name}"
            )
        encoded[name] = written
    max_age, timeout = _longest_max_age(options)
    try:
        header = largest_set_cookie(options, max_age)
    except (ValueError, OverflowError):  # the Expires date is after the year 9999
        raise ValueError(
            f"{timeout}={getattr(options, timeout)!r}: a permanent session's cookie would "
            "expire after the year 9999, which a cookie cannot say; use a shorter "
            f"{timeout} (browsers keep a cookie 400 days at most anyway)"
        ) from None
    # Every character of the header is Latin-1 (Werkzeug encodes the rest), so
    # its length is its size in bytes.
    if len(header) > MAX_SET_COOKIE_BYTES:
        parts = ", ".join(
            f"{name} ({len(value)} bytes)"
            for name, value in sorted(encoded.items(), key=lambda item: -len(item[1]))
            if len(value) > 1  # not the default path "/"
        )
        raise ValueError(
            f"the session's Set-Cookie header could be {len(header)} bytes, over the "
            f"{MAX_SET_COOKIE_BYTES} browsers accept (ASVS 5 3.3.5): shorten {parts}"
        )


def _longest_max_age(options: Options) -> tuple[int, str]:
    """The longest ``Max-Age`` a permanent cookie can get, and the timeout that
    sets it (the shorter one: a session ends at the earlier deadline)."""
    timeouts = [
        (seconds, name)
        for seconds, name in (
            (options.idle_timeout, "idle_timeout"),
            (options.absolute_timeout, "absolute_timeout"),
        )
        if seconds is not None
    ]
    seconds, name = min(timeouts)  # from_kwargs refuses both None
    try:
        return int(seconds) + _MAX_AGE_ALLOWANCE, name
    except OverflowError:  # float("inf")
        raise ValueError(f"{name}={seconds!r}: give a finite number of seconds") from None
