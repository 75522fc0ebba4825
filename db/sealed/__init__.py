"""Sealed files: what the hub writes to keep (backups, partition archives, any later export).

One stack for all of them, so they are written, checked and cleaned up alike:

- ``names``: each kind's hub-owned name pattern (``<db>-YYYYMMDDTHHMMSSZ[-n].dump`` for backups,
  ``<partition>-YYYYMMDDTHHMMSSZ[-n].archive`` for archives), unique within a second, and each kind's own
  manifest suffix. Housekeeping recognises the hub's files by these names and nothing else.
- ``files``: a 0700 folder, the temporary name, 0600 + fsync, the rename and the folder's fsync; JSON
  manifests written under a unique temporary name; a free-space guard before a large write.
- ``check``: SHA-256 and a full read (``pg_restore -f /dev/null``).
- ``copy``: the off-machine copy (per hub instance), its SHA-256 re-read at the destination.
- ``sweep``: leftovers of killed runs, removed only when their name is one the hub writes.
"""

from db.sealed.names import ARCHIVE, BACKUP, Kind

__all__ = ["ARCHIVE", "BACKUP", "Kind"]
