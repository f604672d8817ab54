"""A small ASGI application: exact-path routes to async functions of `Request` -> `Response`.

Hypercorn parses HTTP; this module only reads the body (refusing more than `max_body_size` with
413 before a route runs), dispatches, and turns an unexpected exception into a bare 500 that says
nothing about the server (the traceback goes to the log only).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import attrs
import orjson
import trio

from ..guards.proxies import TrustedProxies
from ..observe.logs import request_id_var

__all__ = ["HttpApp", "Request", "Response", "Route", "json_response"]

log = logging.getLogger(__name__)


@attrs.frozen
class Request:
    method: str
    path: str
    # Lower-cased header names; the last value wins for repeated headers.
    headers: dict[str, str]
    query: dict[str, list[str]]
    body: bytes
    client: str = ""


@attrs.frozen
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(value))


Route = Callable[[Request], Awaitable[Response]]

NOT_FOUND = Response(404, b"Not Found", "text/plain")
TOO_LARGE = Response(413, b"Request Entity Too Large", "text/plain")
TIMEOUT = Response(408, b"Request Timeout", "text/plain", (("connection", "close"),))
INTERNAL = Response(500, b"Internal Server Error", "text/plain")


class HttpApp:
    def __init__(self, max_body_size: int, read_timeout: float = 10.0) -> None:
        self.max_body_size = max_body_size
        # A body that has not arrived in full by then is answered 408: a client announcing more
        # than it sends must not hold a request (and its task) open for ever.
        self.read_timeout = read_timeout
        self._routes: dict[str, Route] = {}
        self._prefixes: list[tuple[str, Route]] = []
        # Told about a route that raised (the node's error tracker), besides the log line.
        self.on_error: Callable[[BaseException, str], None] | None = None
        # The trusted reverse proxies (read per request: a reload may change them); a request
        # from one of them is the client it names in X-Forwarded-For / X-Real-IP.
        self.proxies: Callable[[], TrustedProxies] | None = None

    def route(self, path: str, handler: Route) -> None:
        self._routes[path] = handler

    def route_prefix(self, prefix: str, handler: Route) -> None:
        """Every path under `prefix` (e.g. "/api/") goes to `handler`."""
        self._prefixes.append((prefix, handler))

    def _find(self, path: str) -> Route | None:
        handler = self._routes.get(path)
        if handler is None:
            # The longest matching prefix wins, so "/api/admin/" can live beside "/api/".
            matches = [(len(p), h) for p, h in self._prefixes if path.startswith(p)]
            handler = max(matches, key=lambda match: match[0])[1] if matches else None
        return handler

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        handler = self._find(scope["path"])
        response = NOT_FOUND
        if handler is not None:
            body: bytes | None = b""
            with trio.move_on_after(self.read_timeout) as reading:
                body = await self._read_body(scope, receive)
            if reading.cancelled_caught:
                log.info("HTTP %s %s: body not received within %s s", scope["method"],
                         scope["path"][:100], self.read_timeout)  # fmt: skip
                response = TIMEOUT
            elif body is None:
                response = TOO_LARGE
            else:
                request = Request(
                    method=scope["method"],
                    path=scope["path"],
                    headers=_headers(scope),
                    query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
                    body=body,
                    client=self._client(scope),
                )
                # Names this request in every log line written while handling it; echoed back.
                request_id = _request_id(request.headers)
                request_id_var.set(request_id)
                try:
                    response = await handler(request)
                except Exception as exc:
                    log.exception("HTTP %s %s failed", request.method, request.path)
                    if self.on_error is not None:
                        self.on_error(exc, f"HTTP {request.method} {request.path[:100]}")
                    response = INTERNAL
                response = attrs.evolve(
                    response, headers=(*response.headers, ("x-request-id", request_id))
                )
        await _send(send, response)

    def _client(self, scope: dict[str, Any]) -> str:
        """`host:port` of the peer, or the client's address a trusted proxy names."""
        peer = scope.get("client")
        if not peer:
            return ""
        if self.proxies is not None:
            forwarded = self.proxies().client_of(str(peer[0]), scope["headers"])
            if forwarded is not None:
                return forwarded
        return f"{peer[0]}:{peer[1]}"

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        length = _headers(scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_size:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""  # disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _request_id(headers: dict[str, str]) -> str:
    """The caller's X-Request-Id when it is a plain short token, else a new one."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _send(send: Any, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        *((k.encode(), v.encode()) for k, v in response.headers),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
