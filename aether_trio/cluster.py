"""`Cluster`: this node's view of the other nodes and the commands they send each other, over
the engine's control plane (engines/control.py; messages: protocol/control.py). After
centrifuge's `node.go` (`pubNode`, `handleControl`, `Survey`).

Theory of operation.

    heartbeat  every `heartbeat_interval` the node broadcasts its info (name, version, counts);
               a node heard from within `node_expire` is live, a `bye` removes it at once, and a
               node seen for the first time is sent our info directly, so both know each other
               within a round trip instead of a heartbeat.
    commands   `broadcast(method, body)` asks every other node to run its handler for `method`
               (the server API's disconnect/unsubscribe/subscribe/refresh, the admin package's
               bans and revocations register theirs in `commands`); the caller applies the
               command locally itself.
    surveys    `survey(op, body)` asks every live node for `surveys[op](body)` and gathers the
               replies until all have answered or `survey_timeout` passed: a node that does not
               answer in time is left out, and the caller gets what came.

Incoming messages are handed over synchronously by the plane (`handle_control`) and queued in a
bounded inbox that one worker task runs in order, so commands from one node are applied in the
order it sent them, a slow handler never blocks the plane's reader, and a flood of messages is
dropped at the inbox (logged), never grows memory. Garbage is logged and ignored: a node never
trusts another (it may run another version).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .engines.base import EngineError
from .engines.control import ControlPlane
from .protocol.control import ControlError, ControlMessage, decode_control, encode_control

__all__ = ["Cluster", "CommandHandler", "Peer", "SurveyHandler"]

log = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any]], Awaitable[None]]
SurveyHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Messages waiting for the worker; beyond it they are dropped (and counted).
INBOX_SIZE = 1024
# The `bye` broadcast at shutdown is given this long.
BYE_SECONDS = 2.0
# ...and this long when the node is being cancelled: the engine is stopping at the same time and
# may never send it, and a stop must not wait for that (a graceful shutdown said it already).
LAST_BYE_SECONDS = 0.1


@attrs.define
class Peer:
    info: dict[str, Any]
    seen: float  # trio.current_time() of its last heartbeat


class _Survey:
    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.replies: dict[str, dict[str, Any]] = {}
        self.done = trio.Event()

    def reply(self, sender: str, result: dict[str, Any]) -> None:
        if sender in self.expected:
            self.replies[sender] = result
            if self.expected <= self.replies.keys():
                self.done.set()


class Cluster:
    def __init__(self, plane: ControlPlane, describe: Callable[[], dict[str, Any]]) -> None:
        self.plane = plane
        self.node_id = plane.node_id
        self.describe = describe
        self.heartbeat_interval = 3.0
        self.node_expire = 7.0
        self.survey_timeout = 5.0
        self.peers: dict[str, Peer] = {}
        self.commands: dict[str, CommandHandler] = {}
        self.surveys: dict[str, SurveyHandler] = {}
        self._waiting: dict[str, _Survey] = {}
        self._left = False
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[str, ControlMessage]](
            INBOX_SIZE
        )
        # Observability and tests.
        self.received = 0
        self.sent = 0
        self.rejected = 0
        self.dropped = 0

    def configure(self, heartbeat: float, node_expire: float, survey_timeout: float) -> None:
        self.heartbeat_interval, self.node_expire = heartbeat, node_expire
        self.survey_timeout = survey_timeout

    # --- the service ---

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._left = False  # restarted after a failure (errors.supervise): alive again
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.plane.run, self)
                nursery.start_soon(self._worker)
                nursery.start_soon(self._heartbeat)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.goodbye(last=True)

    async def goodbye(self, *, last: bool = False) -> None:
        """Tell the other nodes this one is leaving (they forget it at once), once. Best said
        while the engine still runs: at a graceful shutdown, before the node stops (`last`:
        from a node being cancelled, hardly waiting)."""
        timeout = LAST_BYE_SECONDS if last else BYE_SECONDS
        if not self._left:
            self._left = True
            with trio.move_on_after(timeout) as scope:
                await self._broadcast(encode_control("bye"))
            if scope.cancelled_caught:  # the others forget this node after node_expire
                log.info("goodbye not sent within %.1f s", timeout)

    async def _heartbeat(self) -> None:
        while not self._left:  # a node that said goodbye is not announced again
            await self._broadcast(self._node_message())
            await trio.sleep(self.heartbeat_interval)

    def _node_message(self) -> bytes:
        return encode_control("node", i=self.describe())

    async def _broadcast(self, message: bytes) -> bool:
        try:
            await self.plane.broadcast(message)
        except EngineError as exc:
            log.warning("control broadcast failed: %s", exc)
            return False
        self.sent += 1
        return True

    async def _send(self, node_id: str, message: bytes) -> None:
        try:
            await self.plane.send(node_id, message)
        except EngineError as exc:
            log.warning("control message to node %s failed: %s", node_id, exc)
        else:
            self.sent += 1

    # --- what arrives (ControlHandler) ---

    def handle_control(self, sender: str, message: bytes) -> None:
        try:
            decoded = decode_control(message)
        except ControlError as exc:
            self.rejected += 1
            if _sampled(self.rejected):
                log.warning("ignored a control message from node %.40r: %s (%d so far)", sender,
                            exc, self.rejected)  # fmt: skip
            return
        self.received += 1
        kind = decoded.kind
        if kind == "node":
            known = sender in self.peers
            self.peers[sender] = Peer(decoded["i"], trio.current_time())
            if not known:
                log.info("node %s (%s) joined", sender, decoded["i"].get("name", "?"))
                self._enqueue(sender, ControlMessage("hello"))
        elif kind == "bye":
            if self.peers.pop(sender, None) is not None:
                log.info("node %s left", sender)
        elif kind == "srep":
            survey = self._waiting.get(decoded["id"])
            if survey is not None:
                result = decoded.fields.get("r")
                error = {"error": decoded.fields.get("e")}
                survey.reply(sender, result if isinstance(result, dict) else error)
        else:  # cmd, sreq: they await, the worker runs them
            self._enqueue(sender, decoded)

    def _enqueue(self, sender: str, message: ControlMessage) -> None:
        try:
            self._inbox_send.send_nowait((sender, message))
        except trio.WouldBlock:
            self.dropped += 1
            if _sampled(self.dropped):
                log.warning("control message %s from node %s dropped: inbox full (%d so far)",
                            message.kind, sender, self.dropped)  # fmt: skip

    async def _worker(self) -> None:
        async for sender, message in self._inbox:
            try:
                await self._apply(sender, message)
            except Exception:
                # One bad command must not end the plane: logged with its traceback.
                log.exception("control %s from node %s failed", message.kind, sender)

    async def _apply(self, sender: str, message: ControlMessage) -> None:
        if message.kind == "hello":  # a new node: tell it about us now, not at our next beat
            if not self._left:  # ...unless this node is leaving
                await self._send(sender, self._node_message())
        elif message.kind == "cmd":
            handler = self.commands.get(message["m"])
            if handler is None:
                log.warning("unknown control command %.40r from node %s", message["m"], sender)
                return
            await handler(message["b"])
        else:  # sreq
            survey = self.surveys.get(message["op"])
            survey_id = message["id"]
            if survey is None:
                reply = encode_control("srep", id=survey_id, e=f"unknown survey {message['op']}")
            else:
                reply = encode_control("srep", id=survey_id, r=await survey(message["b"]))
            await self._send(sender, reply)

    def statistics(self) -> dict[str, Any]:
        """For `aether admin node`: who this node is, whom it knows, what went through."""
        return {"node_id": self.node_id, "peers": len(self.live_peers()),
                "inbox": self._inbox_send.statistics().current_buffer_used,
                "received": self.received, "sent": self.sent, "rejected": self.rejected,
                "dropped": self.dropped}  # fmt: skip

    # --- what the node asks ---

    def live_peers(self) -> dict[str, Peer]:
        """The other nodes heard from within `node_expire` (the others are forgotten here)."""
        now = trio.current_time()
        for node_id in [n for n, p in self.peers.items() if now - p.seen > self.node_expire]:
            log.info("node %s expired: no heartbeat for %.1f s", node_id, self.node_expire)
            del self.peers[node_id]
        return dict(self.peers)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Node id -> info, for every live node, this one included (its info fresh)."""
        found = {node_id: peer.info for node_id, peer in self.live_peers().items()}
        found[self.node_id] = self.describe()
        return found

    async def broadcast(self, method: str, body: dict[str, Any]) -> None:
        """Ask every other node to run `method` (`EngineError` if it could not be sent)."""
        await self.plane.broadcast(encode_control("cmd", m=method, b=body))
        self.sent += 1

    async def survey(
        self, op: str, body: dict[str, Any], mine: dict[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Node id -> reply from this node and every live node that answered in time. `mine`:
        this node's reply when the caller already has it (no second local run of `op`)."""
        own = self.surveys[op]
        peers = set(self.live_peers())
        survey_id = uuid.uuid4().hex
        waiting = self._waiting[survey_id] = _Survey(peers)
        try:
            if peers:
                await self.plane.broadcast(encode_control("sreq", id=survey_id, op=op, b=body))
                self.sent += 1
            replies = {self.node_id: mine if mine is not None else await own(body)}
            if peers:
                with trio.move_on_after(self.survey_timeout):
                    await waiting.done.wait()
            missing = peers - waiting.replies.keys()
            if missing:
                log.warning("survey %s: no reply from %d nodes in time", op, len(missing))
            return {**waiting.replies, **replies}
        finally:
            del self._waiting[survey_id]


def _sampled(count: int) -> bool:
    """Whether the `count`th of a kind of bad event is logged: a flood must not flood the log."""
    return count == 1 or count % 1000 == 0
