"""In-process hooks: the backend's extension points as Python callables, for an application that
runs Aether inside its own Trio program (`aether_trio.open_server(config, hooks=Hooks(...))`).

Each hook gets the same event a proxy would be sent (`wire.py`: `ConnectEvent`, ...) and returns
what a proxy's `result` holds: an instance of the result class (`ConnectResult`, ...), a dict of
the same JSON shape, or None (for connect: no credentials, the connection is refused; for the
others: allowed as asked). To refuse, it raises `AppError(code, message, temporary=False)`
(an error reply) or `AppDisconnect(code, reason)` (a close). A hook may be a plain function or
a coroutine function; a plain one runs on the event loop and must not block.

Anything else a hook raises is contained like a backend that is down: the client gets 100
(temporary), the exception goes to the log and the error ring, the connection and the server go
on. A coroutine hook gets `timeout` seconds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from ..protocol.errors import AppDisconnect, AppError
from .errors import CallFailed

__all__ = ["Hook", "HookTarget", "Hooks"]

Hook = Callable[[Any], Any]


def _lowercase(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name.lower() for name in value)


@attrs.frozen(kw_only=True)
class Hooks:
    on_connecting: Hook | None = None
    on_refresh: Hook | None = None
    on_subscribe: Hook | None = None
    on_publish: Hook | None = None
    on_sub_refresh: Hook | None = None
    on_rpc: Hook | None = None
    # Told, never asked (their result is ignored): a connection gone, a channel occupied or
    # vacated.
    on_disconnect: Hook | None = None
    on_channel_event: Hook | None = None
    # Headers of the WebSocket upgrade request the hooks see in `event.headers` (lowercased
    # names); a connection keeps only the headers someone needs.
    headers: tuple[str, ...] = attrs.field(default=(), converter=_lowercase)
    timeout: float = 5.0

    def hook(self, kind: str) -> Hook | None:
        found: Hook | None = getattr(self, _HOOK_NAMES.get(kind, f"on_{kind}"))
        return found


_HOOK_NAMES = {"connect": "on_connecting", "channel_state": "on_channel_event"}


class HookTarget:
    """One hook as a place a call can go (what `HttpProxy` is for a proxy)."""

    name = "hook"

    def __init__(self, hook: Hook, hooks: Hooks) -> None:
        self._hook = hook
        self._hooks = hooks

    def headers(self, transport: Mapping[str, str], emulated: Mapping[str, str]) -> dict[str, str]:
        return {name: transport[name] for name in self._hooks.headers if name in transport}

    async def call(self, kind: str, event: Any) -> Any:
        try:
            with trio.fail_after(self._hooks.timeout):
                result = self._hook(event)
                if inspect.isawaitable(result):
                    result = await result
                return result
        except (AppError, AppDisconnect):
            raise
        except trio.TooSlowError:
            raise CallFailed("timeout", f"hook took over {self._hooks.timeout} s") from None
        except Exception as exc:
            raise CallFailed("hook_error", f"{kind} hook raised {type(exc).__name__}") from exc
