"""One connection's writer (connection/writer.py) without sockets: the byte-bounded queue and the
slow-consumer close, coalesced writes through the node's flusher with the bytes built once per
round, the writer task once a write has to wait, and the close request.

The transport is a fake that records what is written; the flusher is the real one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from aether_trio.connection.writer import CloseRequest, Writer, WriterStatistics
from aether_trio.flusher import Flusher, Round
from aether_trio.protocol.codes import Disconnect
from aether_trio.transport import TransportClosed
from aether_trio.transport.frames import text_frame_header


def frames(*payloads: bytes) -> bytes:
    return b"".join(text_frame_header(len(p)) + p for p in payloads)


class FakeTransport:
    """Takes writes without waiting while `room` (bytes the socket takes at once, None: all)
    allows; `write` waits while `blocked` is set."""

    remote = "test"

    def __init__(self, *, nowait: bool = True, room: int | None = None) -> None:
        self.nowait = nowait
        self.room = room
        self.tail = b""
        self.written: list[bytes] = []  # everything, in order, as the socket got it
        self.nowait_calls = 0
        self.blocked: trio.Event | None = None
        self.closed: tuple[int, str] | None = None

    @property
    def has_pending(self) -> bool:
        return bool(self.tail)

    def write_nowait(self, data: bytes) -> bool:
        self.nowait_calls += 1
        if not self.nowait or self.tail:
            return False
        taken = data if self.room is None else data[: self.room]
        self.tail = data[len(taken) :]
        self.written.append(taken)
        return True

    async def write(self, data: bytes) -> None:
        if self.blocked is not None:
            await self.blocked.wait()
        if self.closed is not None:
            raise TransportClosed
        data, self.tail = self.tail + data, b""
        self.written.append(data)

    async def close(self, code: int, reason: str, wait: float) -> bool:
        self.closed = (code, reason)
        return True


class Closes:
    """The writer's owner: records the close requests it is told about."""

    def __init__(self) -> None:
        self.seen: list[tuple[CloseRequest, str]] = []
        self.closed: list[tuple[int, bool]] = []

    def writer_closing(self, request: CloseRequest, detail: str, level: int) -> None:
        self.seen.append((request, detail))

    def writer_closed(self, request: CloseRequest, frame_sent: bool) -> None:
        self.closed.append((request.code, frame_sent))


def make_writer(
    transport: FakeTransport, flusher: Flusher | None = None, *, max_bytes: int = 1000,
    per_frame: int = 16,
) -> tuple[Writer, Closes]:  # fmt: skip
    closes = Closes()
    writer = Writer(
        transport,  # type: ignore[arg-type]
        flusher or Flusher(),
        max_bytes=max_bytes,
        per_frame=per_frame,
        close_wait=1.0,
        owner=closes,
    )
    return writer, closes


@asynccontextmanager
async def running_flusher() -> AsyncIterator[tuple[Flusher, trio.Nursery]]:
    flusher = Flusher()
    async with trio.open_nursery() as nursery:
        await nursery.start(flusher.run)
        yield flusher, nursery
        nursery.cancel_scope.cancel()


# --- the queue and the slow-consumer policy -----------------------------------------------------


def test_the_byte_limit_is_inclusive_and_an_overflow_closes_as_slow_without_flushing() -> None:
    writer, closes = make_writer(FakeTransport(), max_bytes=10)
    writer.send(b"12345")
    writer.send(b"12345")  # exactly at the limit
    assert writer.statistics() == WriterStatistics(2, 10, 10, False)
    assert closes.seen == []
    writer.send(b"1")  # would overflow: not queued, and the client is too slow
    slow = Disconnect.SLOW
    assert closes.seen == [(CloseRequest(slow.value, slow.reason, False), "outbox full")]
    assert writer.statistics() == WriterStatistics(0, 0, 10, True)  # nothing left to flush


def test_a_message_larger_than_the_limit_closes_even_an_empty_queue() -> None:
    writer, closes = make_writer(FakeTransport(), max_bytes=4)
    writer.send(b"12345")
    assert [request.code for request, _ in closes.seen] == [3008]


def test_nothing_is_queued_once_closing_and_that_is_not_an_overflow() -> None:
    writer, closes = make_writer(FakeTransport(), max_bytes=5)
    assert writer.close(3001, "shutdown")
    writer.send(b"123456789")
    assert writer.statistics() == WriterStatistics(0, 0, 5, True)
    assert len(closes.seen) == 1


def test_the_first_close_request_wins() -> None:
    writer, closes = make_writer(FakeTransport())
    assert writer.close(3012, "no pong")
    assert not writer.close(3008, "slow", flush=False)
    assert writer.close_request == CloseRequest(3012, "no pong", True)
    assert len(closes.seen) == 1


# --- coalesced writes -----------------------------------------------------------------------


async def test_what_one_round_queues_goes_out_in_one_write_of_frames_of_per_frame_lines() -> None:
    transport = FakeTransport()
    async with running_flusher() as (flusher, _):
        writer, _ = make_writer(transport, flusher, per_frame=2)
        for n in range(5):
            writer.send(b'{"n":%d}' % n)
        assert transport.written == []  # nothing before this task yields
        await trio.testing.wait_all_tasks_blocked()
    assert transport.written == [frames(b'{"n":0}\n{"n":1}', b'{"n":2}\n{"n":3}', b'{"n":4}')]
    assert transport.nowait_calls == 1
    assert writer.statistics().queued_messages == 0


def test_one_rounds_writers_with_the_same_messages_share_the_bytes() -> None:
    messages = [b'{"n":%d}' % n for n in range(3)]
    shared = Round()
    first, second, other = FakeTransport(), FakeTransport(), FakeTransport()
    for transport, queued in ((first, messages), (second, list(messages)), (other, messages[:2])):
        writer, _ = make_writer(transport)
        for message in queued:
            writer.send(message)
        writer.flush(shared)
    assert first.written[0] is second.written[0]  # built once for both
    assert other.written[0] == frames(b'{"n":0}\n{"n":1}')


def test_the_round_memo_is_not_fooled_by_equal_length_other_messages() -> None:
    shared = Round()
    a, b = FakeTransport(), FakeTransport()
    for transport, last in ((a, b'{"n":1}'), (b, b'{"n":"x"}')):
        writer, _ = make_writer(transport)
        writer.send(b'{"n":0}')
        writer.send(last)
        writer.flush(shared)
    assert a.written == [frames(b'{"n":0}\n{"n":1}')]
    assert b.written == [frames(b'{"n":0}\n{"n":"x"}')]


async def test_a_write_that_cannot_go_at_once_is_done_by_the_writer_task_in_order() -> None:
    transport = FakeTransport(nowait=False)
    transport.blocked = trio.Event()
    async with running_flusher() as (flusher, nursery):
        writer, _ = make_writer(transport, flusher, per_frame=3)
        writer.attach(nursery)
        writer.send(b"a")
        await trio.testing.wait_all_tasks_blocked()  # the flush failed: the task is writing
        for message in (b"b", b"c", b"d", b"e"):
            writer.send(message)  # queued behind the blocked write, not marked for a flush
        transport.blocked.set()
        await trio.testing.wait_all_tasks_blocked()
    assert transport.written == [frames(b"a"), frames(b"b\nc\nd"), frames(b"e")]
    assert transport.nowait_calls == 1  # once the task exists, the flusher leaves it alone


async def test_what_the_socket_did_not_take_is_finished_by_the_writer_task() -> None:
    transport = FakeTransport(room=3)
    async with running_flusher() as (flusher, nursery):
        writer, _ = make_writer(transport, flusher)
        writer.attach(nursery)
        writer.send(b"hello")
        await trio.testing.wait_all_tasks_blocked()
    assert b"".join(transport.written) == frames(b"hello")
    assert len(transport.written) == 2
    assert not transport.has_pending


async def test_a_probe_reports_once_the_write_carrying_it_is_done() -> None:
    seconds: list[float] = []
    async with running_flusher() as (flusher, _):
        writer, _ = make_writer(FakeTransport(), flusher)
        assert not writer.probe(seconds.append)  # nothing queued
        writer.send(b"a")
        assert writer.probe(seconds.append)
        assert not writer.probe(seconds.append)  # one at a time
        assert seconds == []
        await trio.testing.wait_all_tasks_blocked()
    assert len(seconds) == 1
    assert seconds[0] >= 0


async def test_a_probe_on_the_writer_task_waits_for_the_batch_that_carries_it() -> None:
    transport = FakeTransport(nowait=False)
    transport.blocked = trio.Event()
    reports: list[float] = []
    async with running_flusher() as (flusher, nursery):
        writer, _ = make_writer(transport, flusher, per_frame=2)
        writer.attach(nursery)
        writer.send(b"m0")
        await trio.testing.wait_all_tasks_blocked()  # the task is writing m0
        for n in (1, 2, 3):
            writer.send(b"m%d" % n)
        assert writer.probe(reports.append)  # m3: in the second batch after m0's
        transport.blocked.set()
        await trio.testing.wait_all_tasks_blocked()
        assert transport.written == [frames(b"m0"), frames(b"m1\nm2"), frames(b"m3")]
        assert len(reports) == 1
        assert reports[0] >= 0
        writer.send(b"m4")
        transport.blocked = trio.Event()
        await trio.testing.wait_all_tasks_blocked()
        writer.send(b"m5")
        assert writer.probe(reports.append)
        writer.close(3008, "slow", flush=False)  # dropped with the queue: never reported
        await trio.testing.wait_all_tasks_blocked()
    assert len(reports) == 1
    assert writer.queued_bytes == 0


# --- closing --------------------------------------------------------------------------------


async def test_a_close_sends_what_is_queued_then_the_close_frame_and_ends_the_nursery() -> None:
    transport = FakeTransport(nowait=False)
    writer, _ = make_writer(transport)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            writer.attach(nursery)
            writer.send(b"a")
            writer.send(b"b")
            writer.close(3001, "shutdown")
            await trio.sleep_forever()  # cancelled by the writer task after the close
    assert transport.written == [frames(b"a\nb")]
    assert transport.closed == (3001, "shutdown")


async def test_a_close_without_flush_drops_what_is_queued_and_cancels_a_blocked_write() -> None:
    transport = FakeTransport(nowait=False)
    transport.blocked = trio.Event()  # a client that stopped reading
    with trio.fail_after(5):
        async with running_flusher() as (flusher, nursery):
            writer, _ = make_writer(transport, flusher)
            writer.attach(nursery)
            writer.send(b"stuck")
            await trio.testing.wait_all_tasks_blocked()  # the writer task waits in `write`
            writer.send(b"never")
            writer.close(3008, "slow", flush=False)
            await trio.sleep_forever()  # cancelled by the writer task after the close
    assert transport.written == []  # the blocked write was cancelled, nothing else was sent
    assert transport.closed == (3008, "slow")


async def test_a_close_wakes_a_writer_task_waiting_for_messages() -> None:
    transport = FakeTransport(nowait=False)
    writer, _ = make_writer(transport)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            writer.attach(nursery)
            writer.send(b"a")
            await trio.testing.wait_all_tasks_blocked()  # written; the task waits for more
            writer.close(3000, "bye")
            await trio.sleep_forever()
    assert transport.written == [frames(b"a")]
    assert transport.closed == (3000, "bye")


@pytest.mark.parametrize("flush", [True, False])
async def test_no_task_starts_once_the_nursery_is_gone(flush: bool) -> None:
    writer, _ = make_writer(FakeTransport(nowait=False))
    writer.attach(None)
    writer.send(b"a")
    writer.flush(Round())  # would start the writer task: there is no nursery for it
    assert writer.close(3001, "shutdown", flush=flush)
