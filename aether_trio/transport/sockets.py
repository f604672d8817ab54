"""Reading a connection's stream, with the kernel socket reached directly where the stream is a
plain `trio.SocketStream`.

This module holds the transport's only private name: `trio.SocketStream.socket` is public, but
the standard `socket.socket` under that Trio socket is `_sock`. The measured wins that need it
(ops/bench/PROFILE.md): a read is a non-blocking `recv` between the checkpoints Trio would take,
instead of `receive_some`'s three coroutine layers, which an idle connection keeps suspended and
every read passes through; fan-out writes are one synchronous `send` when the kernel has room
(`WebSocketTransport.write_nowait`), and a write that has to wait keeps count of what went out,
so a cancelled one leaves the rest of its frame to the next write instead of a cut frame.
tests/test_transport.py pins what is relied on: the object is the socket Trio reads and writes,
non-blocking, and closed (fileno -1) when Trio closes it.

The socket object is used, never a cached file descriptor: once another task closes the stream,
the number may belong to another connection, while the closed object fails with EBADF.
"""

from __future__ import annotations

import socket

import trio

__all__ = ["RECEIVE_BYTES", "kernel_socket", "receive_some"]

# trio-websocket read 4 KiB at a time; a publisher's burst of frames takes fewer wake-ups with
# more (a read allocates only what arrived).
RECEIVE_BYTES = 16384


def kernel_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking kernel socket of a plain TCP stream; None for anything else (TLS)."""
    if isinstance(stream, trio.SocketStream):
        sock: socket.socket = stream.socket._sock  # type: ignore[attr-defined]
        return sock
    return None


async def receive_some(stream: trio.abc.Stream, raw: socket.socket | None) -> bytes:
    """What arrived (up to RECEIVE_BYTES), b"" at the end of the stream. `raw` is
    `kernel_socket(stream)`. Raises trio.ClosedResourceError when the stream is closed (also by
    another task meanwhile), trio.BrokenResourceError or OSError when the connection broke."""
    if raw is None:
        return bytes(await stream.receive_some(RECEIVE_BYTES))
    # `receive_some` without its layers of coroutines: the same checkpoints (cancellable before,
    # scheduling after) around a non-blocking recv.
    await trio.lowlevel.checkpoint_if_cancelled()
    if raw.fileno() == -1:
        raise trio.ClosedResourceError
    try:
        data = raw.recv(RECEIVE_BYTES)
        waited = False
    except BlockingIOError:
        waited = True  # not waited for in the except block: it would keep the exception alive
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    while True:
        # Raises ClosedResourceError when another task closes the stream meanwhile.
        await trio.lowlevel.wait_readable(raw)
        try:
            return raw.recv(RECEIVE_BYTES)
        except BlockingIOError:
            pass
