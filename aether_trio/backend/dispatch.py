"""The backend as the rest of the server sees it: where a call goes (a named proxy, else a hook,
else nowhere: Aether's own rules decide) and what comes back, typed, counted and contained.

    target(name, kind)   the proxy `name` ([[proxies]]) if given, else the hook for `kind`,
                         else None
    call(...)            ask it; the typed result (or None: the backend sent no result), or
                         AppError / AppDisconnect (the backend's answer, passed on as it chose),
                         or ReplyError 100 (temporary) when it gave no usable answer
    tell(...)            an event nobody waits for (disconnect, occupied/vacated), in the
                         background

Every call is counted by (proxy, kind, result) with its duration (`observe`); a failure is
logged and goes to the error ring (`capture`). A config reload replaces the proxies whose entry
changed (`configure`); their connection pools are closed by the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeVar

from ..config import ProxyConfig
from ..protocol.codes import ErrorCode
from ..protocol.decoding import DecodeError
from ..protocol.errors import AppDisconnect, AppError, ReplyError
from .errors import CallFailed
from .hooks import Hooks, HookTarget
from .http import HttpProxy
from .wire import decode_response, decode_result, request_body

__all__ = ["IDEMPOTENT", "KINDS", "Backend", "Target"]

log = logging.getLogger(__name__)

R = TypeVar("R")

KINDS: Final = (
    "connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc",
    "disconnect", "channel_state",
)  # fmt: skip
# Decisions without side effects: safe to ask again after a lost answer.
IDEMPOTENT: Final = frozenset({"connect", "refresh", "subscribe", "sub_refresh"})

Observe = Callable[[str, str, str, float], None]
Capture = Callable[[BaseException, str], None]


class Target(Protocol):
    name: str

    def headers(
        self, transport: Mapping[str, str], emulated: Mapping[str, str]
    ) -> dict[str, str]: ...


class Backend:
    def __init__(
        self,
        proxies: tuple[ProxyConfig, ...],
        hooks: Hooks | None,
        observe: Observe,
        capture: Capture,
    ) -> None:
        self.hooks = hooks or Hooks()
        self.observe = observe
        self.capture = capture
        self._proxies: dict[str, HttpProxy] = {}
        self.configure(proxies)

    def configure(self, proxies: tuple[ProxyConfig, ...]) -> list[HttpProxy]:
        """Use these entries from now on; the proxies no longer used (removed or changed), for
        the caller to close once calls under way are done with them."""
        old, self._proxies = self._proxies, {}
        for cfg in proxies:
            kept = old.get(cfg.name)
            self._proxies[cfg.name] = kept if kept and kept.config == cfg else HttpProxy(cfg)
        kept_ids = {id(proxy) for proxy in self._proxies.values()}
        # What a connection keeps of its headers: what some proxy or hook passes on.
        self.transport_headers = frozenset(
            {name for cfg in proxies for name in cfg.http_headers} | set(self.hooks.headers)
        )
        self.emulated_headers = frozenset(name for cfg in proxies for name in cfg.emulated_headers)
        return [proxy for proxy in old.values() if id(proxy) not in kept_ids]

    def keep_headers(self, raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
        """What a connection keeps of its upgrade request's headers (`raw`: lowercased names):
        the ones some proxy or hook passes on; repeated ones joined as HTTP allows."""
        kept: dict[str, str] = {}
        if not self.transport_headers:
            return kept
        for raw_name, raw_value in raw:
            name = raw_name.decode("latin-1")
            if name in self.transport_headers:
                value = raw_value.decode("latin-1")
                separator = "; " if name == "cookie" else ", "
                kept[name] = f"{kept[name]}{separator}{value}" if name in kept else value
        return kept

    def target(self, proxy_name: str, kind: str) -> HttpProxy | HookTarget | None:
        """Where a `kind` call goes: the named proxy, else the hook, else nowhere (None)."""
        if proxy_name:
            return self._proxies[proxy_name]  # the config names only entries that exist
        hook = self.hooks.hook(kind)
        return HookTarget(hook, self.hooks) if hook is not None else None

    async def call(
        self, target: HttpProxy | HookTarget, kind: str, event: Any, cls: type[R] | None
    ) -> R | None:
        """Ask `target`; its result as a `cls` (None: none sent, or `cls` None: not wanted)."""
        started = time.perf_counter()
        outcome = "cancelled"
        try:
            raw = await self._ask(target, kind, event)
            result = None if raw is None or cls is None else decode_result(raw, cls)
            outcome = "ok"
            return result
        except AppError:
            outcome = "error"
            raise
        except AppDisconnect:
            outcome = "disconnect"
            raise
        except DecodeError as exc:
            outcome = "bad_response"
            raise self._failed(target, kind, CallFailed(outcome, f"result.{exc}")) from None
        except CallFailed as exc:
            outcome = exc.reason
            raise self._failed(target, kind, exc) from None
        finally:
            self.observe(target.name, kind, outcome, time.perf_counter() - started)

    async def _ask(self, target: HttpProxy | HookTarget, kind: str, event: Any) -> Any:
        if isinstance(target, HookTarget):
            return await target.call(kind, event)
        headers = getattr(event, "headers", {})  # a channel event has none
        body = await target.post(request_body(event), headers, idempotent=kind in IDEMPOTENT)
        try:
            response = decode_response(body)
            if response.disconnect is not None:
                d = response.disconnect
                raise AppDisconnect(d.code, d.reason)
            if response.error is not None:
                e = response.error
                raise AppError(e.code, e.message, e.temporary)
        except (DecodeError, ValueError) as exc:
            raise CallFailed("bad_response", f"not a proxy response: {exc}") from None
        return response.result

    def _failed(self, target: HttpProxy | HookTarget, kind: str, exc: CallFailed) -> ReplyError:
        where = f"{kind} {'hook' if isinstance(target, HookTarget) else 'proxy ' + target.name}"
        log.warning("%s failed (%s): %s", where, exc.reason, exc.detail,
                    exc_info=exc.__cause__ is not None and exc.reason == "hook_error")  # fmt: skip
        self.capture(exc.__cause__ or exc, where)
        # Temporary: the SDKs try again with backoff, which is what a backend back up wants.
        return ReplyError(ErrorCode.INTERNAL, f"{where}: {exc.reason}")

    async def aclose(self) -> None:
        for proxy in self._proxies.values():
            await proxy.aclose()
