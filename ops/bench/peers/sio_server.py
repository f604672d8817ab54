"""python-socketio on uvicorn (ASGI), one room: the most used Python real-time stack.

Usage: python sio_server.py PORT. Events: `join(room)` enters the room and acknowledges with
"ok"; `pub(room, data)` emits `msg` with `data` to everyone in the room. WebSocket transport only
(clients open `/socket.io/?EIO=4&transport=websocket` directly). Plain `uvicorn` (asyncio loop,
its default WebSocket implementation) as `pip install uvicorn` gives it; no uvloop.
"""

from __future__ import annotations

import logging
import sys

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], logger=False)


@sio.on("join")
async def join(sid: str, room: str) -> str:
    await sio.enter_room(sid, room)
    return "ok"


@sio.on("pub")
async def pub(sid: str, room: str, data: str) -> None:
    await sio.emit("msg", data, room=room)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        socketio.ASGIApp(sio),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
