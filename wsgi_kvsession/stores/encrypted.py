"""Encryption at rest: a store wrapper that encrypts every record's value.

:class:`EncryptedStore` wraps any other store and encrypts the value of each
insert and update with AES-256-GCM, and decrypts it on every read. Everything
else (the key, expiry, version, touch, delete, the per-user index, cleanup)
goes to the wrapped store unchanged, so its atomic insert-if-absent and
compare-and-set keep their meaning: the version of a record is the wrapped
store's, and a touch moves the expiry without rewriting (or re-encrypting) the
value.

Stored value layout::

    b"\\xe1"      format byte (never the first byte of a plaintext envelope)
    key id       4 bytes: HMAC-SHA256(key, label)[:4], says which key encrypted it
    nonce        12 random bytes, fresh for every write
    ciphertext   the value encrypted, followed by GCM's 16-byte tag

The associated data of the encryption is the format byte, the key id and the
store key, so a value copied under another store key, or with its header
changed, fails authentication like any other tampering. A key id rather than
a position in ``keys`` names the key, so the list can be reordered, and the
wrong key is never tried.

A value that does not decrypt (tampered with, encrypted with a key no longer
in ``keys``, or written in clear before encryption was turned on) reads as no
record at all: the session layer then starts a new session, exactly as for an
unknown ID. It is logged at WARNING once per store key (never with its value),
not at every request of a client that still holds the old cookie.

The session layer compares the *decrypted* bytes to decide whether a request
changed its session, so a fresh nonce on every write never turns a read into a
write.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
from base64 import urlsafe_b64decode
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .base import Record, Store, Version, insert_with_user, update_with_user

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "EncryptedStore needs cryptography: pip install 'wsgi-kvsession[encryption]'"
    ) from exc

__all__ = ["EncryptedStore"]

log = logging.getLogger(__name__)

#: A key: 32 raw bytes, or their urlsafe base64 text (44 characters with its ``=``).
Key = bytes | str

_FORMAT = b"\xe1"
_KEY_ID_SIZE = 4
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER_SIZE = len(_FORMAT) + _KEY_ID_SIZE
#: Bytes an encrypted value takes beyond its plaintext.
OVERHEAD = _HEADER_SIZE + _NONCE_SIZE + _TAG_SIZE
_KEY_ID_LABEL = b"wsgi_kvsession EncryptedStore key id"
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")
_MAKE_A_KEY = (
    'python -c "import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
)
#: How many store keys whose value did not decrypt are remembered, so that each
#: is logged at WARNING once (and at DEBUG after that).
_WARNED_KEYS = 1024

# Why a value read as absent (the end of a log message).
_NOT_OURS = "is not encrypted (written before encryption was turned on, or by something else)"
_UNKNOWN_KEY = "was encrypted with a key that is not in keys"
_FORGED = "does not authenticate (tampered with, or copied from another store key)"


@dataclass(frozen=True)
class _Cipher:
    key_id: bytes
    aead: AESGCM


def _cipher(raw: bytes) -> _Cipher:
    key_id = hmac.digest(raw, _KEY_ID_LABEL, "sha256")[:_KEY_ID_SIZE]
    return _Cipher(key_id, AESGCM(raw))


def _parse_key(key: object, name: str = "key") -> bytes:
    """The 32 bytes of an AES-256 key given as raw bytes or urlsafe base64 text.

    Text may come with or without its ``=`` and with surrounding whitespace (a
    key read from a file). Anything else raises :class:`ValueError` (or
    :class:`TypeError`) naming ``name`` and how to make a key, and never
    quoting the value given, which may be a secret.
    """
    how = f"make one with: {_MAKE_A_KEY}"
    if isinstance(key, (bytes, bytearray)):
        if len(key) == 32:
            return bytes(key)
        hint = (
            " (base64 text? pass it as str)" if _KEY_TEXT.fullmatch(key.decode("latin-1")) else ""
        )
        raise ValueError(
            f"EncryptedStore: {name} must be 32 random bytes or their urlsafe base64 text; "
            f"got {len(key)} bytes{hint}; {how}"
        )
    if isinstance(key, str):
        text = key.strip()
        if _KEY_TEXT.fullmatch(text):
            return urlsafe_b64decode(text.rstrip("=") + "=")
        raise ValueError(
            f"EncryptedStore: {name} must be 32 random bytes or their urlsafe base64 text "
            f"(44 characters of A-Z a-z 0-9 - _ and a final =); got a text of {len(text)} "
            f"characters that is not such a key; {how}"
        )
    hint = " (several keys? pass keys=[current, *old])" if isinstance(key, (list, tuple)) else ""
    raise TypeError(
        f"EncryptedStore: {name} must be bytes or str, not {type(key).__name__}{hint}; {how}"
    )


class EncryptedStore(Store):
    """Wraps ``inner`` and encrypts every record's value with AES-256-GCM.

    ``EncryptedStore(inner, key)`` with one key, or
    ``EncryptedStore(inner, keys=[current, *old])`` to rotate keys: new writes
    use ``keys[0]``, every key in the list decrypts. A key is 32 random bytes
    or their urlsafe base64 text; make one with::

        python -c "import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)).decode())"

    The wrapper has the wrapped store's capabilities (``supports_versioning``,
    ``indexes_users``, listing or not). It hides the session data, including
    the user ID inside it, but not that a record exists, its size, its expiry,
    or the user ID that a store with a per-user index keeps beside the record.

    A value that does not decrypt reads as absent (``load`` returns ``None``,
    listings skip it) and is logged at WARNING without its content; it never
    raises. Writes still see the record: ``insert`` over it returns ``False``,
    and ``delete``, ``touch`` and ``cleanup`` act on it as the wrapped store does.
    """

    def __init__(
        self, inner: Store, key: Key | None = None, *, keys: Sequence[Key] | None = None
    ) -> None:
        if not isinstance(inner, Store):
            raise TypeError(
                f"EncryptedStore wraps a wsgi_kvsession Store, not {type(inner).__name__}"
            )
        if (key is None) == (keys is None):
            raise ValueError(
                "EncryptedStore: give key= (one key) or keys=[current, *old] (to rotate), "
                "not both or neither"
            )
        if keys is not None and isinstance(keys, (str, bytes, bytearray)):
            raise TypeError("EncryptedStore: keys= takes a list of keys; for one key use key=")
        named = [("key", key)] if keys is None else [(f"keys[{i}]", k) for i, k in enumerate(keys)]
        if not named:
            raise ValueError(f"EncryptedStore: keys= is empty; make a key with: {_MAKE_A_KEY}")
        ciphers = [_cipher(_parse_key(k, name)) for name, k in named]
        self.inner = inner
        self._current = ciphers[0]
        #: Ciphers by key id; two keys sharing an id (2^-32) are both tried.
        self._by_id: dict[bytes, list[_Cipher]] = {}
        for cipher in ciphers:
            self._by_id.setdefault(cipher.key_id, []).append(cipher)
        # The wrapped store's capabilities are ours: everything but the value
        # is its business.
        self.supports_versioning = inner.supports_versioning
        self.indexes_users = inner.indexes_users
        self._warned: OrderedDict[str, None] = OrderedDict()
        self._warned_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r})"

    # -- the value -------------------------------------------------------------

    def _seal(self, key: str, value: bytes) -> bytes:
        header = _FORMAT + self._current.key_id
        nonce = os.urandom(_NONCE_SIZE)
        return header + nonce + self._current.aead.encrypt(nonce, value, _aad(header, key))

    def _open(self, key: str, stored: bytes) -> bytes | str:
        """The plaintext of ``stored``, or why it has none (one of the reasons above)."""
        if len(stored) < OVERHEAD or stored[:1] != _FORMAT:
            return _NOT_OURS
        header = stored[:_HEADER_SIZE]
        candidates = self._by_id.get(header[1:])
        if not candidates:
            return _UNKNOWN_KEY
        nonce = stored[_HEADER_SIZE : _HEADER_SIZE + _NONCE_SIZE]
        sealed = stored[_HEADER_SIZE + _NONCE_SIZE :]
        for cipher in candidates:
            try:
                return cipher.aead.decrypt(nonce, sealed, _aad(header, key))
            except InvalidTag:
                continue
        return _FORGED

    def _decrypted(self, key: str, record: Record) -> Record | str:
        opened = self._open(key, record.value)
        if isinstance(opened, str):
            return opened
        return Record(opened, record.expires_at, record.version)

    def _first_warning(self, key: str) -> bool:
        """Whether ``key`` has not been warned about yet (remembering it now)."""
        with self._warned_lock:
            if key in self._warned:
                self._warned.move_to_end(key)
                return False
            self._warned[key] = None
            if len(self._warned) > _WARNED_KEYS:
                self._warned.popitem(last=False)
            return True

    def _listed(
        self, records: Iterable[tuple[str, Record]], what: str
    ) -> Iterator[tuple[str, Record]]:
        skipped: Counter[str] = Counter()
        try:
            for key, record in records:
                decrypted = self._decrypted(key, record)
                if isinstance(decrypted, str):
                    skipped[decrypted] += 1
                else:
                    yield key, decrypted
        finally:
            if skipped:
                log.warning(
                    "%r: %s skipped %d record(s) that read as absent: %s",
                    self,
                    what,
                    sum(skipped.values()),
                    "; ".join(f"{n} {reason}" for reason, n in skipped.items()),
                )

    # -- the Store protocol ----------------------------------------------------

    def load(self, key: str) -> Record | None:
        record = self.inner.load(key)
        if record is None:
            return None
        decrypted = self._decrypted(key, record)
        if isinstance(decrypted, str):
            level = logging.WARNING if self._first_warning(key) else logging.DEBUG
            log.log(level, "%r: the record under %r %s; it reads as absent", self, key, decrypted)
            return None
        return decrypted

    def insert(self, key: str, value: bytes, expires_at: float, *, user: str | None = None) -> bool:
        return insert_with_user(self.inner, key, self._seal(key, value), expires_at, user)

    def update(
        self,
        key: str,
        value: bytes,
        expires_at: float,
        version: Version | None = None,
        *,
        user: str | None = None,
    ) -> bool:
        sealed = self._seal(key, value)
        return update_with_user(self.inner, key, sealed, expires_at, version, user)

    def delete(self, key: str, version: Version | None = None) -> bool:
        return self.inner.delete(key, version)

    def touch(self, key: str, expires_at: float) -> bool:
        return self.inner.touch(key, expires_at)

    def iter_records(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        # Called now, not when the listing starts: a store that cannot list
        # raises NotImplementedError at the call, as callers expect.
        records = self.inner.iter_records(prefix)
        return self._listed(records, f"listing {prefix!r}")

    def iter_user_records(self, user: str, prefix: str = "") -> Iterator[tuple[str, Record]]:
        records = self.inner.iter_user_records(user, prefix)
        return self._listed(records, f"listing a user's records under {prefix!r}")

    def cleanup(self) -> int:
        return self.inner.cleanup()

    def close(self) -> None:
        self.inner.close()


def _aad(header: bytes, key: str) -> bytes:
    """The associated data: the header (fixed size) then the store key."""
    return header + key.encode("utf-8", "surrogatepass")
