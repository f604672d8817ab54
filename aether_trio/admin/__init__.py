"""Operator commands, durable state (bans, token revocations) and the tamper-evident audit log.

    hooks.py     what the node needs from this package (access policy, auditor) with null twins;
                 a leaf module, so the core imports it without importing the rest
    store.py     the SQLite database under `[admin] data_dir`, used from worker threads
    chain.py     the audit hash chain: canonical serialization, hashing, verification (pure)
    audit.py     `AuditLog`: `record()` chains entries at once, a writer task persists them
    state.py     `AccessState`: bans and revocations in memory (O(1) checks), written through
    drain.py     `Drain`: closes connections gradually for rolling deploys
    debug.py     task tree, connection and node views (plain JSON-able dicts)
    params.py    one attrs class per command's parameters, decoded by a strict cattrs converter
    commands.py  the operator commands: parameter checks, then the change, then the audit entry
    routes.py    `POST /api/admin/<command>`: API-key auth (admin role), JSON in and out
    service.py   `AdminService`: owns the store, the writer and the drain task

Importing the package itself loads nothing: the node imports `hooks` without a cycle.
"""

__all__: list[str] = []
