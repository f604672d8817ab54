"""Backups: consistent, encrypted, kept by a retention policy, verified by restoring them.

collect.py    what goes in: SQLite (online backup API), Redis keys, config, logs
archive.py    tar + zstd + encryption, manifest with sizes and SHA-256s; and back
crypto.py     AES-256-GCM in authenticated chunks (`cryptography`), key files
storage.py    the S3 bucket (boto3): archives and drill records
create.py     `aether backup create` (one at a time: a lock file)
drill.py      `aether backup verify`: restore into scratch SQLite and Redis, check, RPO/RTO
restore.py    `aether backup restore` (refuses to overwrite live state without --force)
retention.py  which backups `aether backup prune` keeps (pure)
scratch.py    a private redis-server on a free port (the drill; RDB restores)
service.py    the scheduled backups inside the server, and their metrics
cli.py        the `aether backup` commands
"""
