"""Limits: may this handshake, connection, command or publication proceed?

Theory of operation. `Limits` belongs to the node and owns every counter and token bucket
(aether_trio.guards.ratelimit) that outlives a connection: open connections on the node and per IP
address, new connections per IP, commands per user, publications per channel. Each connection
gets a `CommandLimiter` with two buckets of its own: commands, and refusals, because a connection
that keeps sending after being told 111 "too many requests" is not going to stop and is closed
with 3013. Every question is answered synchronously from Trio's clock, never awaiting, so an
answer and the action it allows happen with no other task in between (a count checked is the
count acted on). Refusals are counted in aether_refusals_total{reason}.

Who asks what:
- app.py, at the WebSocket handshake: `open_connection(ip, origin)` gives None (admitted and
  counted until `close_connection(ip)`) or the `Refusal` (HTTP status, Retry-After) to answer.
- `Node.admit`, at connect: `check_user_connections` raises 3504 "connection limit".
- `Client`, per command: `CommandLimiter.command` gives None, 111 or 3013.
- the publish command and the server API: `check_publication` raises 107 or 111.

The buckets keyed by IP, user or channel are `KeyedBuckets`, which forget the least recently used
keys beyond a bound, so cycling through addresses or channel names cannot grow them for ever.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import trio

from ..config import Config, LimitsConfig
from ..protocol.channels import ResolvedChannel
from ..protocol.codec import PONG
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import DisconnectError, ReplyError
from .origin import OriginPolicy
from .ratelimit import KeyedBuckets, TokenBucket

__all__ = [
    "REFUSAL_REASONS",
    "CommandLimiter",
    "Limits",
    "LimitsStatistics",
    "Refusal",
    "request_ip",
    "request_origins",
]

# Labels of aether_refusals_total (a fixed set: bounded cardinality).
REFUSAL_REASONS: Final = ("rate_limited", "connection_limit", "origin", "too_large")
# Retry-After (seconds) when the node or an address is full: no bucket says when a slot frees up.
# SDKs reconnect with their own backoff anyway; the header is for other clients and proxies.
FULL_RETRY_AFTER: Final = 5
# Commands a connection may always send, whatever its buckets say: one connect per connection
# (a second one is a 3501), and pongs, which a well-behaved SDK must never be refused.
EXEMPT: Final = frozenset({"connect", PONG})


@attrs.frozen
class Refusal:
    """A refused WebSocket handshake: the HTTP answer and the metric label."""

    status: int
    reason: str
    retry_after: int | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"Retry-After", str(self.retry_after).encode())]

    @property
    def body(self) -> bytes:
        return {403: b"origin not allowed\n", 429: b"too many requests\n"}.get(
            self.status, b"server busy\n"
        )


@attrs.frozen
class LimitsStatistics:
    connections: int  # open WebSocket connections
    addresses: int  # distinct addresses they come from
    # Keys held by the keyed buckets (each bounded by KeyedBuckets.max_keys).
    address_buckets: int
    user_buckets: int
    channel_buckets: int


def request_ip(remote: Any) -> str:
    """The peer address of a WebSocket handshake request (`request.remote`): an `Endpoint`, or
    a string for streams that are not sockets (tests)."""
    address = getattr(remote, "address", None)
    return str(address) if address is not None else str(remote)


def request_origins(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every `Origin` header of a handshake (wsproto lowercases the names)."""
    return [value.decode("latin-1") for name, value in headers if name.lower() == b"origin"]


def _ignore(reason: str) -> None:
    pass


def _keyed(old: KeyedBuckets | None, rate: float, burst: int) -> KeyedBuckets | None:
    """Buckets for (rate, burst), keeping `old` (and what it counted) if they are unchanged."""
    if rate <= 0:
        return None
    if old is not None and (old.rate, old.burst) == (rate, burst):
        return old
    return KeyedBuckets(rate, burst)


class Limits:
    def __init__(
        self,
        config: Config,
        on_refusal: Callable[[str], None] = _ignore,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._on_refusal = on_refusal
        self._clock = clock
        # Open (accepted) WebSocket connections, in total and per address.
        self.connections = 0
        self._per_ip: dict[str, int] = {}
        self._ip_rate: KeyedBuckets | None = None
        self._user_commands: KeyedBuckets | None = None
        self._channel_publications: KeyedBuckets | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply a (re)loaded config. Counters stay; buckets stay unless their rate or burst
        changed; open connections keep the command buckets they were given."""
        cfg: LimitsConfig = config.limits
        self.config = cfg
        self.origins = OriginPolicy(config.server.allowed_origins)
        self._ip_rate = _keyed(
            self._ip_rate, cfg.connection_rate_per_ip, cfg.connection_burst_per_ip
        )
        self._user_commands = _keyed(
            self._user_commands, cfg.user_command_rate, cfg.user_command_burst
        )
        self._channel_publications = _keyed(
            self._channel_publications, cfg.channel_publication_rate, cfg.channel_publication_burst
        )

    def _refuse(self, reason: str) -> None:
        self._on_refusal(reason)

    # --- handshakes ---

    def open_connection(self, ip: str, origins: Iterable[str] = ()) -> Refusal | None:
        """None if a WebSocket from `ip` with these `Origin` headers may open (it is counted
        until `close_connection(ip)`), else how to refuse the handshake."""
        refusal = self._check_handshake(ip, origins)
        if refusal is not None:
            self._refuse(refusal.reason)
            return refusal
        self.connections += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return None

    def _check_handshake(self, ip: str, origins: Iterable[str]) -> Refusal | None:
        cfg = self.config
        if not all(self.origins.allows(origin) for origin in origins):
            return Refusal(403, "origin")
        if cfg.max_connections and self.connections >= cfg.max_connections:
            return Refusal(503, "connection_limit", FULL_RETRY_AFTER)
        if cfg.connections_per_ip and self._per_ip.get(ip, 0) >= cfg.connections_per_ip:
            return Refusal(429, "connection_limit", FULL_RETRY_AFTER)
        buckets = self._ip_rate
        if buckets is not None and not buckets.take(ip, self._clock()):
            return Refusal(429, "rate_limited", max(1, math.ceil(buckets.retry_after(ip))))
        return None

    def close_connection(self, ip: str) -> None:
        self.connections -= 1
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def connections_from(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    def statistics(self) -> LimitsStatistics:
        def keys(buckets: KeyedBuckets | None) -> int:
            return 0 if buckets is None else len(buckets)

        return LimitsStatistics(
            connections=self.connections,
            addresses=len(self._per_ip),
            address_buckets=keys(self._ip_rate),
            user_buckets=keys(self._user_commands),
            channel_buckets=keys(self._channel_publications),
        )

    # --- connect ---

    def check_user_connections(self, user: str, connected: int) -> None:
        """Raise 3504 if `user`, holding `connected` connections on this node, may not add one.
        Anonymous connections are not counted (the per-IP limits cover them)."""
        limit = self.config.connection_limit_per_user
        if user and limit and connected >= limit:
            self._refuse("connection_limit")
            raise DisconnectError(
                Disconnect.CONNECTION_LIMIT, f"user already has {connected} connections"
            )

    # --- commands ---

    def command_limiter(self) -> CommandLimiter:
        return CommandLimiter(self)

    # --- publications ---

    def check_publication(self, channel: ResolvedChannel, size: int) -> None:
        """Raise 107 if `size` bytes of data are over the channel's max_publication_size, 111 if
        the channel is over its publication rate."""
        maximum = channel.options.max_publication_size
        if maximum and size > maximum:
            self._refuse("too_large")
            raise ReplyError(ErrorCode.BAD_REQUEST, f"publication of {size} bytes over {maximum}")
        buckets = self._channel_publications
        if buckets is not None and not buckets.take(channel.name, self._clock()):
            self._refuse("rate_limited")
            raise ReplyError(ErrorCode.TOO_MANY_REQUESTS, "channel over its publication rate")


class CommandLimiter:
    """One connection's command buckets (and its share of its user's)."""

    __slots__ = ("_commands", "_limits", "_refusals")

    def __init__(self, limits: Limits) -> None:
        cfg, now = limits.config, limits._clock()
        self._limits = limits
        self._commands = (
            TokenBucket(cfg.command_rate, cfg.command_burst, now) if cfg.command_rate else None
        )
        window_rate = cfg.command_refusals / cfg.command_refusal_window
        self._refusals = TokenBucket(window_rate, cfg.command_refusals, now)

    def command(self, method: str, key: str) -> ErrorCode | Disconnect | None:
        """None if a `method` command of user `key` (anonymous: the client id) may be handled;
        else 111 (reply with that error) or 3013 (close: it kept going after its refusals)."""
        if method in EXEMPT:
            return None
        limits = self._limits
        now = limits._clock()
        bucket, users = self._commands, limits._user_commands
        if (bucket is None or bucket.take(now)) and (users is None or users.take(key, now)):
            return None
        limits._refuse("rate_limited")
        if self._refusals.take(now):
            return ErrorCode.TOO_MANY_REQUESTS
        return Disconnect.TOO_MANY_REQUESTS
