"""The backup unit's errors; every one carries a message an operator can act on.

BackupError                 base: the command fails, the message says why (exit 1)
├── BackupConfigError       `[backup]` is incomplete for this command (no bucket, no key)
├── StorageError            S3 refused or could not be reached (names bucket and endpoint)
├── ArchiveError            the archive cannot be read back
│   ├── WrongKey            encrypted with another key (key ids differ)
│   ├── Tampered            a chunk fails authentication: corrupted or altered
│   └── Truncated           the archive ends early
├── CheckFailed             a drill check failed; `check` names it
└── RefusedOverwrite        restore would replace live state and --force was not given
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "BackupConfigError",
    "BackupError",
    "CheckFailed",
    "RefusedOverwrite",
    "StorageError",
    "Tampered",
    "Truncated",
    "WrongKey",
]


class BackupError(Exception):
    """A backup command cannot go on; the message is for the operator."""


class BackupConfigError(BackupError):
    pass


class StorageError(BackupError):
    pass


class ArchiveError(BackupError):
    pass


class WrongKey(ArchiveError):
    pass


class Tampered(ArchiveError):
    pass


class Truncated(ArchiveError):
    pass


class CheckFailed(BackupError):
    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"check {check!r} failed: {detail}")
        self.check = check
        self.detail = detail


class RefusedOverwrite(BackupError):
    pass
