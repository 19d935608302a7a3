"""Session IDs: generation, the cookie value format, signing and store keys.

An ID is ``secrets.token_urlsafe(id_bits // 8)``: URL-safe base64 without
padding. The cookie carries the ID, or ``ID.signature`` when a secret key is
configured. Nothing from the cookie reaches a store before it has passed
:meth:`IdCodec.decode`, and the store only ever sees ``key_prefix +
sha256(ID)``, so a dump of the store yields no usable cookie (DESIGN.md rule 4)
and a crafted cookie cannot name a file or a memcached key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence

from itsdangerous import BadSignature, Signer

from . import events

#: Accepted ID shape: the base64url alphabet, from 128 bits (22 characters) to
#: 768 bits (128 characters). Checked before any store call (rule 2).
_ID_FORMAT = re.compile(r"[A-Za-z0-9_-]{22,128}")
_SIGNING_SALT = "wsgi_kvsession.cookie"
MIN_SECRET_KEY_BYTES = 16


def store_key(key_prefix: str, session_id: str) -> str:
    """Return the key under which a store keeps the session ``session_id``."""
    return key_prefix + hashlib.sha256(session_id.encode("ascii")).hexdigest()


class IdCodec:
    """Makes new IDs and turns them into cookie values and back."""

    def __init__(
        self, id_bits: int = 256, secret_key: str | bytes | Sequence[str | bytes] | None = None
    ) -> None:
        if not isinstance(id_bits, int) or id_bits < 128 or id_bits % 8 or id_bits > 768:
            raise ValueError(
                f"id_bits={id_bits!r}: session IDs need at least 128 random bits "
                "(OWASP/ASVS 5); use a multiple of 8 between 128 and 768, e.g. 256"
            )
        self.id_bytes = id_bits // 8
        self._signer: Signer | None = None
        self._log_key = events.log_key(None)
        if secret_key is not None:
            keys = [secret_key] if isinstance(secret_key, (str, bytes)) else list(secret_key)
            if not keys:
                raise ValueError("secret_key=[]: give at least one key, or None to not sign")
            for key in keys:
                if not isinstance(key, (str, bytes)) or len(key) < MIN_SECRET_KEY_BYTES:
                    raise ValueError(
                        f"secret_key: each key must be a str or bytes of at least "
                        f"{MIN_SECRET_KEY_BYTES} characters; make one with "
                        "python -c 'import secrets; print(secrets.token_hex(32))'"
                    )
            first = keys[0]
            self._log_key = events.log_key(first.encode() if isinstance(first, str) else first)
            # itsdangerous signs with the *last* key; ours signs with the first.
            self._signer = Signer(
                [k.encode() if isinstance(k, str) else k for k in reversed(keys)],
                salt=_SIGNING_SALT,
            )
            # itsdangerous ignores characters outside base64 and extra padding
            # in a signature; only its canonical form passes rule 2's check.
            length = len(self._signer.get_signature("x"))
            self._signature_format = re.compile(f"[A-Za-z0-9_-]{{{length}}}")

    def log_hash(self, session_id: str) -> str:
        """The keyed short hash that stands for ``session_id`` in logs and event
        hooks (see :mod:`wsgi_kvsession.events`)."""
        return events.session_hash(self._log_key, session_id)

    @property
    def signing(self) -> bool:
        return self._signer is not None

    def new_id(self) -> str:
        return secrets.token_urlsafe(self.id_bytes)

    def encode(self, session_id: str) -> str:
        """The cookie value for ``session_id``."""
        if self._signer is None:
            return session_id
        return self._signer.sign(session_id).decode("ascii")

    def signed_with_current_key(self, cookie_value: str, session_id: str) -> bool:
        """Whether ``cookie_value`` (which :meth:`decode` accepted) is what
        :meth:`encode` gives now, i.e. not signed with an older key: a cookie
        signed with a fallback key must be sent again, newly signed, before
        that key is retired."""
        return self._signer is None or self.encode(session_id) == cookie_value

    def decode(self, cookie_value: str) -> str | None:
        """The ID in a cookie value, or ``None`` when the value is malformed.

        Checks the length and alphabet, and the signature when signing is on;
        a valid signature by any of the configured keys is accepted.
        """
        if self._signer is None:
            return cookie_value if _ID_FORMAT.fullmatch(cookie_value) else None
        session_id, sep, signature = cookie_value.partition(".")
        if (
            not sep
            or not _ID_FORMAT.fullmatch(session_id)
            or not self._signature_format.fullmatch(signature)
        ):
            return None
        try:
            self._signer.unsign(cookie_value)
        except (BadSignature, UnicodeEncodeError):
            return None
        return session_id
