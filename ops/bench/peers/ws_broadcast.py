"""The floor of a hand-written Python broadcast server: `websockets` (asyncio), one room.

Usage: python ws_broadcast.py PORT. A client's first text is its role: `sub` joins the room,
`pub` makes it a publisher whose every text is broadcast verbatim to the room, `idle` just stays;
each gets `ok` once registered. `websockets.broadcast` writes the same frame to every connection
without awaiting (no backpressure), the cheapest fan-out the library offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

room: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    # Load generators drop their sockets without a closing handshake: that is routine here.
    with contextlib.suppress(ConnectionClosed):
        await serve_client(ws)


async def serve_client(ws: ServerConnection) -> None:
    role = await ws.recv()
    if role == "sub":
        room.add(ws)
        try:
            await ws.send("ok")
            await ws.wait_closed()
        finally:
            room.discard(ws)
    elif role == "pub":
        await ws.send("ok")
        async for message in ws:
            broadcast(room, message)
    else:
        await ws.send("ok")
        await ws.wait_closed()


async def main(port: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    # No compression (the load generator offers none anyway); a backlog big enough for a storm.
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
