"""Coalesced writes (connection/flusher.py): what is queued for a connection during one round
goes out in one write, frames hold at most `max_messages_in_frame` lines, order is kept, and one
connection's failure costs the others nothing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
from conftest import make_config, open_raw, serve_in, token, ws_url

from aether_trio.connection.flusher import Flusher
from aether_trio.transport import frames_for, text_frame_header


class Recording:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def flush(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} broke")


async def test_marked_connections_are_flushed_once_the_marking_task_yields() -> None:
    log: list[str] = []
    errors: list[tuple[str, str]] = []
    flusher = Flusher()
    flusher.on_error = lambda exc, where: errors.append((str(exc), where))
    async with trio.open_nursery() as nursery:
        await nursery.start(flusher.run)
        a, broken, b = Recording("a", log), Recording("broken", log, fail=True), Recording("b", log)
        flusher.mark(a)
        flusher.mark(broken)
        flusher.mark(b)
        assert log == []  # nothing before this task yields
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["a", "broken", "b"]  # the failure did not cost b its flush
        assert errors == [("broken broke", "flush")]
        flusher.mark(a)  # a new round
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["a", "broken", "b", "a"]
        nursery.cancel_scope.cancel()


def test_frames_for_splits_into_frames_of_at_most_per_frame_lines() -> None:
    messages = [f'{{"n":{n}}}'.encode() for n in range(5)]
    data = frames_for(messages, 2)
    expected = b"".join(
        text_frame_header(len(p)) + p
        for p in (b'{"n":0}\n{"n":1}', b'{"n":2}\n{"n":3}', b'{"n":4}')
    )
    assert data == expected
    # Built once for the same message objects (the next subscriber of the same burst) ...
    assert frames_for(list(messages), 2) is data
    # ... and not reused for equal-length but different messages.
    other = [*messages[:4], b'{"n":"x"}']
    assert frames_for(other, 2) != data


def test_frames_for_is_not_fooled_by_a_list_changed_in_place() -> None:
    queue = [b'{"a":1}', b'{"a":2}']
    first = frames_for(queue, 16)
    queue[1] = b'{"a":3}'  # same list object, same length, other contents
    assert frames_for(queue, 16) != first
    assert frames_for(queue, 16).endswith(b'{"a":1}\n{"a":3}')


async def _raw_frames(client: Any, lines: int) -> list[str]:
    """The WebSocket frames (not lines) that carry the next `lines` lines."""
    frames: list[str] = []
    with trio.fail_after(10):
        while sum(len(frame.split("\n")) for frame in frames) < lines:
            frames.append(await client.ws.get_message())
    return frames


@pytest.mark.parametrize("per_frame", [16, 3])
async def test_a_burst_reaches_a_subscriber_coalesced_in_order(per_frame: int) -> None:
    config = make_config({"client": {"max_messages_in_frame": per_frame}})
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        async with open_raw(ws_url(server)) as sub, open_raw(ws_url(server)) as pub:
            await sub.connect(token("1"))
            await sub.command("subscribe", {"channel": "room"})
            await pub.connect(token("2"))
            # Ten publishes in one frame: handled in one go, so the subscriber's ten pushes
            # are queued in one round and written together.
            publishes = [
                {"id": 10 + n, "publish": {"channel": "room", "data": {"n": n}}} for n in range(10)
            ]
            await pub.send(*publishes)
            frames = await _raw_frames(sub, 10)
        nursery.cancel_scope.cancel()
    lines = [orjson.loads(line) for frame in frames for line in frame.split("\n")]
    assert [m["push"]["pub"]["data"]["n"] for m in lines] == list(range(10))
    assert all(len(frame.split("\n")) <= per_frame for frame in frames)
    assert len(frames) == -(-10 // per_frame)  # as few frames as the limit allows
