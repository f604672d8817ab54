"""A real application backend for the proxy tests: a small ASGI app under Hypercorn (its Trio
worker) on 127.0.0.1, in a thread of its own with its own Trio loop, so sync SDK tests and trio
tests can both use it, and a test can stop it (the backend down) and start it again on the same
port (the backend back).

Each path answers with what the test put into `routes` (a function of the request's JSON body and
headers returning the response: a dict sent as JSON with status 200, or a `Reply` with any status,
raw body and delay); every request is recorded in `requests`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve


@attrs.frozen
class Reply:
    status: int = 200
    body: bytes = b"{}"
    delay: float = 0.0


@attrs.frozen
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Route = Callable[[dict[str, Any], dict[str, str]], "dict[str, Any] | Reply"]


class BackendApp:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Recorded] = []
        self.port = 0
        # Called (in the backend's thread) with each request as it arrives.
        self.on_request: Callable[[Recorded], object] = lambda _request: None
        self._lock = threading.Lock()

    def arrival(self, path: str) -> trio.Event:
        """An Event of the caller's Trio run, set once a request for `path` arrives."""
        arrived = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def notify(request: Recorded) -> None:
            if request.path == path:
                token.run_sync_soon(arrived.set)  # thread-safe, never blocks

        self.on_request = notify
        return arrived

    def recorded(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        parsed = orjson.loads(body) if body else {}
        path = scope["path"]
        recorded = Recorded(path, headers, parsed)
        with self._lock:
            self.requests.append(recorded)
        self.on_request(recorded)
        route = self.routes.get(path)
        answer: dict[str, Any] | Reply = (
            route(parsed, headers) if route else Reply(404, b"no route")
        )
        if isinstance(answer, dict):
            answer = Reply(body=orjson.dumps(answer))
        if answer.delay:
            await trio.sleep(answer.delay)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


@attrs.define
class RunningBackend:
    app: BackendApp
    _stop: Callable[[], None]
    _start: Callable[[], None]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.app.port}{path}"

    def stop(self) -> None:
        """The backend goes down: its port refuses connections."""
        self._stop()

    def start(self) -> None:
        """The backend comes back on the same port."""
        self._start()


@contextmanager
def running_backend(app: BackendApp | None = None) -> Iterator[RunningBackend]:
    app = app or BackendApp()
    state: dict[str, Any] = {}

    def run_thread() -> None:
        ready = threading.Event()

        async def main() -> None:
            config = HypercornConfig()
            config.bind = [f"127.0.0.1:{app.port}"]
            config.accesslog = None
            config.graceful_timeout = 0.1
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(serve, app, config)
                app.port = int(binds[0].rsplit(":", 1)[1])
                state["cancel"] = nursery.cancel_scope
                state["token"] = trio.lowlevel.current_trio_token()
                ready.set()

        def thread_main() -> None:
            try:
                trio.run(main)
            except BaseException as exc:
                state["error"] = exc
                ready.set()

        thread = threading.Thread(target=thread_main, name="test-backend", daemon=True)
        thread.start()
        if not ready.wait(10) or "error" in state:
            raise RuntimeError(f"test backend did not start: {state.get('error')!r}")
        state["thread"] = thread

    def stop() -> None:
        thread = state.pop("thread", None)
        if thread is None:
            return
        trio.from_thread.run_sync(state["cancel"].cancel, trio_token=state["token"])
        thread.join(10)

    run_thread()
    try:
        yield RunningBackend(app, stop, run_thread)
    finally:
        stop()
