"""The server HTTP API: `POST /api/<method>` on the internal listener (reference section 10).

Checks, in order, each answering before the next one runs:

    body over [http] max_body_size            413  (the ASGI layer, before the route)
    unknown method                            404  empty body
    not POST                                  405  empty body
    no key, or a key that is not configured   401  empty body
    a key without the method's role           403  empty body
    malformed JSON, a field of the wrong type 400  {"code": 107, "message": "bad request",
                                                    "field": "since.offset", "detail": "..."}

then the method runs. Result mode (the default) always answers 200 with `{"result": {...}}` or
`{"error": {"code": C, "message": M}}`; transport mode (`[api] error_mode = "transport"`, or the
request header `X-Centrifugo-Error-Mode: transport`) answers an error with its HTTP status and
`{"code": C, "message": M}`. Nothing is half-applied: a 4xx means nothing ran, and each method
checks all of its input before it acts.

`batch` takes any configured key: each command needs its own method's role (else that command's
reply is error 103), runs on its own, and its error is its reply (`{"replies": [{"publish":
{...}}, {"error": {...}}]}`, no `result` wrapper). The whole body is decoded first, so a
malformed command anywhere is a 400 and no command runs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ...config import ApiKey
from ...engines.base import EngineError
from ..apiauth import ApiAuth, ApiAuthError, Role, has_role
from ..asgi import Request, Response
from . import access as api_access
from . import cluster as api_cluster
from . import methods as api_methods
from .cluster import everywhere
from .errors import ApiError, ApiErrorCode, BadRequestBody
from .methods import ApiContext, Result, error_body
from .requests import BatchCommand, decode_batch, decode_request

if TYPE_CHECKING:
    from ...connection.client import Client
    from ...node import Node

__all__ = ["METHODS", "PREFIX", "ServerApi"]

log = logging.getLogger(__name__)

PREFIX = "/api/"

Runner = Callable[[ApiContext, Any], Awaitable[Result]]

METHODS: dict[str, tuple[Role, Runner]] = {
    "publish": ("publisher", api_methods.publish),
    "broadcast": ("publisher", api_methods.broadcast),
    "presence": ("reader", api_methods.presence),
    "presence_stats": ("reader", api_methods.presence_stats),
    "history": ("reader", api_methods.history),
    # Every node's answer, and commands that reach every node's connections (api/cluster.py).
    "channels": ("reader", api_cluster.channels),
    "info": ("reader", api_cluster.info),
    "subscribe": ("admin", everywhere("subscribe")),
    "unsubscribe": ("admin", everywhere("unsubscribe")),
    "disconnect": ("admin", everywhere("disconnect")),
    "refresh": ("admin", everywhere("refresh")),
    "history_remove": ("admin", api_methods.history_remove),
    # Centrifugo's PRO methods (api/access.py).
    "connections": ("admin", api_cluster.connections),
    "update_user_status": ("publisher", api_access.update_user_status),
    "get_user_status": ("reader", api_access.get_user_status),
    "delete_user_status": ("admin", api_access.delete_user_status),
    "block_user": ("admin", api_access.block_user),
    "unblock_user": ("admin", api_access.unblock_user),
    "revoke_token": ("admin", api_access.revoke_token),
    "invalidate_user_tokens": ("admin", api_access.invalidate_user_tokens),
}
"""Each method's role (`admin` covers all) and implementation; `batch` checks each command's."""

# Commands of one parallel batch running at once.
BATCH_CONCURRENCY = 64
# A sequential batch lets other tasks run after this many commands.
BATCH_YIELD_EVERY = 16

# Methods whose calls change state: each is written to the audit log with its outcome.
STATE_CHANGING = frozenset(
    {
        "publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "refresh",
        "history_remove", "delete_user_status", "block_user", "unblock_user", "revoke_token",
        "invalidate_user_tokens",
    }
)  # fmt: skip

_EMPTY_404 = Response(404, b"", "text/plain")
_EMPTY_405 = Response(405, b"", "text/plain", (("allow", "POST"),))


def _json(value: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(value))


class ServerApi:
    def __init__(self, node: Node[Client], auth: ApiAuth) -> None:
        self.auth = auth
        self.context = ApiContext(node, str(uuid.uuid4()), time.time())
        api_cluster.install(self.context)

    async def handle(self, request: Request) -> Response:
        """The route for every path under PREFIX."""
        method = request.path.removeprefix(PREFIX)
        if method != "batch" and method not in METHODS:
            return _EMPTY_404
        if request.method != "POST":
            return _EMPTY_405
        try:
            if method == "batch":
                key = self.auth.authenticate(request)
            else:
                key = self.auth.require_role(request, METHODS[method][0])
        except ApiAuthError as exc:
            self.context.node.audit.auth_failure(
                "api_key",
                actor=f"http:{request.client}",
                detail=f"{request.method} {request.path}: {exc} ({exc.status})",
            )
            return exc.response
        try:
            if method == "batch":
                batch = decode_batch(request.body)
                most = self.context.node.config.api.max_batch_commands
                if len(batch.commands) > most:
                    detail = f"at most {most} commands in one batch ([api] max_batch_commands)"
                    raise BadRequestBody("commands", detail)
            else:
                decoded = decode_request(method, request.body)
        except BadRequestBody as exc:
            return _bad_request(request, exc)
        audit = self.context.node.audit
        if method == "batch":
            replies = await self._batch(batch.commands, batch.parallel, key)
            if any(command.method in STATE_CHANGING for command in batch.commands):
                await audit.flush()  # the answer acknowledges the changes: logged first
            return _json({"replies": replies})
        try:
            result = await self._run(method, decoded, key.name)
        except ApiError as exc:
            answer = _error_answer(request, exc, self.context.node.config.api.error_mode)
        else:
            answer = _json({"result": result})
        if method in STATE_CHANGING:
            await audit.flush()  # the answer acknowledges the change (or refusal): logged first
        return answer

    async def _run(self, method: str, req: Any, key_name: str) -> Result:
        role, runner = METHODS[method]
        # Calls that act on connections are rare and worth a line each; publishes are not.
        # Never the request itself: it carries payloads.
        level = logging.INFO if role == "admin" else logging.DEBUG
        log.log(level, "API %s by key %r", method, key_name)
        audited = method in STATE_CHANGING
        try:
            result = await runner(self.context, req)
        except ApiError as exc:
            log.info("API %s by key %r refused: %d %s", method, key_name, exc.code, exc.detail)
            if audited:
                await self._audit(method, req, key_name, {"error": int(exc.code)}, ok=False)
            raise
        except EngineError:
            log.warning("API %s by key %r failed in the engine", method, key_name, exc_info=True)
            raise ApiError(ApiErrorCode.INTERNAL) from None
        except Exception:
            log.exception("API %s by key %r failed", method, key_name)
            raise ApiError(ApiErrorCode.INTERNAL) from None
        if audited:
            await self._audit(method, req, key_name, result, ok=True)
        return result

    async def _audit(self, method: str, req: Any, key_name: str, result: Any, *, ok: bool) -> None:
        # Payloads are kept as their size and hash once over 1 KiB (see admin.chain.redact).
        # `append` waits for room in the audit queue: a batch of thousands of changes is slowed
        # down to what storage takes, never recorded with holes.
        params = attrs.asdict(req) if attrs.has(type(req)) else {"request": req}
        await self.context.node.audit.append(
            f"api.{method}", actor=f"key:{key_name}", params=params, result=result, ok=ok
        )

    async def _batch(
        self, commands: tuple[BatchCommand, ...], parallel: bool, key: ApiKey
    ) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = [{} for _ in commands]

        async def run(index: int, command: BatchCommand) -> None:
            method, req = command.method, command.request
            if not method:  # no known method key
                replies[index] = {"error": error_body(ApiErrorCode.NOT_FOUND)}
                return
            if not has_role(key, METHODS[method][0]):
                replies[index] = {"error": error_body(ApiErrorCode.PERMISSION_DENIED)}
                return
            try:
                replies[index] = {method: await self._run(method, req, key.name)}
            except ApiError as exc:
                replies[index] = {"error": error_body(exc.code)}

        if not parallel:
            for index, command in enumerate(commands):
                await run(index, command)
                if index % BATCH_YIELD_EVERY == BATCH_YIELD_EVERY - 1:
                    # Commands that never wait (publishes on the memory engine) would otherwise
                    # keep every other task of the server waiting for the whole batch.
                    await trio.lowlevel.checkpoint()
            return replies
        limiter = trio.CapacityLimiter(BATCH_CONCURRENCY)

        async def run_limited(index: int, command: BatchCommand) -> None:
            async with limiter:
                await run(index, command)

        async with trio.open_nursery() as nursery:
            for index, command in enumerate(commands):
                nursery.start_soon(run_limited, index, command)
        return replies


def _error_answer(request: Request, exc: ApiError, configured_mode: str) -> Response:
    if _transport_mode(request, configured_mode):
        return _json(error_body(exc.code), exc.code.http_status)
    return _json({"error": error_body(exc.code)})


def _transport_mode(request: Request, configured: str) -> bool:
    header = request.headers.get("x-centrifugo-error-mode", "").strip().lower()
    return (header or configured) == "transport"


def _bad_request(request: Request, exc: BadRequestBody) -> Response:
    log.info("HTTP %s %s: bad request body: %s", request.method, request.path, exc)
    body: dict[str, Any] = {"code": 107, "message": "bad request"}
    if exc.field:
        body["field"] = exc.field
    body["detail"] = exc.detail
    return _json(body, 400)
