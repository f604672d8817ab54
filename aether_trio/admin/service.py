"""`AdminService`: the admin package's one long-running service, started by the server.

`run` opens the SQLite store, loads bans and revocations, installs the access policy and the audit
log on the node, and then owns, in its nursery, the audit writer and any drain. It reports
readiness through `task_status` before the HTTP listener starts, so no operator command and no
connection is handled without the durable state loaded. On cancellation the writer flushes
(shielded, time-limited) and the store is closed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from .audit import AuditLog
from .cluster import ClusterAccess
from .commands import AdminContext, ConfigReload
from .drain import Drain
from .routes import PREFIX, AdminRoutes
from .state import AccessState
from .store import Store

if TYPE_CHECKING:
    from ..connection.client import Client
    from ..http.apiauth import ApiAuth
    from ..node import Node

__all__ = ["PREFIX", "AdminService"]


class AdminService:
    def __init__(self, node: Node[Client], api_auth: ApiAuth, config: ConfigReload) -> None:
        self.node = node
        self.config = config
        self.drain = Drain(node)
        # The server API's key check: the keys of the running configuration (reload included).
        self.routes = AdminRoutes(api_auth)
        self.state: AccessState | None = None
        self.audit: AuditLog | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        admin = node.config.admin
        store = await Store.open(admin.data_dir)
        try:
            head = await store.call(store.db.audit_head)
            audit = AuditLog(
                store, head, auth_failures_per_minute=admin.audit_auth_failures_per_minute
            )
            state = AccessState(store, audit, node.shared, node.cluster)
            await state.load()
            async with trio.open_nursery() as nursery:
                await nursery.start(audit.run)
                # The other nodes' bans and revocations, before any connection is admitted.
                await nursery.start(ClusterAccess(node, state).run)
                self.state, self.audit = state, audit
                node.access, node.audit = state, audit
                node.access_control = state  # the server API's block_user, revoke_token, ...
                self.routes.context = AdminContext(
                    node, self.config, state, audit, self.drain, nursery, time.time()
                )
                audit.record(
                    "server.start", actor="server",
                    result={"node": node.config.server.node_name, "version": node.version,
                            **state.counts()},
                )  # fmt: skip
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.routes.context = None
            await store.aclose()
