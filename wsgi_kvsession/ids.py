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
import hmac
import re
import secrets
from collections.abc import Sequence

from itsdangerous import Signer
from itsdangerous.encoding import want_bytes
from itsdangerous.signer import HMACAlgorithm

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
        #: One signer per key, the current (signing) key first.
        self._signers: tuple[Signer, ...] = ()
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
            self._signers = tuple(
                _KeyedSigner(k.encode() if isinstance(k, str) else k) for k in keys
            )
            # itsdangerous ignores characters outside base64 and extra padding
            # in a signature; only its canonical form passes rule 2's check.
            length = len(self._signers[0].get_signature("x"))
            self._signature_format = re.compile(f"[A-Za-z0-9_-]{{{length}}}")

    def log_hash(self, session_id: str) -> str:
        """The keyed short hash that stands for ``session_id`` in logs and event
        hooks (see :mod:`wsgi_kvsession.events`)."""
        return events.session_hash(self._log_key, session_id)

    @property
    def signing(self) -> bool:
        return bool(self._signers)

    def new_id(self) -> str:
        return secrets.token_urlsafe(self.id_bytes)

    def encode(self, session_id: str) -> str:
        """The cookie value for ``session_id``."""
        if not self._signers:
            return session_id
        return self._signers[0].sign(session_id).decode("ascii")

    def signed_with_current_key(self, cookie_value: str, session_id: str) -> bool:
        """Whether ``cookie_value`` (which :meth:`decode` accepted) is what
        :meth:`encode` gives now, i.e. not signed with an older key: a cookie
        signed with a fallback key must be sent again, newly signed, before
        that key is retired."""
        return not self._signers or self.encode(session_id) == cookie_value

    def decode(self, cookie_value: str) -> str | None:
        """The ID in a cookie value, or ``None`` when the value is malformed.

        Checks the length and alphabet, and the signature when signing is on;
        a valid signature by any of the configured keys is accepted.
        """
        return self.decode_cookie(cookie_value)[0]

    def decode_cookie(self, cookie_value: str) -> tuple[str | None, bool]:
        """:meth:`decode`, and whether the value is signed with the current key
        (the answer of :meth:`signed_with_current_key`, found on the way)."""
        if not self._signers:
            return (cookie_value if _ID_FORMAT.fullmatch(cookie_value) else None), True
        session_id, sep, signature = cookie_value.partition(".")
        if (
            not sep
            or not _ID_FORMAT.fullmatch(session_id)
            or not self._signature_format.fullmatch(signature)
        ):
            return None, False
        for index, signer in enumerate(self._signers):
            try:
                if signer.verify_signature(session_id, signature):
                    return session_id, index == 0
            except UnicodeEncodeError:  # pragma: no cover - the format check rules it out
                break
        return None, False


class _OneShotHMAC(HMACAlgorithm):
    """itsdangerous's HMAC-SHA1 signatures, computed with :func:`hmac.digest`
    (OpenSSL in one call) instead of an :class:`hmac.HMAC` object built in
    Python: the same bytes, at a fraction of the cost on every request."""

    def __init__(self) -> None:
        super().__init__(hashlib.sha1)

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, "sha1")


class _KeyedSigner(Signer):
    """An itsdangerous :class:`~itsdangerous.Signer` of one key whose derived
    key is computed once, not on every signature: the cookie of every request
    is verified, and the derivation is a hash of its own."""

    def __init__(self, secret_key: bytes) -> None:
        super().__init__(
            secret_key, salt=_SIGNING_SALT, digest_method=hashlib.sha1, algorithm=_OneShotHMAC()
        )
        self._derived = super().derive_key()

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        if secret_key is None or want_bytes(secret_key) == self.secret_keys[-1]:
            return self._derived
        return super().derive_key(secret_key)
