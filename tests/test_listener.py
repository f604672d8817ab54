"""The plain-TCP listener's accept loop (aether_trio/transport/listener.py): every pending
connection accepted per wake-up, the peer's address taken from the accept, and accept failures
that concern one connection or the process's resources never ending the listener."""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import pytest
import trio

from aether_trio.transport import Endpoint
from aether_trio.transport.listener import (
    ACCEPT_BATCH,
    accept_connections,
    open_listening_sockets,
)


class Served:
    """What the serve function saw: for each connection, its remote and how many connections
    had been handed over when it first ran."""

    def __init__(self) -> None:
        self.remotes: list[Endpoint] = []
        self.seen_at_start: list[int] = []
        self.handed_over = 0
        self.all_done = trio.Event()
        self.expected = 0

    async def serve(self, stream: trio.SocketStream, remote: Endpoint) -> None:
        self.seen_at_start.append(self.handed_over)
        self.remotes.append(remote)
        async with stream:  # as serve_connection(close=True) does
            await stream.send_all(b"hi")
        if len(self.remotes) == self.expected:
            self.all_done.set()


class CountingNursery:
    """A nursery that counts what is started in it (the accept loop's hand-over)."""

    def __init__(self, nursery: trio.Nursery, served: Served) -> None:
        self._nursery = nursery
        self._served = served

    def start_soon(self, fn: Any, *args: Any, name: object = None) -> None:
        self._served.handed_over += 1
        self._nursery.start_soon(fn, *args, name=name)


async def test_every_pending_connection_is_accepted_in_one_wake_up() -> None:
    """40 connections wait in the backlog before the loop runs: all 40 are handed over before
    the first one's task runs (one accept per scheduling round would interleave them)."""
    (sock,) = await open_listening_sockets(0, "127.0.0.1")
    port = sock.getsockname()[1]
    served = Served()
    served.expected = 40
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(served.expected)]
    try:
        async with trio.open_nursery() as nursery:
            handlers = CountingNursery(nursery, served)
            # `handlers` counts each hand-over, then starts the task in `nursery`.
            counted: Any = handlers
            nursery.start_soon(accept_connections, sock, served.serve, counted)
            with trio.fail_after(10):
                await served.all_done.wait()
            nursery.cancel_scope.cancel()
        assert served.seen_at_start == [served.expected] * served.expected
        assert served.expected < ACCEPT_BATCH
        # The address each task was given is the client's own.
        assert sorted(r.port for r in served.remotes) == sorted(c.getsockname()[1] for c in clients)
        assert {r.address for r in served.remotes} == {"127.0.0.1"}
        for client in clients:
            client.settimeout(5)
            assert client.recv(2) == b"hi"
    finally:
        for client in clients:
            client.close()
        sock.close()


class FailingAccepts(socket.socket):
    """A real listening socket whose next accepts fail with the given errnos first."""

    failures: list[int]

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            code = self.failures.pop(0)
            raise OSError(code, f"injected {errno.errorcode[code]}")
        return super().accept()


def failing_listener(failures: list[int]) -> FailingAccepts:
    sock = FailingAccepts(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.failures = failures
    return sock


@pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EMFILE, errno.ENOBUFS])
async def test_an_accept_failure_skips_one_connection_or_pauses_then_goes_on(
    code: int, caplog: pytest.LogCaptureFixture, autojump_clock: trio.abc.Clock
) -> None:
    """A connection aborted before it was accepted is skipped; out of descriptors or buffers,
    the loop logs once, pauses and accepts again: every waiting client is served."""
    sock = failing_listener([code])
    port = sock.getsockname()[1]
    served = Served()
    served.expected = 3
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(served.expected)]
    try:
        with caplog.at_level(logging.ERROR, logger="aether_trio.transport.listener"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_connections, sock, served.serve, nursery)
                with trio.fail_after(10):
                    await served.all_done.wait()
                nursery.cancel_scope.cancel()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        if code == errno.ECONNABORTED:
            assert errors == []
        else:
            assert len(errors) == 1, errors
            assert errno.errorcode[code] in errors[0]
    finally:
        for client in clients:
            client.close()
        sock.close()


async def test_an_unexpected_accept_failure_ends_the_listener_loudly() -> None:
    sock = failing_listener([errno.EBADF])
    socket.create_connection(sock.getsockname()).close()
    try:
        with pytest.raises(OSError, match="injected EBADF") as raised, trio.fail_after(10):
            await accept_connections(sock, Served().serve, None)  # type: ignore[arg-type]
        assert raised.value.errno == errno.EBADF
    finally:
        sock.close()
