"""One `[[proxies]]` entry as an HTTP client: POST the event's JSON to the endpoint, read the
response, within the proxy's timeout, trying again where that is safe.

The whole call, retries and pauses included, runs in one cancel scope of `timeout` seconds:
running out of time is the backend's failure (`CallFailed("timeout")`), not an exception that
escapes. Only calls that decide without side effects (`idempotent`: connect, refresh,
subscribe, sub_refresh) are tried again, after a connection failure or a 502/503/504 (a proxy in
front of the backend restarting it), with pauses doubling up to `retry_backoff_max`; a publish or
an RPC might have happened on the backend even when its answer was lost, so it is tried once.

Connections to the backend are pooled and kept alive by httpx (its Trio backend), one pool per
proxy entry; `aclose` closes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import httpx
import trio

from ..config import ProxyConfig
from .errors import CallFailed

__all__ = ["RETRY_STATUSES", "HttpProxy"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})
# Largest response body read from a backend: a proxy's answer is small; a backend that streams
# something else must not fill the server's memory.
MAX_RESPONSE_BYTES = 1 << 20


class HttpProxy:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.name = config.name
        # No timeout of httpx's own: the call's cancel scope bounds it. No proxy from the
        # environment, no redirects: the endpoint is what the operator wrote.
        self._client = httpx.AsyncClient(
            timeout=None,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    def headers(self, transport: Mapping[str, str], emulated: Mapping[str, str]) -> dict[str, str]:
        """What this proxy passes on of a connection's headers: the upgrade request's listed in
        `http_headers`, the connect command's listed in `emulated_headers` (a transport header of
        the same name wins, as in Centrifugo)."""
        cfg = self.config
        chosen = {name: emulated[name] for name in cfg.emulated_headers if name in emulated}
        chosen.update({name: transport[name] for name in cfg.http_headers if name in transport})
        return chosen

    async def post(self, body: bytes, headers: Mapping[str, str], *, idempotent: bool) -> bytes:
        """The body of the backend's 200 answer; `CallFailed` otherwise."""
        cfg = self.config
        static = {name.lower(): value for name, value in cfg.static_headers.items()}
        request_headers = {**static, **headers, "content-type": "application/json"}
        retries = cfg.max_retries if idempotent else 0
        pause = cfg.retry_backoff
        failure = CallFailed("timeout", f"no answer within {cfg.timeout} s")
        with trio.move_on_after(cfg.timeout):
            while True:
                answer = await self._attempt(body, request_headers)
                if isinstance(answer, bytes):
                    return answer
                failure = answer
                if not (retries and _retryable(failure)):
                    break
                retries -= 1
                log.info("proxy %s: %s; trying again in %.2f s", self.name, failure, pause)
                await trio.sleep(pause)
                pause = min(pause * 2, cfg.retry_backoff_max)
        raise failure

    async def _attempt(self, body: bytes, headers: dict[str, str]) -> bytes | CallFailed:
        try:
            async with self._client.stream(
                "POST", self.config.endpoint, content=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    status = response.status_code
                    return CallFailed("status", f"HTTP status {status}", status=status)
                # Read to the end (or the timeout), keeping at most MAX_RESPONSE_BYTES: leaving
                # the loop early would leave httpx's nested async generators to the garbage
                # collector unclosed.
                data, size = bytearray(), 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size <= MAX_RESPONSE_BYTES:
                        data += chunk
                if size > MAX_RESPONSE_BYTES:
                    return CallFailed("bad_response", f"response body over {MAX_RESPONSE_BYTES} B")
                return bytes(data)
        except httpx.HTTPError as exc:
            return CallFailed("unreachable", f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        await self._client.aclose()


def _retryable(failure: CallFailed) -> bool:
    return failure.reason == "unreachable" or failure.status in RETRY_STATUSES
