"""Coalesced writes (flusher.py): connections marked during a round are flushed once the marking
task yields, all with the same round memo, one connection's failure costing the others nothing;
and end to end, a burst reaches a subscriber in as few frames as `max_messages_in_frame` allows,
in order. (What a connection writes in its flush: test_writer.py.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
from conftest import make_config, open_raw, serve_in, token, ws_url

from aether_trio.flusher import Flusher, Round


class Recording:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail
        self.rounds: list[Round] = []

    def flush(self, round: Round) -> None:
        self.rounds.append(round)
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
        assert a.rounds[0] is broken.rounds[0] is b.rounds[0]  # one memo for the round
        flusher.mark(a)  # a new round
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["a", "broken", "b", "a"]
        assert a.rounds[1] is not a.rounds[0]  # nothing is kept from one round to the next
        nursery.cancel_scope.cancel()


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
