"""Framework integrations: the only modules of wsgi_kvsession that import a framework.

Each reads the request's session from the WSGI ``environ``, where
:class:`~wsgi_kvsession.KVSessionMiddleware` puts it, so one store and one
session format serve Flask, Pyramid, Django and plain WSGI applications alike.
"""
