"""One TLS context for every HTTP client the process makes.

Building an ``ssl.SSLContext`` loads the whole CA bundle (~25 ms), and httpx builds one per ``Client``
unless it is handed one. A flow makes a ``ShoptetClient`` (two httpx clients) per task, so that load
was most of a short flow run's own time. The context is read-only once built and safe to share
between clients and threads. Same trust as httpx's default (certifi, or ``SSL_CERT_FILE`` /
``SSL_CERT_DIR``), read once per process.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
