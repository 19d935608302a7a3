"""The record format: session metadata and data in one opaque value.

Layout (all integers big-endian)::

    b"KVS\\x01"                magic and format version
    created    float64        Unix time the session was first stored
    written    float64        Unix time of the last write of the data
    flags      uint8          bit 0: permanent
    serializer uint8 + bytes  name of the serializer that wrote the data
    user_id    uint8 kind     0: None, 1: str, 2: int
               uint16 + bytes the UTF-8 text of the str or int (absent for None)
    data                      the session data, as the serializer wrote it

The metadata is a fixed binary header, not a serialized document, because it
is read on every request and ``struct`` is an order of magnitude cheaper than
a JSON parse. It is kept apart from the data so that the server can enforce the
absolute timeout from the record alone (rule 15), and so that the data's
original bytes can be compared with a fresh encoding at the end of a request
without decoding anything twice: equal bytes mean nothing changed (rule 9).
"""

from __future__ import annotations

import math
import struct
from typing import NamedTuple

from .serializers import SerializationError

_MAGIC = b"KVS\x01"
_FIXED = struct.Struct(">4sddBB")  # magic, created, written, flags, serializer length
_LENGTH = struct.Struct(">H")
_PERMANENT = 0x01
_USER_NONE, _USER_STR, _USER_INT = 0, 1, 2


class Envelope(NamedTuple):
    """A record's metadata and encoded data. (A named tuple, not a frozen
    dataclass, because one is built on every read, and a tuple is built
    several times faster.)"""

    #: Unix time the session was first stored.
    created: float
    #: Unix time of the last write of the data.
    written: float
    permanent: bool
    user_id: str | int | None
    #: The name of the serializer that wrote ``data``.
    serializer: str
    #: The session data, encoded; decoded by the session.
    data: bytes


def pack(envelope: Envelope) -> bytes:
    name = envelope.serializer.encode("ascii")
    parts = [
        _FIXED.pack(
            _MAGIC,
            envelope.created,
            envelope.written,
            _PERMANENT if envelope.permanent else 0,
            len(name),
        ),
        name,
    ]
    user_id = envelope.user_id
    if user_id is None:
        parts.append(bytes((_USER_NONE,)))
    else:
        kind = _USER_STR if isinstance(user_id, str) else _USER_INT
        text = str(user_id).encode("utf-8")
        if len(text) > 0xFFFF:
            raise SerializationError("user_id is too long (more than 65535 bytes)")
        parts += [bytes((kind,)), _LENGTH.pack(len(text)), text]
    parts.append(envelope.data)
    return b"".join(parts)


def unpack(value: bytes) -> Envelope:
    """Parse a stored value; raise :class:`SerializationError` for anything else."""
    try:
        magic, created, written, flags, name_length = _FIXED.unpack_from(value)
        if magic != _MAGIC:
            raise SerializationError("not a wsgi_kvsession record")
        offset = _FIXED.size
        serializer = value[offset : offset + name_length].decode("ascii")
        offset += name_length
        kind = value[offset]
        offset += 1
        user_id: str | int | None = None
        if kind != _USER_NONE:
            (length,) = _LENGTH.unpack_from(value, offset)
            offset += _LENGTH.size
            text = value[offset : offset + length]
            if len(text) != length:
                raise SerializationError("truncated wsgi_kvsession record")
            offset += length
            if kind == _USER_STR:
                user_id = text.decode("utf-8")
            elif kind == _USER_INT:
                user_id = int(text)
            else:
                raise SerializationError(f"unknown user_id kind {kind}")
    except SerializationError:
        raise
    except (struct.error, IndexError, ValueError) as exc:
        # struct.error and IndexError: too short; ValueError: bad text.
        raise SerializationError(f"malformed wsgi_kvsession record: {exc}") from exc
    if not (math.isfinite(created) and math.isfinite(written)):
        raise SerializationError("malformed wsgi_kvsession record: bad timestamps")
    return Envelope(created, written, bool(flags & _PERMANENT), user_id, serializer, value[offset:])
