"""The record format: session metadata and data in one opaque value.

Layout: ``b"KVS\\x01"``, a 4-byte big-endian length, the metadata as compact
JSON, then the session data as written by the configured serializer.

The metadata (created, written, permanent, user ID, serializer name) is kept
apart from the data so that the server can enforce the absolute timeout from
the record alone (rule 15), and so that the data's original bytes can be
compared with a fresh encoding at the end of a request without decoding
anything twice: equal bytes mean nothing changed (rule 9).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from .serializers import SerializationError

_MAGIC = b"KVS\x01"
_LENGTH = struct.Struct(">I")
_PREFIX = len(_MAGIC) + _LENGTH.size


@dataclass(frozen=True, slots=True)
class Envelope:
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
    meta = json.dumps(
        {
            "c": envelope.created,
            "w": envelope.written,
            "p": envelope.permanent,
            "u": envelope.user_id,
            "s": envelope.serializer,
        },
        separators=(",", ":"),
    ).encode("utf-8")
    return _MAGIC + _LENGTH.pack(len(meta)) + meta + envelope.data


def unpack(value: bytes) -> Envelope:
    """Parse a stored value; raise :class:`SerializationError` for anything else."""
    if value[: len(_MAGIC)] != _MAGIC or len(value) < _PREFIX:
        raise SerializationError("not a wsgi_kvsession record")
    (length,) = _LENGTH.unpack_from(value, len(_MAGIC))
    end = _PREFIX + length
    if end > len(value):
        raise SerializationError("truncated wsgi_kvsession record")
    try:
        meta: Any = json.loads(value[_PREFIX:end])
        created, written = float(meta["c"]), float(meta["w"])
        permanent, user_id, serializer = meta["p"], meta["u"], meta["s"]
    except (ValueError, TypeError, KeyError) as exc:
        raise SerializationError(f"bad record metadata: {exc}") from exc
    if (
        not (math.isfinite(created) and math.isfinite(written))
        or not isinstance(permanent, bool)
        or not isinstance(serializer, str)
        or not (user_id is None or isinstance(user_id, (str, int)))
    ):
        raise SerializationError("bad record metadata types")
    return Envelope(created, written, permanent, user_id, serializer, value[end:])
