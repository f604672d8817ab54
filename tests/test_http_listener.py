"""The internal HTTP listener: Hypercorn in the server's own Trio run, routing, limits, errors."""

from __future__ import annotations

import httpx
import trio
from conftest import make_config, serve_in

from aether_trio.http.asgi import Request, Response, json_response


async def _get(port: int, path: str, body: bytes | None = None) -> httpx.Response:
    def call() -> httpx.Response:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            if body is None:
                return client.get(path)
            return client.post(path, content=body)

    return await trio.to_thread.run_sync(call)


async def test_routes_unknown_paths_body_limit_and_failures() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config({"http": {"max_body_size": 100}}))
        assert server.http_port > 0

        async def echo(request: Request) -> Response:
            return json_response({"method": request.method, "size": len(request.body)})

        async def broken(_request: Request) -> Response:
            raise RuntimeError("secret internal detail")

        server.http_app.route("/echo", echo)
        server.http_app.route("/broken", broken)

        ok = await _get(server.http_port, "/echo", b"x" * 100)
        assert ok.status_code == 200
        assert ok.json() == {"method": "POST", "size": 100}

        assert (await _get(server.http_port, "/nope")).status_code == 404
        assert (await _get(server.http_port, "/echo", b"x" * 101)).status_code == 413

        failed = await _get(server.http_port, "/broken")
        assert failed.status_code == 500
        assert "secret" not in failed.text
        # The listener keeps serving after a failed request.
        assert (await _get(server.http_port, "/echo")).status_code == 200
        nursery.cancel_scope.cancel()


async def test_http_listener_can_be_disabled() -> None:
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config({"http": {"enabled": False}}))
        assert server.http_port == 0
        nursery.cancel_scope.cancel()
