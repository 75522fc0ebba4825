"""Restart the PostgreSQL server the tests run on (the embedded one or the machine's), as its owner."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import psycopg


def restart_server(admin_conninfo: str) -> None:
    """``pg_ctl restart -m fast`` on the server behind ``admin_conninfo``; returns once it accepts connections.

    pg_ctl restarts with the options the server was started with (``postmaster.opts``), so the
    embedded server keeps its socket folder and Debian's cluster its config file. Run as the data
    folder's owner (root uses runuser); raises ``PermissionError`` when that is not possible.
    """
    with psycopg.connect(admin_conninfo, autocommit=True) as c:
        data_dir = Path(c.execute("SHOW data_directory").fetchone()[0])
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    bindir = Path(os.readlink(f"/proc/{postmaster}/exe")).parent
    owner = data_dir.stat().st_uid
    cmd = [str(bindir / "pg_ctl"), "restart", "-D", str(data_dir), "-m", "fast", "-w", "-t", "120"]
    if owner != os.geteuid():
        if os.geteuid() != 0:
            raise PermissionError(f"the server's data folder belongs to uid {owner}; cannot restart it")
        cmd = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *cmd]
    # No pipes: the restarted postmaster inherits pg_ctl's stdout/stderr and would hold them open.
    subprocess.run(
        cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180
    )
