"""`/api/admin/<command>` on the internal HTTP listener: admin-role API keys, JSON in and out.

    no key or an unknown key      401, empty body (sampled into the audit log as auth_failure)
    a key without the admin role  403, empty body (likewise)
    unknown command               404 {"error": ...}
    GET on a command that changes state, other methods   405 {"error": ...}
    malformed JSON, wrong types   400 {"error": ..., "field": ...} ("field" absent when the body
                                  as a whole is wrong); nothing was changed
    other refusals                409 / 422 / 404 {"error": ...}
    success                       200 with the command's result object

POST takes a JSON object (an empty body means `{}`); read-only commands also answer GET, with
their parameters in the query string (`GET /api/admin/drain` is `drain_status`). Every command
that changes state is written to the audit log, refused ones included, before the answer goes out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..engines.base import EngineError
from ..http.apiauth import ApiAuth, ApiAuthError
from ..http.asgi import Request, Response, json_response
from .commands import COMMANDS, CommandError
from .params import BadParams, decode, read_body, read_query

if TYPE_CHECKING:
    from .commands import AdminContext

__all__ = ["PREFIX", "AdminRoutes"]

log = logging.getLogger(__name__)

PREFIX = "/api/admin/"
GET_ALIASES = {"drain": "drain_status"}


def _error(status: int, message: str, **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status)


class AdminRoutes:
    def __init__(self, auth: ApiAuth) -> None:
        self._auth = auth
        self.context: AdminContext | None = None  # set once the admin service runs

    async def handle(self, request: Request) -> Response:
        ctx = self.context
        if ctx is None:
            return _error(503, "operator commands are not available yet")
        try:
            key = self._auth.require_role(request, "admin")
        except ApiAuthError as exc:
            ctx.audit.auth_failure(
                "api_key", actor=f"http:{request.client}",
                detail=f"{request.method} {request.path}: {exc} ({exc.status})",
            )  # fmt: skip
            return exc.response
        name = request.path.removeprefix(PREFIX)
        if request.method == "GET":
            name = GET_ALIASES.get(name, name)
        command = COMMANDS.get(name)
        if command is None:
            return _error(404, f"unknown command {name[:64]!r}", commands=sorted(COMMANDS))
        if request.method not in ("POST", "GET") or (
            request.method == "GET" and command.changes_state
        ):
            allowed = "POST" if command.changes_state else "GET, POST"
            return _error(405, f"{name} takes {allowed}")
        status, result, params = await self._run(ctx, name, request)
        if command.changes_state:
            await ctx.audit.append(f"admin.{name}", actor=f"key:{key.name}", params=params,
                                   result=result, ok=status == 200)  # fmt: skip
            await ctx.audit.flush()
        return json_response(result, status)

    async def _run(
        self, ctx: AdminContext, name: str, request: Request
    ) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """(status, result body, parameters as received for the audit log)."""
        command = COMMANDS[name]
        from_query = request.method == "GET"
        raw: dict[str, Any] = {}
        try:
            raw = read_query(request.query) if from_query else read_body(request.body)
            params = decode(command.params, raw, from_query=from_query)
            return 200, await command.run(ctx, params), raw
        except BadParams as exc:
            field = {"field": exc.field} if exc.field else {}
            return 400, {"error": exc.message, **field}, raw
        except CommandError as exc:
            return exc.status, {"error": exc.message}, raw
        except EngineError:  # the shared state (Redis) cannot be written: nothing changed
            log.warning("operator command %s failed in the engine", name, exc_info=True)
            return 503, {"error": "the engine is unavailable, nothing changed: retry"}, raw
        except Exception:  # answered like any failed route, but audited as failed first
            log.exception("operator command %s failed", name)
            return 500, {"error": "internal server error"}, raw
