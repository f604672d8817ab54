"""One connection's outgoing side: the byte-bounded queue, coalesced writes, the slow-consumer
policy, the writer task and the close.

Theory of operation. Everything that goes to the client (replies, pushes from the hub, pings) is
queued with `send`, which never waits and never awaits: fan-out stays synchronous. The first
message of a round marks the connection on the node's flusher (flusher.py); once the producing
task yields, the flusher calls `flush`, which writes everything queued with one non-blocking write
(text frames of up to `per_frame` lines, built once per round for every connection with the same
messages queued: the round's memo). What the socket does not take at once, and everything after a
write had to wait, is written by this connection's writer task, started the first time it is
needed, which drains whatever is pending into one frame per batch.

Slow consumers: a message that would take the queue past `max_bytes` is not queued; the connection
is closed with 3008 "slow" instead, without flushing (the client cannot keep up anyway), and a
write blocked on a client that stopped reading is cancelled: one slow reader never holds memory
or slows anyone else down.

Closing is a request (`close`; the first one wins), honoured by the writer task: flush (unless
the request says not to), send the close frame, wait a bounded time for the peer's, then cancel
the connection's nursery.

A probe (`probe`) times one queued message until the write carrying it is done: the node probes
one subscriber per broadcast for `aether_publish_write_latency_seconds`, so the measurement costs
nothing per subscriber.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ..protocol.codes import Disconnect
from ..transport import TransportClosed
from ..transport.frames import binary_frames, text_frames

if TYPE_CHECKING:
    from ..flusher import Flusher, Round
    from ..transport import Transport

__all__ = ["CloseRequest", "Writer", "WriterOwner", "WriterStatistics"]

log = logging.getLogger(__name__)


@attrs.frozen
class CloseRequest:
    code: int
    reason: str
    flush: bool  # send what is queued first (not for 3008: the client cannot keep up anyway)


class WriterOwner(Protocol):
    def writer_closing(self, request: CloseRequest, detail: str, level: int) -> None:
        """A close request was taken (the owner writes the one log line of the close)."""

    def writer_closed(self, request: CloseRequest, frame_sent: bool) -> None:
        """The close handshake is over; `frame_sent`: whether the close frame got out."""


@attrs.frozen
class WriterStatistics:
    queued_messages: int
    queued_bytes: int
    max_bytes: int
    closing: bool


class Writer:
    __slots__ = (
        "_bytes",
        "_close_wait",
        "_flusher",
        "_frames",
        "_kicked",
        "_marked",
        "_nursery",
        "_owner",
        "_probe",
        "_queue",
        "_send_scope",
        "_task_started",
        "_wakeup",
        "close_request",
        "max_bytes",
        "per_frame",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        flusher: Flusher,
        *,
        max_bytes: int,
        per_frame: int,
        close_wait: float,
        owner: WriterOwner,
        binary: bool = False,
    ) -> None:
        self.transport = transport
        self.max_bytes = max_bytes
        self.per_frame = per_frame
        self._flusher = flusher
        self._close_wait = close_wait
        self._owner = owner
        # Text frames of newline-separated JSON messages, or binary frames of length-delimited
        # Protobuf ones (`binary`): the codec's choice, fixed for the connection.
        self._frames = binary_frames if binary else text_frames
        # A list, not a deque: batches are taken from the front (a slice), and an idle
        # connection's empty list is 56 bytes where an empty deque is 760.
        self._queue: list[bytes] = []
        self._bytes = 0
        self._wakeup: trio.Event | None = None
        self._kicked = False
        self._marked = False  # on the flusher's list for the current round
        self._task_started = False
        self._nursery: trio.Nursery | None = None
        # The task's, cancelled when the client is dropped without flushing: a send blocked on a
        # client that stopped reading must not keep the connection (and its memory) alive.
        self._send_scope: trio.CancelScope | None = None
        self.close_request: CloseRequest | None = None
        # [messages up to and including the probed one still queued, start, report]
        self._probe: list[Any] | None = None

    # --- queueing: synchronous, never waits ---

    def send(self, message: bytes) -> None:
        """Queue `message`: written with whatever else is queued by then, by the node's flusher
        once the current task yields, or by the writer task once there is one. A message that
        does not fit closes the connection as too slow (3008)."""
        if self.close_request is not None:
            return  # already going away; dropping is not an overflow
        size = len(message)
        if self._bytes + size > self.max_bytes:
            slow = Disconnect.SLOW
            self.close(slow.value, slow.reason, flush=False, detail="outbox full")
            return
        self._queue.append(message)
        self._bytes += size
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        elif not self._task_started and not self._marked:
            self._marked = True
            self._flusher.mark(self)

    def close(
        self,
        code: int,
        reason: str,
        *,
        flush: bool = True,
        detail: str = "",
        level: int = logging.INFO,
    ) -> bool:
        """Ask for the close frame `code`/`reason` (after what is queued, if `flush`); the first
        request wins. Returns whether this one was taken."""
        if self.close_request is not None:
            return False
        request = self.close_request = CloseRequest(code, reason, flush)
        if not flush:
            self._queue.clear()
            self._bytes = 0
            self._probe = None
            if self._send_scope is not None:
                self._send_scope.cancel()
        self._owner.writer_closing(request, detail, level)
        self._wake()
        self._start_task()  # it sends the close frame
        return True

    @property
    def closing(self) -> bool:
        return self.close_request is not None

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            len(self._queue), self._bytes, self.max_bytes, self.close_request is not None
        )

    def probe(self, report: Callable[[float], object]) -> bool:
        """Time the newest queued message: `report(seconds)` once the write carrying it is done.
        One probe at a time; False if not taken (one is pending or nothing is queued)."""
        if self._probe is not None or not self._queue or self.close_request is not None:
            return False
        self._probe = [len(self._queue), time.perf_counter(), report]
        return True

    # --- the flusher's call ---

    def flush(self, round: Round) -> None:
        """Write everything queued in one go without waiting. What the socket does not take at
        once is left to the writer task, started for it."""
        self._marked = False
        if self._task_started:
            return  # the task took over (a close, or an earlier write that had to wait)
        queued = self._queue
        if not queued:
            return
        # The next subscriber flushed in this round usually has the same messages queued (the
        # same objects, handed out by the hub): the bytes are built once for all of them. The
        # same objects come from the same codec, so they make the same kind of frame; the frame
        # builder is compared all the same.
        key, frames = round.key, self._frames
        if (
            key is not None
            and key[0] is frames
            and len(key[1]) == len(queued)
            and all(map(operator.is_, key[1], queued))
        ):
            data: bytes = round.value
        else:
            data = frames(queued, self.per_frame)
            round.key, round.value = (frames, tuple(queued)), data
        transport = self.transport
        if not transport.write_nowait(data):
            self._start_task()
            return
        self._queue = []
        self._bytes = 0
        self._report_probe()
        if transport.has_pending:
            self._kicked = True  # the task finishes what the socket did not take
            self._start_task()

    # --- the writer task ---

    def attach(self, nursery: trio.Nursery | None) -> None:
        """The connection's nursery, where the writer task starts when needed (None: no more:
        the nursery is closing and a new task would fail the fan-out that starts it)."""
        self._nursery = nursery

    def _start_task(self) -> None:
        """The writer task exists only once a connection needed it (a write that could not go
        out at once, or the close): an idle connection that keeps up costs no task for it."""
        if not self._task_started and self._nursery is not None:
            self._task_started = True
            self._nursery.start_soon(self._write_loop)

    async def _write_loop(self) -> None:
        transport = self.transport
        self._send_scope = send_scope = trio.CancelScope()
        request = self.close_request
        if request is not None and not request.flush:
            send_scope.cancel()  # started by a close that drops what is queued
        try:
            with send_scope:
                while True:
                    batch = await self._next_batch()
                    if not batch and not transport.has_pending:
                        break  # closing
                    # While this write waits for the socket, new messages queue behind it.
                    await transport.write(self._frames(batch, self.per_frame) if batch else b"")
            request = self.close_request
            assert request is not None
            sent = await transport.close(request.code, request.reason, self._close_wait)
            self._owner.writer_closed(request, sent)
        except TransportClosed:
            pass
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _next_batch(self) -> list[bytes]:
        """Wait for messages and take up to `per_frame` of them; [] means: closing, or kicked
        (the transport has bytes of its own pending)."""
        self._report_probe_if_written()
        while not self._queue:
            if self.close_request is not None or self._kicked:
                self._kicked = False
                return []
            self._wakeup = event = trio.Event()
            await event.wait()
        queue, limit = self._queue, self.per_frame
        batch = queue[:limit]
        del queue[:limit]
        self._bytes -= sum(map(len, batch))
        if self._probe is not None:
            self._probe[0] -= len(batch)
        return batch

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def _report_probe(self) -> None:
        probe = self._probe
        if probe is not None:
            self._probe = None
            probe[2](time.perf_counter() - probe[1])

    def _report_probe_if_written(self) -> None:
        # The task asks for more only after writing the previous batch, which may have held it.
        probe = self._probe
        if probe is not None and probe[0] <= 0:
            self._report_probe()
