"""Logical backups of the hub's database: dump, verify, test restore, retention, off-machine copy.

A backup counts only once it has been read back: ``dump`` writes it (atomically, 0600, with a JSON
manifest), ``verify`` checks its SHA-256 *and* reads it to the end (``pg_restore -f /dev/null``;
``--list`` passes on a truncated file), ``restore`` proves it restores into a scratch database, and
``retention`` never removes the newest verified ones. Every step records its outcome in the manifest,
so ``hub backups list`` and ``newest_verified()`` read the state from the backup folder alone.
"""

from db.backups.manifest import (
    BackupError,
    Manifest,
    list_backups,
    newest_restore_tested,
    newest_verified,
    resolve,
)

__all__ = ["BackupError", "Manifest", "list_backups", "newest_restore_tested", "newest_verified", "resolve"]
