"""`[server] workers = N`: N real `aether serve` worker processes sharing one port over a private
redis-server, run by a real parent (aether_trio/workers/), driven with the centrifuge-python SDK.

What a worker is, is read from the outside: the port its clients reach (`aether_connections` on
each worker's own internal port), its pid (the parent's children), its log lines (`[worker=K]`).
Waits are polls with deadlines (a process gives no other signal); nothing asserts on speed.
The restart policy and the supervisor's edge cases (a worker that ignores SIGTERM, a SIGHUP
before a worker listens) are tested in-process with tiny stand-in workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
from centrifuge import Client, ClientState, SubscriptionState
from conftest import SECRET, token
from ops_helpers import aether_processes, free_base_port
from redis_server import RedisServer
from sdk_helpers import ClientRecorder, SubscriptionRecorder, disconnect_all

from aether_trio.config import ConfigError, load_config, parse_config
from aether_trio.transport import serve_websocket
from aether_trio.transport.listener import open_listening_sockets
from aether_trio.workers import RestartPolicy, Supervisor, child
from aether_trio.workers.supervisor import exit_description, stop_timeout

WAIT = 60.0  # a worker's start on a loaded 2-core machine takes seconds: generous bounds
API_KEY = "workers-test-key"
CHANNEL = "chat:room"


def config_text(port: int, http_port: int, redis: RedisServer, **server: Any) -> str:
    server_table = {
        "port": port, "workers": 2, "worker_restart_delay": 0.2, "worker_max_failed_starts": 3,
        "shutdown_drain_seconds": 2.0, "close_wait_seconds": 0.5, **server,
    }  # fmt: skip
    lines = ["[server]", *(f"{k} = {json.dumps(v)}" for k, v in server_table.items())]
    lines += [
        "[http]", f"port = {http_port}",
        "[token]", f"hmac_secret = {json.dumps(SECRET)}",
        "[engine]", 'type = "redis"',
        "[engine.redis]", f'address = "{redis.address}"', f'prefix = "w{uuid.uuid4().hex[:10]}"',
        "[log]", 'format = "text"',
        "[[api.keys]]", 'name = "test"', f'key = "{API_KEY}"', 'roles = ["publisher"]',
        "[[channel.namespaces]]", 'name = "chat"', "allow_subscribe_for_client = true",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


class Workers:
    """The shared WebSocket port and worker K's internal port, http_port + K."""

    def __init__(self, port: int, http_port: int) -> None:
        self.port, self.http_port = port, http_port

    def connections(self, k: int) -> int:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.http_port + k}/metrics", timeout=10
        ) as r:
            text = r.read().decode()
        match = re.search(r"^aether_connections (\S+)$", text, re.M)
        assert match, text[:500]
        return int(float(match.group(1)))

    def publish(self, k: int, data: Any) -> None:
        body = json.dumps({"channel": CHANNEL, "data": data}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port + k}/api/publish", body,
            {"Content-Type": "application/json", "X-API-Key": API_KEY},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b'"result"' in response.read()


class Parent(Workers):
    """`aether serve -c CONFIG` with workers > 1: the parent process, its log, its workers."""

    def __init__(self, config: Path, port: int, http_port: int, workers: int = 2) -> None:
        super().__init__(port, http_port)
        self.config, self.workers = config, workers
        self.log_path = config.with_suffix(".log")
        # Its own session: whatever a failing test leaves behind is killed as a group.
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aether_trio", "serve", "-c", str(config)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, seconds: float = WAIT) -> list[str]:
        deadline = time.monotonic() + seconds
        while True:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, (
                f"{pattern!r} x{count} not logged within {seconds}s; log:\n{self.log()[-4000:]}"
            )
            time.sleep(0.05)

    def wait_listening(self) -> None:
        for k in range(1, self.workers + 1):
            self.wait_for(rf"worker {k} \(pid \d+\) is listening")

    def worker_pids(self) -> dict[int, int]:
        """Worker number -> pid: the parent's children (forked by any of its threads, so
        found by their parent pid) by their `--instance`."""
        pids = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int(
                    (entry / "stat").read_text().rpartition(")")[2].split()[1]
                )  # fmt: skip
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, NotADirectoryError, ProcessLookupError, IndexError):
                continue
            if ppid == self.process.pid and b"--instance" in argv:
                pids[int(argv[argv.index(b"--instance") + 1])] = int(entry.name)
        assert pids, f"no workers; log:\n{self.log()[-3000:]}"
        return pids

    def wait_exit(self, seconds: float = WAIT) -> int:
        return self.process.wait(timeout=seconds)

    def kill_all(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind, if any
        self.process.wait(timeout=10)


@contextmanager
def parent(tmp_path: Path, redis: RedisServer, **server: Any) -> Iterator[Parent]:
    base = free_base_port(3)
    port, http_port = base + 3, base  # workers' internal ports: http_port + 1, + 2
    config = tmp_path / "aether.toml"
    config.write_text(config_text(port, http_port, redis, **server))
    running = Parent(config, port, http_port, server.get("workers", 2))
    try:
        yield running
    finally:
        running.kill_all()


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return status == "Z"  # exited, waiting for its parent to collect it


def wait_until(condition: Any, what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        time.sleep(0.05)


class Subscriber:
    def __init__(self, url: str, n: int) -> None:
        self.events = ClientRecorder()
        self.client = Client(
            url, events=self.events, token=token(f"u{n}"), proxy=None,
            min_reconnect_delay=0.05, max_reconnect_delay=0.5,
        )  # fmt: skip
        self.sub_events = SubscriptionRecorder()
        self.sub = self.client.new_subscription(CHANNEL, events=self.sub_events)

    async def start(self) -> None:
        await self.client.connect()
        await self.client.ready(timeout=WAIT)
        await self.sub.subscribe()
        await self.sub_events.one("subscribed")

    def received(self) -> list[Any]:
        return self.sub_events.data()


async def subscribers_on_both(srv: Workers) -> list[Subscriber]:
    """Connect subscribers until each worker has some (the kernel picks the worker of each new
    connection by its addresses and ports: a handful is nearly always enough)."""
    url = f"ws://127.0.0.1:{srv.port}/connection/websocket"
    subs: list[Subscriber] = []
    while len(subs) < 60:
        batch = [Subscriber(url, len(subs) + i) for i in range(6)]
        subs += batch
        await asyncio.gather(*(s.start() for s in batch))
        counts = await asyncio.to_thread(lambda: [srv.connections(k) for k in (1, 2)])
        if all(counts):
            assert sum(counts) == len(subs), counts
            return subs
    raise AssertionError(f"60 connections and one worker has none: {counts}")


async def until_received(subs: list[Subscriber], data: Any) -> None:
    async def one(sub: Subscriber) -> None:
        await sub.sub_events.wait("publication", lambda ctx: ctx.pub.data == data, within=WAIT)

    await asyncio.gather(*(one(s) for s in subs))


# --- real workers over Redis ----------------------------------------------------------------------


def test_two_workers_share_the_port_publications_cross_and_a_killed_worker_comes_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with parent(tmp_path, redis_server) as srv:
        srv.wait_listening()
        pids = srv.worker_pids()
        assert sorted(pids) == [1, 2]
        assert len(set(pids.values())) == 2
        # Each worker's log lines say which it is; each has its own internal port.
        for k in (1, 2):
            srv.wait_for(rf"listening on ws://127\.0\.0\.1:{srv.port}\S* \[worker={k}\]")
            srv.wait_for(rf"internal HTTP listening on \S+:{srv.http_port + k} \[worker={k}\]")

        async def scenario() -> None:
            subs = await subscribers_on_both(srv)
            try:
                # Through either worker's API, to the subscribers of both (through Redis).
                for k in (1, 2):
                    await asyncio.to_thread(srv.publish, k, {"via": k})
                    await until_received(subs, {"via": k})

                # SIGKILL: the parent starts worker 2 again; its clients reconnect (to either
                # worker) and are subscribed again; a publication reaches every one.
                os.kill(pids[2], signal.SIGKILL)
                await asyncio.to_thread(
                    srv.wait_for, r"worker 2 exited \(killed by SIGKILL\) after [\d.]+ s; starting"
                )
                await asyncio.to_thread(srv.wait_for, r"worker 2 \(pid \d+\) is listening", 2)
                new_pids = await asyncio.to_thread(srv.worker_pids)
                assert new_pids[1] == pids[1]
                assert new_pids[2] != pids[2]
                moved = [s for s in subs if len(s.events.of("connected")) == 1]
                assert len(moved) < len(subs)  # those of worker 2 were cut off
                for s in subs:
                    await s.sub_events.wait("subscribed", count=len(s.events.of("connected")))
                    assert s.client.state == ClientState.CONNECTED
                    assert s.sub.state == SubscriptionState.SUBSCRIBED
                await asyncio.to_thread(srv.publish, 2, "after the restart")
                await until_received(subs, "after the restart")
            finally:
                await disconnect_all([s.client for s in subs])

        asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT))
        assert srv.process.poll() is None  # the parent itself never stopped


def test_sighup_reaches_every_worker_and_sigterm_drains_them_all(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with parent(tmp_path, redis_server) as srv:
        srv.wait_listening()
        pids = srv.worker_pids()
        # A second namespace in the file; SIGHUP to the parent only: every worker re-reads it.
        srv.config.write_text(srv.config.read_text() + '[[channel.namespaces]]\nname = "more"\n')
        srv.process.send_signal(signal.SIGHUP)
        srv.wait_for(r"received SIGHUP: forwarded to 2 workers")
        for k in (1, 2):
            srv.wait_for(rf"configuration reloaded: 2 namespaces \[worker={k}\]")
        assert srv.worker_pids() == pids  # reloaded, not restarted

        async def scenario() -> None:
            url = f"ws://127.0.0.1:{srv.port}/connection/websocket"
            sub = Subscriber(url, 1)
            await sub.start()
            try:
                # SIGTERM to the parent: each worker tells its clients to reconnect (3001),
                # drains and exits 0; then the parent exits 0.
                srv.process.send_signal(signal.SIGTERM)
                ctx = await sub.events.one("connecting", lambda c: c.code == 3001)
                assert ctx.reason == "shutdown"
            finally:
                await disconnect_all([sub.client])

        asyncio.run(asyncio.wait_for(scenario(), WAIT))
        assert srv.wait_exit() == 0, srv.log()[-3000:]
        assert all(gone(pid) for pid in pids.values())
        log = srv.log()
        assert "received SIGTERM: stopping 2 workers" in log
        for k in (1, 2):
            assert f"worker {k} stopped (exit status 0)" in log
        assert "all 2 workers stopped" in log


def test_workers_whose_parent_was_killed_drain_and_exit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with parent(tmp_path, redis_server) as srv:
        srv.wait_listening()
        pids = srv.worker_pids()
        srv.process.kill()  # no chance to forward anything: the workers see their stdin close
        srv.wait_exit()
        wait_until(lambda: all(gone(pid) for pid in pids.values()), "workers exited")
        for k in (1, 2):
            srv.wait_for(rf"received SIGTERM \[worker={k}\]")


def test_a_process_manager_may_run_the_workers_itself(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """supervisord's numprocs or systemd's aether@K: `aether serve --instance K` with workers = 2
    in the file is worker K, no parent: both share the port, each has its own internal port."""
    base = free_base_port(3)
    port, http_port = base + 3, base
    config = tmp_path / "aether.toml"
    config.write_text(config_text(port, http_port, redis_server))
    with aether_processes(config, 2, tmp_path) as processes:
        for process in processes:
            process.wait_for_log(rf"listening on ws://127\.0\.0\.1:{port}/")
            process.wait_for_log(rf"internal HTTP listening on \S+:{http_port + process.instance} ")
            assert f"[worker={process.instance}]" in process.log()
            assert "starting 2 workers" not in process.log()  # no parent of its own
        srv = Workers(port, http_port)

        async def scenario() -> None:
            subs = await subscribers_on_both(srv)
            try:
                await asyncio.to_thread(srv.publish, 2, "to everyone")
                await until_received(subs, "to everyone")
            finally:
                await disconnect_all([s.client for s in subs])

        asyncio.run(asyncio.wait_for(scenario(), 2 * WAIT))


def test_a_worker_that_keeps_failing_to_start_makes_the_parent_give_up(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with parent(tmp_path, redis_server) as srv, socket.socket() as squatter:
        # Another program holds the port (without SO_REUSEPORT): no worker can listen.
        squatter.bind(("127.0.0.1", srv.port))
        squatter.listen()
        assert srv.wait_exit() == 1
        log = srv.log()
        assert re.search(
            r"worker \d failed to start 3 times in a row \(last: exit status 1; its log says "
            r"why\); giving up: stopping every worker",
            log,
        ), log[-3000:]
        assert "Address already in use" in log  # the worker's own error, in the same log
        assert "is listening" not in log


def test_workers_over_the_memory_engine_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "aether.toml"
    config.write_text("[server]\nport = 8123\nworkers = 2\n")
    for command in ("serve", "check-config"):
        done = subprocess.run(
            [sys.executable, "-m", "aether_trio", command, "-c", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2
        assert 'server.workers: 2 workers need engine.type = "redis"' in done.stderr
        assert "Traceback" not in done.stderr


# --- the configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\nworkers = 2\n", 'server.workers: 2 workers need engine.type = "redis"; with '
         "the memory engine each worker would have channels"),
        ('[server]\nworkers = 2\nport = 0\n[engine]\ntype = "redis"\n',
         "server.port: 2 workers share one port; name it"),
        ("[server]\nworkers = 0\n", "server.workers: expected a number of processes 1..64, got 0"),
        ("[server]\nworkers = 65\n", "expected a number of processes 1..64, got 65"),
        ("[server]\nworker_restart_delay = 0\n", "server.worker_restart_delay"),
        ("[server]\nworker_max_failed_starts = 0\n", "server.worker_max_failed_starts"),
    ],
)  # fmt: skip
def test_bad_worker_settings_are_config_errors(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert message in str(raised.value)


def test_worker_n_shares_the_websocket_port_and_has_its_own_internal_port(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nport = 8000\nworkers = 2\n[http]\nport = 9000\n[engine]\ntype = "redis"\n'
        f'[admin]\ndata_dir = "{tmp_path}"\n'
    )
    config = load_config(path, 2)
    assert config.server.port == 8000  # shared
    assert config.http.port == 9002
    assert config.server.node_name == "aether-2"
    assert config.admin.data_dir == str(tmp_path / "2")
    # One process (workers = 1): --instance N keeps its own WebSocket port, as before.
    assert parse_config({}).server.workers == 1
    assert load_config(None, 2).server.port == 8002


# --- SO_REUSEPORT ---------------------------------------------------------------------------------


async def test_listeners_with_reuse_port_share_a_port_and_plain_ones_do_not() -> None:
    async def ignore(_request: Any) -> None:
        pass

    async with trio.open_nursery() as nursery:
        options: dict[str, Any] = {"handler_nursery": nursery, "max_message_size": 1000,
                                   "connect_timeout": 1.0}  # fmt: skip
        first = await nursery.start(
            lambda task_status: serve_websocket(
                ignore, "127.0.0.1", 0, None, reuse_port=True, task_status=task_status, **options
            )
        )
        second = await nursery.start(
            lambda task_status: serve_websocket(
                ignore, "127.0.0.1", first.port, None, reuse_port=True, task_status=task_status,
                **options,
            )
        )  # fmt: skip
        assert second.port == first.port
        with pytest.raises(OSError, match="Address already in use"):
            await trio.open_tcp_listeners(first.port, host="127.0.0.1")
        nursery.cancel_scope.cancel()


async def test_a_reuse_port_listener_that_cannot_bind_closes_its_sockets() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(OSError, match="Address already in use"):
            await open_listening_sockets(port, "127.0.0.1", reuse_port=True)
        assert len(os.listdir("/proc/self/fd")) == before


async def test_reuse_port_listeners_on_ipv6() -> None:
    sockets = await open_listening_sockets(0, "::1", reuse_port=True)
    try:
        (sock,) = sockets
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert not sock.getblocking()
    finally:
        for item in sockets:
            item.close()


# --- the worker's side of the pipes -------------------------------------------------------------


async def test_a_worker_reports_ready_and_stops_itself_when_its_parent_is_gone() -> None:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child.report_to_parent, out_w, in_r)
                with trio.fail_after(10):
                    assert await trio.to_thread.run_sync(os.read, out_r, 100) == child.READY
                    await trio.sleep(0.05)
                    assert await _no_signal(signals)  # the parent is still there
                    os.close(in_w)  # the parent is gone
                    in_w = -1
                    assert await signals.__anext__() == signal.SIGTERM
    finally:
        for fd in (out_r, out_w, in_r, in_w):
            if fd >= 0:
                os.close(fd)


async def test_a_worker_whose_parent_went_before_it_listened_stops_itself() -> None:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    os.close(out_r)  # nobody reads READY
    os.close(in_w)
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            with trio.fail_after(10):
                await child.report_to_parent(out_w, in_r)
                assert await signals.__anext__() == signal.SIGTERM
    finally:
        os.close(out_w)
        os.close(in_r)


async def _no_signal(signals: Any) -> bool:
    with trio.move_on_after(0.05):
        await signals.__anext__()
        return False
    return True


# --- the restart policy (sans-IO) -----------------------------------------------------------------


def test_restart_delays_double_per_exit_in_a_row_up_to_the_cap() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=4.0, stable_after=60.0)
    delays = [policy.after_exit(started=True, uptime=1.0) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    # A worker that ran for a minute before exiting starts the count again.
    assert policy.after_exit(started=True, uptime=60.0) == 0.5
    assert policy.after_exit(started=True, uptime=59.0) == 1.0


def test_restart_delays_stay_finite_after_very_many_exits() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=30.0)
    for _ in range(2000):
        delay = policy.after_exit(started=True, uptime=0.0)
    assert delay == 30.0


def test_failed_starts_in_a_row_give_up_and_a_start_in_between_resets_them() -> None:
    policy = RestartPolicy(first_delay=1.0, max_delay=100.0, max_failed_starts=3)
    assert policy.after_exit(started=False, uptime=0.1) == 1.0
    assert policy.after_exit(started=False, uptime=0.1) == 2.0
    assert policy.after_exit(started=True, uptime=5.0) == 4.0  # it listened: not a failed start
    assert policy.after_exit(started=False, uptime=0.1) == 8.0
    assert policy.after_exit(started=False, uptime=0.1) == 16.0
    assert policy.after_exit(started=False, uptime=0.1) is None
    assert policy.failed_starts == 3


def test_exit_descriptions_and_the_stop_timeout() -> None:
    assert exit_description(0) == "exit status 0"
    assert exit_description(2) == "exit status 2"
    assert exit_description(-9) == "killed by SIGKILL"
    assert exit_description(-200) == "killed by signal 200"
    assert stop_timeout(5.0, 10.0) == 25
    assert stop_timeout(2.5, 0.2) == 13


# --- the supervisor with stand-in workers (real processes, a few lines of Python each) ------------

# A worker's contract: READY on stdout once listening; SIGTERM -> exit 0; SIGHUP counted.
STAND_IN = r"""
import os, signal, sys, time
mode = sys.argv[1]
log = open(sys.argv[2], "a")
def hup(*_):
    log.write("hup %d\n" % os.getpid()); log.flush()
signal.signal(signal.SIGHUP, hup)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if mode == "slow":
    time.sleep(1.0)
if mode == "crash":
    sys.exit(3)
sys.stdout.write("ready\n"); sys.stdout.flush()
log.write("ready %d\n" % os.getpid()); log.flush()
while True:
    time.sleep(0.05)
"""


def stand_in(tmp_path: Path, mode: str) -> Any:
    script = tmp_path / "worker.py"
    script.write_text(STAND_IN)
    return lambda k: [sys.executable, str(script), mode, str(tmp_path / f"w{k}.log")]


def lines(tmp_path: Path, k: int, word: str) -> int:
    path = tmp_path / f"w{k}.log"
    return path.read_text().split().count(word) if path.exists() else 0


async def poll(condition: Any, seconds: float = 30.0) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - processes give no event to wait on
            await trio.sleep(0.02)


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    tmp_path: Path,
) -> None:
    supervisor = Supervisor(2, stand_in(tmp_path, "stubborn"), RestartPolicy, stop_timeout=0.5)
    async with trio.open_nursery() as nursery:
        result: list[int] = []

        async def run() -> None:
            result.append(await supervisor.run())

        nursery.start_soon(run)
        await poll(lambda: supervisor.listening == {1, 2})
        supervisor.stop()
        supervisor.stop()  # twice: nothing more happens
    assert result == [1]
    assert "still running 0.5 s after SIGTERM: killed" in supervisor.failure


async def test_sighup_waits_for_a_worker_that_does_not_listen_yet(tmp_path: Path) -> None:
    supervisor = Supervisor(1, stand_in(tmp_path, "slow"), RestartPolicy, stop_timeout=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        await poll(lambda: 1 in supervisor.processes)
        os.kill(os.getpid(), signal.SIGHUP)  # the supervisor's signal receiver takes it
        await poll(lambda: lines(tmp_path, 1, "hup") == 1)
        assert lines(tmp_path, 1, "ready") == 1  # the signal came after READY, not before
        assert supervisor.starts[1] == 1  # and it did not kill the worker
        os.kill(os.getpid(), signal.SIGHUP)
        await poll(lambda: lines(tmp_path, 1, "hup") == 2)
        os.kill(os.getpid(), signal.SIGTERM)
    assert not supervisor.failure


async def test_crashing_stand_ins_are_restarted_then_given_up_on(tmp_path: Path) -> None:
    policy = lambda: RestartPolicy(first_delay=0.01, max_failed_starts=3)  # noqa: E731
    supervisor = Supervisor(2, stand_in(tmp_path, "crash"), policy, stop_timeout=5)
    with trio.fail_after(30):
        assert await supervisor.run() == 1
    assert "failed to start 3 times in a row (last: exit status 3" in supervisor.failure
    assert supervisor.starts[1] + supervisor.starts[2] >= 3
