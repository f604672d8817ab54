"""Durable single-node history without processes: the snapshot format (engines/snapshot.py), the
memory broker's export and import of its streams, `HistoryPersistence` (engines/persist.py) and a
cancelled `Server.run` on a data_dir. Real server processes stopped with SIGTERM and SIGKILL are
in tests/test_durable_restart.py.

Time: the broker's deadlines follow the Trio clock (`autojump_clock`) and the wall clock is a
number the test passes, so "the process restarted 50 s later" costs nothing. Tests that run file
work in worker threads use the real clock: an autojump clock would skip the save's time limit
the moment the loop waits on a thread.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import make_config, serve_in

from aether_trio.admin.debug import node_view
from aether_trio.engines import persist
from aether_trio.engines.base import HistoryOptions, HistoryQuery
from aether_trio.engines.memory import MemoryBroker
from aether_trio.engines.persist import HistoryPersistence
from aether_trio.engines.snapshot import (
    SNAPSHOT_NAME,
    CorruptSnapshot,
    SavedStream,
    SnapshotAborted,
    SnapshotVersionError,
    read_snapshot,
    stale_temporary_files,
    write_snapshot,
)
from aether_trio.protocol.messages import ClientInfo, Publication, RawJSON, StreamPosition

DAY = 24 * 3600.0
HISTORY = HistoryOptions(size=10, ttl=300.0, meta_ttl=DAY)
WALL = 1_750_000_000.0  # "now" on the wall clock of the first process
ALICE = ClientInfo("alice", "c1", RawJSON(b'{"name":"Alice"}'), RawJSON(b'{"role":"op"}'))


def pub(n: int, **kwargs: Any) -> Publication:
    return Publication(data=RawJSON(b'{"n":%d}' % n), **kwargs)


def saved(channel: str = "news", top: int = 2, at: float = WALL, **kwargs: Any) -> SavedStream:
    """A stream as saved at `at`: its publications expire 300 s later, its position a day later."""
    kwargs.setdefault("publications", tuple(pub(n, offset=n) for n in range(1, top + 1)))
    kwargs.setdefault("meta_expires_at", at + DAY)
    kwargs.setdefault("pubs_expire_at", at + 300)
    return SavedStream(channel, "EpochAbc", top, **kwargs)


async def offsets(broker: MemoryBroker, channel: str) -> tuple[list[int], StreamPosition]:
    pubs, top = await broker.history(channel, HistoryQuery(limit=-1), DAY)
    return [p.offset for p in pubs], top


# --- the file format -----------------------------------------------------------------------------


def test_a_snapshot_round_trips_epochs_offsets_info_and_tags(tmp_path: Path) -> None:
    streams = [
        SavedStream(
            "chat:room",
            "aBcDeFgH",
            7,
            WALL + DAY,
            WALL + 250.5,
            (
                pub(6, offset=6, info=ALICE, tags={"kind": "msg", "lang": "en"}),
                pub(7, offset=7, info=ClientInfo("", "anon-client")),
            ),
        ),
        # Publications trimmed or removed: only the position is kept.
        SavedStream("news", "ZyXwVuTs", 41, WALL + 60, WALL - 5),
        SavedStream("ünïcode:ch", "Qq", 1, WALL + 1, WALL + 1, (pub(1, offset=1),)),
    ]
    path = tmp_path / "data" / SNAPSHOT_NAME  # the directory is made
    size = write_snapshot(path, streams, WALL)
    assert size == path.stat().st_size > 0
    snapshot = read_snapshot(path)
    assert snapshot.saved_at == WALL
    assert snapshot.bytes == size
    assert sorted(snapshot.streams, key=lambda s: s.channel) == sorted(
        streams, key=lambda s: s.channel
    )
    assert snapshot.publications == 3
    assert stale_temporary_files(path) == []
    assert path.stat().st_mode & 0o077 == 0  # publications are private: owner only


def test_publications_of_one_client_share_their_info_and_tags_after_a_read(
    tmp_path: Path,
) -> None:
    pubs = tuple(pub(n, offset=n, info=ALICE, tags={"k": "v"}) for n in (1, 2, 3))
    write_snapshot(tmp_path / SNAPSHOT_NAME, [saved(publications=pubs, top=3)], WALL)
    [stream] = read_snapshot(tmp_path / SNAPSHOT_NAME).streams
    assert stream.publications == pubs
    assert len({id(p.info) for p in stream.publications}) == 1
    assert len({id(p.tags) for p in stream.publications}) == 1


def test_an_empty_snapshot_round_trips(tmp_path: Path) -> None:
    path = tmp_path / SNAPSHOT_NAME
    write_snapshot(path, [], WALL)
    assert read_snapshot(path).streams == []


def test_no_snapshot_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_snapshot(tmp_path / SNAPSHOT_NAME)


def test_a_failed_write_leaves_the_previous_snapshot_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / SNAPSHOT_NAME
    write_snapshot(path, [saved("old")], WALL)
    before = path.read_bytes()

    many = [saved(f"ch{n}") for n in range(2000)]  # several batches
    abort = threading.Event()
    abort.set()
    with pytest.raises(SnapshotAborted):
        write_snapshot(path, many, WALL + 10, abort)

    from aether_trio.engines import snapshot

    def disk_full(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot, "_fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_snapshot(path, many, WALL + 20)

    assert path.read_bytes() == before
    assert [s.channel for s in read_snapshot(path).streams] == ["old"]
    assert stale_temporary_files(path) == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
from aether_trio.engines.snapshot import SavedStream, write_snapshot
from aether_trio.protocol.messages import Publication, RawJSON

path = Path(sys.argv[1])
pubs = tuple(Publication(data=RawJSON(b'{"n":%d}' % n), offset=n) for n in range(1, 51))
streams = [SavedStream(f"ch{c}", "Epoch", 50, 2e9, 2e9, pubs) for c in range(400)]
round = 0
while True:
    round += 1
    write_snapshot(path, streams, float(round))
    print(round, flush=True)
"""


@pytest.mark.parametrize("delay", [0.3, 0.55, 0.8, 1.1])
def test_a_process_killed_while_writing_leaves_a_whole_snapshot(
    tmp_path: Path, delay: float
) -> None:
    """SIGKILL at an arbitrary moment of a loop of writes: what is on disk is one whole snapshot
    (the last one finished), never a torn file."""
    path = tmp_path / SNAPSHOT_NAME
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        first = child.stdout.readline()  # one whole write before the kill
        time.sleep(delay)
        child.kill()
        finished = [first, *child.stdout.read().split()]
    assert int(finished[-1]) >= 1
    snapshot = read_snapshot(path)
    assert snapshot.saved_at >= int(finished[-1])  # that write or a later one that also finished
    assert len(snapshot.streams) == 400
    assert snapshot.publications == 400 * 50


def _rewrite(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for sql in statements:
        conn.execute(sql)
    conn.close()


def test_a_snapshot_of_another_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / SNAPSHOT_NAME
    write_snapshot(path, [saved()], WALL)
    _rewrite(path, "PRAGMA user_version=2")
    with pytest.raises(SnapshotVersionError, match="format version 2; this server reads 1"):
        read_snapshot(path)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"\x00garbage" * 1000), id="not-sqlite"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty-file"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:1500]), id="truncated"),
        pytest.param(lambda p: _rewrite(p, "PRAGMA application_id=7"), id="someone-elses-db"),
        pytest.param(lambda p: _rewrite(p, "DROP TABLE streams"), id="missing-table"),
        pytest.param(
            lambda p: _rewrite(p, "UPDATE publications SET data = x'7b6e3a'"), id="bad-json"
        ),
        pytest.param(
            lambda p: _rewrite(p, "UPDATE publications SET data = '{\"n\":1}'"), id="text-data"
        ),
        pytest.param(
            lambda p: _rewrite(p, "UPDATE publications SET offset = offset + 2"), id="offset>top"
        ),
        pytest.param(lambda p: _rewrite(p, "UPDATE streams SET epoch = ''"), id="no-epoch"),
        pytest.param(lambda p: _rewrite(p, "UPDATE streams SET top = 'x'"), id="text-top"),
        pytest.param(lambda p: _rewrite(p, "DELETE FROM streams"), id="orphan-publications"),
        pytest.param(
            lambda p: _rewrite(p, "UPDATE streams SET channel = 'a'"), id="orphan-after-stream"
        ),
        pytest.param(
            lambda p: _rewrite(p, "UPDATE publications SET channel = 'a'"),
            id="orphan-before-stream",
        ),
        pytest.param(lambda p: (p.unlink(), p.mkdir()), id="a-directory"),
        pytest.param(lambda p: _rewrite(p, "UPDATE publications SET tags = '[1]'"), id="tags"),
        pytest.param(lambda p: _rewrite(p, "UPDATE publications SET tags = x'00'"), id="tags-blob"),
        pytest.param(lambda p: _rewrite(p, "UPDATE publications SET client = NULL"), id="info"),
        pytest.param(lambda p: _rewrite(p, "UPDATE snapshot SET saved_at = 'x'"), id="saved-at"),
    ],
)
def test_a_damaged_snapshot_is_corrupt(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / SNAPSHOT_NAME
    tagged = (pub(1, offset=1, info=ALICE, tags={"a": "b"}), pub(2, offset=2, info=ALICE))
    write_snapshot(path, [saved("z", publications=tagged)], WALL)
    damage(path)
    with pytest.raises(CorruptSnapshot):
        read_snapshot(path)


# --- the memory broker's export and import ----------------------------------------------------


async def test_streams_survive_export_and_import_with_epochs_offsets_and_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first = MemoryBroker()
    for n in range(1, 13):  # size 10: offsets 3..12 kept
        await first.publish("news", pub(n, info=ALICE, tags={"n": str(n)}), HISTORY)
    await first.publish("quiet", pub(1), HISTORY)
    await trio.sleep(100)  # news: publications expire in 200 s, the position in DAY - 100 s
    exported = first.export_streams(WALL)
    news = next(s for s in exported if s.channel == "news")
    assert news.pubs_expire_at == pytest.approx(WALL + 200)
    assert news.meta_expires_at == pytest.approx(WALL + DAY - 100)

    # The next process: its broker clock starts near 0, the wall clock went on 50 s meanwhile.
    start = trio.current_time()
    second = MemoryBroker(clock=lambda: trio.current_time() - start)
    assert second.import_streams(exported, WALL + 50) == (2, 11)
    kept, top = await offsets(second, "news")
    assert kept == list(range(3, 13))
    assert top == StreamPosition(12, news.epoch)
    pubs, _ = await second.history("news", HistoryQuery(limit=1), DAY)
    assert pubs[0].info == ALICE
    assert pubs[0].tags == {"n": "3"}
    # A new publication continues the same stream.
    assert await second.publish("news", pub(13), HISTORY) == StreamPosition(13, news.epoch)

    await trio.sleep(149)  # "quiet" saved with 200 s left, 50 spent on the restart
    assert (await offsets(second, "quiet"))[0] == [1]
    await trio.sleep(2)
    kept, top = await offsets(second, "quiet")
    assert (kept, top.offset) == ([], 1)  # publications expired, the position kept
    quiet_epoch = top.epoch
    await trio.sleep(DAY)
    _, top = await offsets(second, "quiet")
    assert top.offset == 0
    assert top.epoch != quiet_epoch  # the position expired too: a new stream


async def test_expired_streams_and_publications_are_neither_exported_nor_imported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker = MemoryBroker()
    await broker.publish("short", pub(1), HistoryOptions(size=10, ttl=10.0, meta_ttl=20.0))
    await broker.publish("long", pub(1), HISTORY)
    await trio.sleep(15)
    exported = {s.channel: s for s in broker.export_streams(WALL)}
    assert exported["short"].publications == ()  # publications expired, position not yet
    await trio.sleep(10)
    assert [s.channel for s in broker.export_streams(WALL)] == ["long"]

    fresh = MemoryBroker()
    streams = [
        saved("gone", meta_expires_at=WALL - 1),
        saved("trimmed", pubs_expire_at=WALL),
        saved("kept"),
    ]
    assert fresh.import_streams(streams, WALL) == (2, 2)
    assert fresh.statistics() == {"streams": 2, "publications": 2}
    assert (await offsets(fresh, "trimmed"))[0] == []
    assert (await offsets(fresh, "kept"))[0] == [1, 2]


# --- HistoryPersistence: load, save, refusals ---------------------------------------------------


def matching(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def persistence(tmp_path: Path, broker: MemoryBroker, timeout: float = 10.0) -> HistoryPersistence:
    return HistoryPersistence(broker, tmp_path, timeout)


async def test_load_restores_then_consumes_the_snapshot_and_save_writes_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aether_trio.engines.persist")
    path = tmp_path / SNAPSHOT_NAME
    now = time.time()
    write_snapshot(path, [saved("a", at=now), saved("b", top=5, at=now)], now - 3)
    (tmp_path / f"{SNAPSHOT_NAME}.left-by-a-crash.tmp").write_bytes(b"half")

    broker = MemoryBroker()
    keeper = persistence(tmp_path, broker)
    await keeper.load()
    assert broker.statistics() == {"streams": 2, "publications": 7}
    # Consumed: a crash from now on must not bring back these tops with the same epochs.
    assert not path.exists()
    assert stale_temporary_files(path) == []
    assert keeper.last_load is not None
    assert (keeper.last_load.streams, keeper.last_load.publications) == (2, 7)
    loaded = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    assert len(loaded) == 1
    assert "2 streams, 7 publications" in loaded[0]

    await broker.publish("a", pub(3), HISTORY)
    await keeper.save()
    snapshot = read_snapshot(path)
    assert {s.channel: s.top for s in snapshot.streams} == {"a": 3, "b": 5}
    saved_lines = [r.getMessage() for r in caplog.records if "saved" in r.getMessage()]
    assert "2 streams, 8 publications" in saved_lines[-1]
    assert keeper.last_save is not None
    assert keeper.last_save.publications == 8
    loaded_view = keeper.statistics()["loaded"]
    assert (loaded_view["streams"], loaded_view["saved_at"]) == (2, now - 3)


async def test_without_a_snapshot_load_starts_empty_and_save_still_writes(tmp_path: Path) -> None:
    broker = MemoryBroker()
    keeper = persistence(tmp_path / "new-dir", broker)
    await keeper.load()
    assert keeper.last_load is None
    await keeper.save()
    assert read_snapshot(tmp_path / "new-dir" / SNAPSHOT_NAME).streams == []


async def test_save_without_a_finished_load_leaves_the_snapshot_alone(tmp_path: Path) -> None:
    path = tmp_path / SNAPSHOT_NAME
    write_snapshot(path, [saved()], WALL)
    keeper = persistence(tmp_path, MemoryBroker())
    await keeper.save()  # e.g. a start cancelled before the snapshot was read
    assert [s.channel for s in read_snapshot(path).streams] == ["news"]


async def test_a_snapshot_of_another_version_is_refused_logged_and_replaced_at_the_next_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / SNAPSHOT_NAME
    write_snapshot(path, [saved()], WALL)
    _rewrite(path, "PRAGMA user_version=99")
    broker = MemoryBroker()
    keeper = persistence(tmp_path, broker)
    await keeper.load()
    assert broker.statistics()["streams"] == 0
    assert path.exists()  # left as it was
    [refused] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refused.levelno == logging.ERROR
    assert "format version 99; this server reads 1" in refused.getMessage()
    await broker.publish("other", pub(1), HISTORY)
    await keeper.save()
    assert [s.channel for s in read_snapshot(path).streams] == ["other"]


async def test_a_corrupt_snapshot_is_moved_aside_and_the_node_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / SNAPSHOT_NAME
    path.write_bytes(b"this is not a database" * 100)
    broker = MemoryBroker()
    keeper = persistence(tmp_path, broker)
    await keeper.load()
    assert broker.statistics()["streams"] == 0
    assert not path.exists()
    [aside] = matching(tmp_path, f"{SNAPSHOT_NAME}.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    [record] = [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert str(aside) in record.getMessage()
    await keeper.save()
    assert read_snapshot(path).streams == []


async def test_a_corrupt_snapshot_that_cannot_be_moved_is_still_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / SNAPSHOT_NAME).write_bytes(b"junk" * 100)

    def refuse(self: Path, target: Path) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refuse)
    keeper = persistence(tmp_path, MemoryBroker())
    await keeper.load()
    assert "moved to nowhere (Permission denied)" in caplog.text


async def test_an_unreadable_snapshot_is_logged_and_the_node_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_snapshot(tmp_path / SNAPSHOT_NAME, [saved()], WALL)

    def io_error(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(persist, "read_snapshot", io_error)
    broker = MemoryBroker()
    await persistence(tmp_path, broker).load()
    assert broker.statistics()["streams"] == 0
    assert "could not be read or removed (" in caplog.text


async def test_a_failed_save_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the directory should be")
    keeper = persistence(blocker, MemoryBroker())
    await keeper.load()
    await keeper.save()
    assert "history snapshot could not be written" in caplog.text
    assert keeper.last_save is None


async def test_a_save_over_its_time_limit_is_given_up_and_leaves_the_disk_as_it_was(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / SNAPSHOT_NAME
    stopped = threading.Event()

    def stuck(
        path: Path, streams: list[SavedStream], saved_at: float, abort: threading.Event
    ) -> int:
        abort.wait(10)  # a huge snapshot on a slow disk, noticing the abort between batches
        stopped.set()
        raise SnapshotAborted("the write was given up")

    broker = MemoryBroker()
    keeper = persistence(tmp_path, broker, timeout=0.2)
    await keeper.load()
    write_snapshot(path, [saved("previous")], WALL)  # as if another stop had written one
    monkeypatch.setattr(persist, "write_snapshot", stuck)
    await broker.publish("news", pub(1), HISTORY)
    began = time.monotonic()
    with trio.CancelScope() as outer:
        outer.cancel()  # the server is being cancelled: the save is shielded from that
        await keeper.save()
    assert time.monotonic() - began < 2
    assert stopped.wait(5)  # the abandoned thread saw the abort
    assert "took more than 0.2 s" in caplog.text
    assert [s.channel for s in read_snapshot(path).streams] == ["previous"]
    assert keeper.last_save is None


# --- the server: a cancelled run saves, the next run restores, `aether admin node` shows it ---


async def test_a_cancelled_server_run_saves_and_the_next_run_restores(tmp_path: Path) -> None:
    config = make_config(
        {"admin": {"data_dir": str(tmp_path)}, "engine": {"persist_history": True}}
    )
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        news = server.node.resolve("news")
        positions = [await server.node.publish(news, RawJSON(b'{"n":%d}' % n)) for n in (1, 2, 3)]
        view = node_view(server.node, time.time())
        assert view["history_snapshot"]["loaded"] is None
        nursery.cancel_scope.cancel()
    assert (tmp_path / SNAPSHOT_NAME).exists()

    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        node = server.node
        pubs, top = await node.history(node.resolve("news"), HistoryQuery(limit=-1))
        assert top == positions[-1]
        assert [p.data for p in pubs] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
        view = node_view(node, time.time())
        loaded = view["history_snapshot"]["loaded"]
        assert (loaded["streams"], loaded["publications"]) == (1, 3)
        assert loaded["bytes"] > 0
        nursery.cancel_scope.cancel()


async def test_persist_history_off_neither_reads_nor_writes(tmp_path: Path) -> None:
    now = time.time()
    write_snapshot(tmp_path / SNAPSHOT_NAME, [saved("news", top=9, at=now)], now)
    config = make_config({"admin": {"data_dir": str(tmp_path)}})  # tests default to off
    assert config.engine.persist_history is False
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config)
        assert server.durable_history is None
        assert "history_snapshot" not in node_view(server.node, time.time())
        _, top = await server.node.history(server.node.resolve("news"), HistoryQuery())
        assert top.offset == 0
        nursery.cancel_scope.cancel()
    assert read_snapshot(tmp_path / SNAPSHOT_NAME).streams[0].top == 9
