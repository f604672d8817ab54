"""The life of one connection: read frames, handle their commands in order, clean up.

Theory of operation. `serve_connection` makes the `Client` and runs it in a nursery of its own.
The connection's task reads (it is the connection's only reader, until the transport is closed,
also while closing: the peer's close frame and pongs arrive only through it): frames are decoded
and their commands handled in order, each handler queueing its reply; publishes are issued to
the broker as they come and waited for together (`IssuedPublishes`: one Redis pipeline for a
burst), everything else waits for the publishes before it, so replies keep command order.
Writing is the writer's (writer.py): the node's flusher writes what is queued once this task
yields, or the writer task does once a write had to wait or a close was asked for; the writer
task ends the nursery after the close handshake. Cleanup (unregister, unsubscribe, presence,
leave) runs shielded and time-limited after the nursery, whatever ended it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from logging import DEBUG
from typing import TYPE_CHECKING

import trio

from ..backend import DisconnectEvent
from ..engines.base import EngineError
from ..observe.logs import client_id_var
from ..protocol.codec import JSON, Codec, Command
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import AppDisconnect, AppError, DisconnectError, ReplyError
from ..transport import PEER_PROTOCOL_ERRORS, TransportClosed
from .client import Client
from .handlers import HANDLERS, issue_publish

if TYPE_CHECKING:
    from ..node import Node
    from ..transport import Transport

__all__ = ["CLEANUP_SECONDS", "run", "serve_connection"]

log = logging.getLogger(__name__)

CLEANUP_SECONDS = 5.0


async def serve_connection(
    node: Node[Client],
    transport: Transport,
    codec: Codec = JSON,
    headers: dict[str, str] | None = None,
) -> None:
    """Serve one accepted WebSocket speaking `codec` until it is closed, then clean up after it;
    `headers` are the upgrade request's that the application's backend is passed."""
    await run(Client(node, transport, codec, headers))


async def run(client: Client) -> None:
    client_id_var.set(client.client_id)  # every log line of this task and its children
    client.timers.watch_stale()
    try:
        async with trio.open_nursery() as nursery:
            client.attach(nursery)
            try:
                await read_loop(client)
                if not client.closing:
                    # The peer went away: nothing more to write.
                    nursery.cancel_scope.cancel()
            finally:
                # Nothing may be started once the body is done: the nursery closes as soon as
                # its tasks end, and a publication arriving between that and the end of
                # `async with` would fail its whole fan-out on `start_soon`. A writer task that
                # is needed has started already; otherwise the connection is gone anyway.
                client.attach(None)
    finally:
        request = client.writer.close_request
        client.node.metrics.disconnected(request.code if request is not None else None)
        _tell_disconnect(client)
        client.session.close()
        client.timers.cancel_all()
        with trio.move_on_after(CLEANUP_SECONDS, shield=True):
            await _cleanup(client)


def _tell_disconnect(client: Client) -> None:
    """A connection that had connected is gone: the backend's disconnect proxy or hook is told
    (in the background), with the close the server sent or 3000 when the client left."""
    node = client.node
    if node.clients.get(client.client_id) is not client:
        return  # never connected (refused, stale, gone during the handshake)
    target = node.backend.target(node.config.client.disconnect_proxy_name, "disconnect")
    if target is None:
        return
    request = client.writer.close_request
    code, reason = (
        (request.code, request.reason)
        if request is not None
        else (int(Disconnect.CONNECTION_CLOSED), Disconnect.CONNECTION_CLOSED.reason)
    )
    event = DisconnectEvent(
        client=client.client_id, user=client.user, code=code, reason=reason,
        headers=target.headers(client.headers, client.emulated_headers),
    )  # fmt: skip
    node.notifier.tell(target, "disconnect", event)


async def _cleanup(client: Client) -> None:
    client.node.unregister(client)
    for channel in list(client.subscriptions):
        try:
            await client.unsubscribe(channel)
        except EngineError:
            log.warning("cleanup of %s in %s failed", client.client_id, channel, exc_info=True)


async def read_loop(client: Client) -> None:
    # Until the transport is closed, also while closing: the peer's close frame (and its
    # pongs) arrive only through `receive`, which is this connection's only reader.
    transport = client.transport
    issued = IssuedPublishes()
    while True:
        try:
            frame = await transport.receive()
            client.last_activity = time.time()
        except TransportClosed as exc:
            if exc.code in PEER_PROTOCOL_ERRORS:
                log.info("closing %s: %d (WebSocket protocol error)", client, exc.code)
            return
        # Publishes are issued as they come, and waited for once the frames the same read
        # brought are all handled: a burst of them shares the engine's pipeline.
        while True:
            if not (client.closing or client.connect_failed):
                # Closing, or the SDK closes after a connect error: nothing is handled.
                await _handle_frame(client, frame, issued)
            if not issued or (next_frame := transport.receive_nowait()) is None:
                break
            frame = next_frame
        await issued.finish(client)
        # An idle connection waits in `receive`: nothing of the last frame (or, in
        # `_handle_frame`, its commands) stays referenced meanwhile.
        del frame


class IssuedPublishes(list[tuple[Command, Callable[[], Awaitable[None]]]]):
    """Publish commands issued to the node but not answered yet, in command order, with what
    waits for each one's answer and replies (handlers.issue_publish).

    Why: the commands of a connection are handled in order, and a publish that waited for the
    engine before the next one was issued made every publication one Redis round trip on its
    own. Issued in a row, they share a pipeline; their order (and offsets) is the order they
    were issued in (engines/base.py). Replies still go in command order: anything that is not
    a publish issued this way -- another command, a publish the backend decides, a rate-limit
    refusal, a close -- first waits for every publish issued before it (`finish`). A refusal
    found while issuing is kept in its place and raised in its turn. At most `LIMIT` wait at
    once."""

    LIMIT = 256

    async def finish(self, client: Client) -> None:
        """Wait for each issued publish and reply, in order (errors answered as `_dispatch`
        answers them). If cancelled meanwhile, what was not answered yet is dropped unanswered:
        it was issued, so it is published all the same (the connection is going anyway)."""
        if not self:
            return
        batch = self.copy()
        self.clear()
        for command, answer in batch:
            await _dispatch(client, command, answer)


async def _handle_frame(client: Client, frame: str | bytes, issued: IssuedPublishes) -> None:
    try:
        codec = client.codec
        if isinstance(frame, bytes) is not codec.binary:
            kind = "binary" if isinstance(frame, bytes) else "text"
            detail = f"{kind} frame on {codec.name}"
            raise DisconnectError(Disconnect.INAPPROPRIATE_PROTOCOL, detail)
        for command in codec.decode_frame(frame, client.node.config.limits.max_json_depth):
            if client.closing or client.connect_failed:
                break
            if not client.session.check(command):
                continue
            verdict = client.limiter.command(command.method, client.user or client.client_id)
            if verdict is not None:
                await issued.finish(client)  # its refusal after their replies
                _refuse(client, command, verdict)
            elif command.method != "publish" or not _issue(client, command, issued):
                await issued.finish(client)
                await _dispatch(client, command)
    except DisconnectError as exc:
        await issued.finish(client)  # answered before the close, as they came before it
        client.close(exc.disconnect, detail=exc.detail)


def _issue(client: Client, command: Command, issued: IssuedPublishes) -> bool:
    """Issue the publish `command` without waiting for it (`IssuedPublishes`); False if it must
    be dispatched in its turn instead (the application's backend decides it). A refusal is kept
    in its place; a `DisconnectError` is raised (what came before it is answered first)."""
    if len(issued) >= IssuedPublishes.LIMIT:
        return False  # dispatched after the others: the next ones start a new group
    answer: Callable[[], Awaitable[None]] | None
    try:
        answer = issue_publish(client, command.id, command.request)
    except DisconnectError:
        raise
    except Exception as exc:  # a ReplyError, an engine that cannot publish now: in its turn
        answer = functools.partial(_raise, exc)
    if answer is None:
        return False
    issued.append((command, answer))
    return True


async def _raise(exc: Exception) -> None:
    raise exc


def _refuse(client: Client, command: Command, verdict: ErrorCode | Disconnect) -> None:
    """The command limits refused `command`: answered 111 (not logged: a flood would flood the
    log), or the connection closed with 3013 (logged once)."""
    if isinstance(verdict, ErrorCode):
        if command.id:  # `send` has no id and gets no reply
            client.send(client.codec.encode_error(command.id, verdict))
    else:
        client.close(verdict, detail="kept sending over the command rate limit")


async def _dispatch(
    client: Client, command: Command, handle: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Run `command`'s handler (or `handle`, the rest of an issued publish) and answer what it
    raises."""
    started = time.perf_counter()
    outcome: ErrorCode | Disconnect | str = "cancelled"
    node = client.node
    try:
        if handle is None:
            await HANDLERS[command.method](client, command.id, command.request)
        else:
            await handle()
        outcome = "ok"
    except ReplyError as exc:
        outcome = exc.code
        log.info("%s %s refused for %s: %s", command.method, int(exc.code), client, exc.detail)
        _fail(client, command, client.codec.encode_error(command.id, exc.code))
    except DisconnectError as exc:
        outcome = exc.disconnect
        raise
    except AppError as exc:  # the application's backend refused: its code and message
        outcome = "error"
        log.info("%s %d refused by the backend for %s", command.method, exc.code, client)
        _fail(
            client,
            command,
            client.codec.encode_app_error(command.id, exc.code, exc.message, exc.temporary),
        )
    except AppDisconnect as exc:
        outcome = "disconnect"
        client.close_with(exc.code, exc.reason, detail=f"{command.method}: by the backend")
    except trio.Cancelled:
        raise
    except Exception as exc:
        outcome = "internal"
        log.exception("%s failed for %s", command.method, client)
        node.errors.capture(exc, f"command {command.method}")
        _fail(client, command, client.codec.encode_error(command.id, ErrorCode.INTERNAL))
    finally:
        node.metrics.command(command.method, outcome, time.perf_counter() - started)


def _fail(client: Client, command: Command, error: bytes) -> None:
    client.send(error)
    if command.method == "connect":
        # Stop handling commands; give the client time to close, then drop it.
        client.connect_failed = True
        client.timers.call_later(
            "connect_failed",
            client.node.config.server.close_wait_seconds,
            # Already logged as the refused connect: this close is routine.
            lambda: client.close_with(3501, Disconnect.BAD_REQUEST.reason, level=DEBUG),
        )
