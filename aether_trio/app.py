"""Composition root: the only module that knows every concrete class.

`Server.run` starts the node (engines + timers) and the WebSocket listener; connections run in a
nursery of their own so that the listener can stop (shutdown) while they drain. Services report
readiness through `task_status`, which is how tests start a server on port 0. With durable
history the memory engine's streams are restored before anything is served and saved after
everything stopped (engines/persist.py).
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .admin.service import PREFIX as ADMIN_PREFIX
from .admin.service import AdminService
from .backend import Hooks
from .backup.service import BackupMetrics, BackupService
from .config import Config, ConfigError, ServerConfig, load_config
from .connection.client import Client
from .connection.serve import run as run_connection
from .engines.base import Broker, PresenceManager
from .engines.control import ControlPlane, SharedState
from .engines.memory import MemoryBroker, MemoryPresenceManager
from .engines.persist import HistoryPersistence
from .engines.snapshot import write_snapshot
from .guards.limits import request_ip, request_origins
from .guards.proxies import TrustedProxies, forwarded_remote
from .http.api.routes import METHODS, PREFIX, ServerApi
from .http.apiauth import ApiAuth
from .http.asgi import HttpApp
from .http.ops import counted
from .http.ops import install as install_ops
from .http.server import serve_http
from .node import Node
from .observe.monitor import ResourceMonitor
from .observe.readiness import Check
from .protocol.codes import Disconnect
from .protocol.encodings import SUBPROTOCOLS, negotiate
from .transport import HandshakeRequest, TransportClosed, serve_websocket, tls
from .workers import child

__all__ = ["Server", "open_server", "serve_forever"]

log = logging.getLogger(__name__)


class Server:
    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        instance: int | None = None,
        *,
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        # One process of several sharing the file (`--instance`): a reload applies it again.
        self.instance = instance
        broker, presence = _engines(config)
        control, shared = _cluster(config, broker)
        # `hooks`: the application's in-process hooks (aether_trio/backend/hooks.py).
        self.node: Node[Client] = Node(config, broker, presence, control, shared, hooks=hooks)
        self.durable_history = _durable_history(config, broker)
        if self.durable_history is not None:
            self.node.reports["history_snapshot"] = self.durable_history.statistics
        self.port = 0
        self.http_port = 0
        # wss:// when [server] names a certificate (checked at load; built again here).
        self.ssl_context = _ssl_context(config.server)
        self.http_app = HttpApp(config.http.max_body_size, config.http.read_timeout)
        # Behind nginx: the client each trusted proxy names (per-IP limits, logs, audit actors).
        self.trusted_proxies = TrustedProxies(config.server.trusted_proxies)
        self.http_app.proxies = lambda: self.trusted_proxies
        # API keys are read from the node's running config on each request (SIGHUP included).
        self.api_auth = ApiAuth(lambda: self.node.config.api.keys)
        api_route = ServerApi(self.node, self.api_auth).handle
        self.http_app.route_prefix(
            PREFIX, counted(self.node.metrics, PREFIX, {*METHODS, "batch"}, api_route)
        )
        # Operator commands (/api/admin/...), bans, revocations and the audit log.
        # Admin commands get the node, the API keys and this server's reload, not the server.
        self.admin = AdminService(self.node, self.api_auth, self)
        self.http_app.route_prefix(ADMIN_PREFIX, self.admin.routes.handle)
        self._listener = trio.CancelScope()
        self._stopped = trio.Event()
        # Observability: /metrics, /health, /ready, /admin/errors; the resource monitor and the
        # readiness checks only the server knows (still accepting connections, resources).
        node = self.node
        self.monitor = ResourceMonitor(node.metrics, lambda: node.config.monitor, node.outbox_bytes)
        self.node.readiness_checks += [self._accepting, *self.monitor.checks()]
        self.http_app.on_error = self.node.errors.capture
        install_ops(
            self.http_app, self.node, self.monitor, lambda r: self.api_auth.protect("admin", r)
        )
        # Scheduled backups ([backup] schedule); their metrics are exposed either way.
        self.backup = BackupService(
            lambda: self.config,
            config_path,
            BackupMetrics(node.metrics.registry),
            history=_history_export(broker),
        )

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. The history snapshot is read before any listener starts and
        written once `_serve` has returned: every connection, the HTTP API and the node have
        stopped, so no publication can land after it (a cancelled run saves too: shielded)."""
        history = self.durable_history
        if history is not None:
            await history.load()
        try:
            await self._serve(task_status=task_status)
        finally:
            if history is not None:
                await history.save()

    async def _serve(self, *, task_status: trio.TaskStatus[Server]) -> None:
        cfg = self.config.server
        async with trio.open_nursery() as services:
            await services.start(self.node.errors.run, self.config.monitor.sentry_dsn)
            await services.start(self.node.run)
            await services.start(self.node.errors.supervise, "monitor", self.monitor.run)
            # Durable state is loaded before any connection or API request is handled.
            await services.start(self.admin.run)
            if self.backup.enabled:
                await services.start(self.node.errors.supervise, "backup", self.backup.run)
            if self.config.http.enabled:
                http = self.config.http
                self.http_port = await services.start(
                    functools.partial(serve_http, read_timeout=http.read_timeout),
                    self.http_app,
                    http.host,
                    http.port,
                )
            async with trio.open_nursery() as connections:
                listener = await connections.start(self._listen, connections)
                self.port = listener.port
                scheme = "wss" if self.ssl_context else "ws"
                log.info(
                    "listening on %s://%s:%d%s", scheme, cfg.host, self.port, cfg.websocket_path
                )
                task_status.started(self)
            services.cancel_scope.cancel()
        self._stopped.set()

    async def _listen(
        self,
        connections: trio.Nursery,
        *,
        task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        cfg = self.config.server
        with self._listener:
            await serve_websocket(
                self._handle,
                cfg.host,
                cfg.port,
                ssl_context=self.ssl_context,
                handler_nursery=connections,
                max_message_size=cfg.max_message_size,
                connect_timeout=cfg.handshake_timeout,
                on_failure=self.node.metrics.handshake_failed,
                # Workers share the port (`[server] workers`, workers/).
                reuse_port=cfg.workers > 1,
                task_status=task_status,
            )

    async def _handle(self, request: HandshakeRequest) -> None:
        """The connection boundary: whatever goes wrong in one connection ends that connection
        only (logged with its traceback here), never the listener or the other connections."""
        try:
            path = request.path.partition("?")[0]
            if path != self.config.server.websocket_path:
                await request.reject(404, body=b"not found\n")
                return
            # The client behind a trusted proxy; every other peer is what it is.
            request.remote = forwarded_remote(request.remote, request.headers, self.trusted_proxies)
            # Origin, connection and handshake-rate limits; DEBUG only: a flood of refusals
            # must not flood the log (aether_refusals_total counts them).
            ip, limits = request_ip(request.remote), self.node.limits
            refusal = limits.open_connection(ip, request_origins(request.headers))
            if refusal is not None:
                log.debug("handshake from %s refused: %d %s", ip, refusal.status, refusal.reason)
                await request.reject(
                    refusal.status, extra_headers=refusal.headers, body=refusal.body
                )
                return
            # What the application's backend is passed (read before `accept` lets them go).
            headers = self.node.backend.keep_headers(request.headers)
            try:
                negotiated = negotiate(request.subprotocols)
                if negotiated is None:
                    await self._refuse_subprotocols(request, ip)
                    return
                codec, subprotocol = negotiated
                # The connection's own loop, called directly: one coroutine frame less that every
                # idle connection would keep.
                client = Client(self.node, await request.accept(subprotocol), codec, headers)
                await run_connection(client)
            finally:
                limits.close_connection(ip)
        except* (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            # The peer went away before its refusal or its 101 was out: a normal peer event.
            self.node.metrics.handshake_failed("peer_gone")
        except* Exception as group:
            for exc in group.exceptions:
                log.error("connection task failed", exc_info=exc)
                self.node.errors.capture(exc, "connection")

    async def _refuse_subprotocols(self, request: HandshakeRequest, ip: str) -> None:
        """A client offering only subprotocols Aether does not speak gets a 400 that says so,
        and the operator a log line (after the handshake limits: a flood of them is bounded)."""
        offered = ", ".join(request.subprotocols)
        served = ", ".join(SUBPROTOCOLS)
        log.info("handshake from %s refused: unsupported WebSocket subprotocol (offered: %.200s; "
                 "served: %s)", ip, offered, served)  # fmt: skip
        self.node.metrics.handshake_failed("subprotocol")
        body = f"unsupported WebSocket subprotocol; Aether serves: {served}\n".encode()
        await request.reject(400, body=body)

    def _accepting(self) -> Check:
        shutting_down = self._listener.cancel_called
        return Check("accepting", not shutting_down, "shutting down" if shutting_down else "yes")

    async def shutdown(self) -> None:
        """Stop accepting, ask every client to reconnect elsewhere (3001), drain, then stop."""
        self._listener.cancel()
        closed = self.node.close_all(Disconnect.SHUTDOWN)
        log.info("shutting down: closing %d connections", closed)
        with trio.move_on_after(self.config.server.shutdown_drain_seconds) as drain:
            await self.node.wait_idle()
        if drain.cancelled_caught:
            log.warning("drain time over with %d connections left", len(self.node.clients))
        # While the engine still runs: the other nodes drop this one from `info` at once.
        await self.node.cluster.goodbye()

    def reload(self) -> bool:
        """Re-read the config file; a bad file is rejected and the running config stays."""
        try:
            config = load_config(self.config_path, self.instance)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return False
        try:
            if self.ssl_context is not None and config.server.tls:
                # A renewed certificate: new handshakes get it, open connections keep theirs.
                server = config.server
                tls.reload_certificate(self.ssl_context, server.tls_cert_file, server.tls_key_file)
            self.node.reload(config)
        except ValueError as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return False
        self.config = config
        self.trusted_proxies = TrustedProxies(config.server.trusted_proxies)
        return True


@asynccontextmanager
async def open_server(config: Config, *, hooks: Hooks | None = None) -> AsyncIterator[Server]:
    """Run Aether inside the caller's own Trio program, with the application's in-process
    `hooks`: listening once this yields, shut down gracefully (3001 to every client, then the
    drain) when the block is left."""
    server = Server(config, hooks=hooks)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.shutdown()
            nursery.cancel_scope.cancel()


def _engines(config: Config) -> tuple[Broker, PresenceManager]:
    if config.engine.type == "redis":
        # Imported only then: importing trio-asyncio changes how asyncio makes loops in the
        # whole process, which a server on the memory engine has no reason to pay for.
        from .engines.redis import open_redis_engine

        return open_redis_engine(config.engine.redis)
    return MemoryBroker(), MemoryPresenceManager()


def _cluster(config: Config, broker: Broker) -> tuple[ControlPlane | None, SharedState | None]:
    """The control plane and shared state of a shared engine; a memory node is alone (None:
    the node's own in-memory twins)."""
    if config.engine.type != "redis":
        return None, None
    from .engines.redis import RedisBroker, open_redis_cluster

    assert isinstance(broker, RedisBroker)
    return open_redis_cluster(broker)


def _durable_history(config: Config, broker: Broker) -> HistoryPersistence | None:
    """Only the memory engine needs it: another engine keeps its history itself."""
    if not config.engine.persist_history or not isinstance(broker, MemoryBroker):
        return None
    return HistoryPersistence(broker, config.admin.data_dir, config.engine.persist_timeout)


def _history_export(broker: Broker) -> Callable[[Path], None] | None:
    """For the backups: the memory engine's live streams as a history snapshot at `path`."""
    if not isinstance(broker, MemoryBroker):
        return None  # the Redis engine's history is backed up from Redis

    def export(path: Path) -> None:
        # In the backup's worker thread: the streams are taken on the event loop at one instant
        # (export_streams is synchronous), then written here, off the loop.
        now = time.time()
        streams = trio.from_thread.run_sync(broker.export_streams, now)
        write_snapshot(path, streams, now)

    return export


def _ssl_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    try:
        return tls.server_context(cfg.tls_cert_file, cfg.tls_key_file)
    except tls.TlsFileError as exc:  # the files changed since the config was loaded
        raise ConfigError(f"invalid configuration:\n  server.{exc}") from None


# Young-generation threshold of the collector. Connections are long-lived object graphs: with
# CPython's default (700) a connect storm triggered full collections that freed nothing and
# stalled the loop for up to a second (measured with ops/bench: 9 full collections, 1.6 s, in a
# 5,000-connect storm). Collections still run, just less often.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Once the server is up: move everything allocated at start-up out of the collector's way
    (`gc.freeze`) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def serve_forever(
    config: Config, config_path: str | None, instance: int | None = None, supervised: bool = False
) -> None:
    """Run until SIGTERM/SIGINT (graceful shutdown); SIGHUP reloads the configuration.
    `supervised`: a worker of `aether serve`'s parent (workers/child.py): it is told once this
    process listens, and the parent's end is watched (its death is a SIGTERM)."""
    server = Server(config, config_path, instance)
    with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
        # `aether serve` blocked these before writing its pid file (cli.py): one sent meanwhile
        # (a supervisor's stop, `just reload` right after a start) is delivered here, now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            tune_gc()
            if supervised:
                nursery.start_soon(child.report_to_parent)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    ok = server.reload()
                    server.node.audit.record("config.reload", actor="signal:SIGHUP",
                                             result={"reloaded": ok}, ok=ok)  # fmt: skip
                    continue
                log.info("received %s", signal.Signals(signum).name)
                await server.shutdown()
                nursery.cancel_scope.cancel()
                break
