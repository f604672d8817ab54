"""What `aether healthcheck` talks to, and how: the addresses and credentials of one running
server (`Target`), and the two kinds of request it makes (HTTP on the internal listener, one
WebSocket as a client). A client of the server like any other: it uses the configuration file
for addresses and keys, never the server's internals.

What the probe needs from the configuration (`aether init` sets all of it up):
- `[token]` an HMAC secret: the probe mints its own connection and subscription tokens;
- `[api]` a key with the `publisher` role, by default the one named `healthcheck`;
- a namespace for the probe channels, by default `healthcheck`: the probe subscribes to
  `<namespace>:probe-<random>` with a subscription token, so the namespace needs no client
  permission, and publishes into it through the server API.
"""

from __future__ import annotations

import secrets
import ssl
import time
import urllib.error
import urllib.request

import attrs
import trio

from ..auth.tokens import mint_token
from ..config import Config

__all__ = ["HttpAnswer", "ProbeConfigError", "Target", "http_get", "http_post", "probe_channel"]

PROBE_USER = "aether-healthcheck"
DEFAULT_KEY_NAME = "healthcheck"
DEFAULT_NAMESPACE = "healthcheck"


class ProbeConfigError(Exception):
    """The configuration cannot drive a probe (no HMAC secret, no publisher key)."""


@attrs.frozen
class Target:
    ws_url: str
    http_url: str
    hmac_secret: str = attrs.field(repr=False)
    api_key: str = attrs.field(repr=False)
    namespace: str = DEFAULT_NAMESPACE
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        ws_url: str | None = None,
        http_url: str | None = None,
        key_name: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Target:
        if not config.token.hmac_secret:
            raise ProbeConfigError("no [token] hmac_secret (or hmac_secret_file) to mint tokens")
        return cls(
            ws_url=ws_url or _default_ws_url(config),
            http_url=(http_url or _default_http_url(config)).rstrip("/"),
            hmac_secret=config.token.hmac_secret,
            api_key=_publisher_key(config, key_name),
            namespace=namespace,
            ssl_context=ssl_context,
        )

    def connection_token(self, ttl: int = 60) -> str:
        return mint_token(self.hmac_secret, {"sub": PROBE_USER, "exp": int(time.time()) + ttl})

    def subscription_token(self, channel: str, ttl: int = 60) -> str:
        claims = {"sub": PROBE_USER, "channel": channel, "exp": int(time.time()) + ttl}
        return mint_token(self.hmac_secret, claims)


def probe_channel(namespace: str) -> str:
    """A channel of this probe's own: concurrent probes never see each other's publications."""
    return f"{namespace}:probe-{secrets.token_hex(6)}"


def _local(host: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _default_ws_url(config: Config) -> str:
    server = config.server
    scheme = "wss" if server.tls else "ws"
    return f"{scheme}://{_local(server.host)}:{server.port}{server.websocket_path}"


def _default_http_url(config: Config) -> str:
    return f"http://{_local(config.http.host)}:{config.http.port}"


def _publisher_key(config: Config, name: str | None) -> str:
    keys = config.api.keys
    if name is not None:
        for key in keys:
            if key.name == name:
                if "publisher" not in key.roles and "admin" not in key.roles:
                    raise ProbeConfigError(f"API key {name!r} has no publisher role")
                return key.key
        raise ProbeConfigError(f"no [api] key named {name!r}")
    for key in sorted(keys, key=lambda k: k.name != DEFAULT_KEY_NAME):
        if "publisher" in key.roles or "admin" in key.roles:
            return key.key
    raise ProbeConfigError("no [api] key with the publisher role to publish the probe")


@attrs.frozen
class HttpAnswer:
    status: int
    body: bytes


def _request(request: urllib.request.Request, timeout: float) -> HttpAnswer:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpAnswer(response.status, response.read())
    except urllib.error.HTTPError as exc:  # an answer all the same (503 from /ready)
        return HttpAnswer(exc.code, exc.read())


async def http_get(url: str, seconds: float) -> HttpAnswer:
    """GET in a worker thread; OSError (refused, unreachable) or TooSlowError after `seconds`."""
    request = urllib.request.Request(url, method="GET")
    with trio.fail_after(seconds):
        return await trio.to_thread.run_sync(_request, request, seconds, abandon_on_cancel=True)


async def http_post(url: str, body: bytes, headers: dict[str, str], seconds: float) -> HttpAnswer:
    request = urllib.request.Request(
        url, body, {"Content-Type": "application/json", **headers}, method="POST"
    )
    with trio.fail_after(seconds):
        return await trio.to_thread.run_sync(_request, request, seconds, abandon_on_cancel=True)
