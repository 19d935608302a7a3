"""Server-side sessions for any WSGI application.

Only a random ID travels in the cookie; the session data lives in a key-value
store. See :class:`KVSessionMiddleware`.
"""

from .middleware import KVSessionMiddleware, get_session
from .session import Session
from .stores.base import StoreError

__all__ = ["KVSessionMiddleware", "Session", "StoreError", "get_session"]
__version__ = "0.1.0.dev0"
