"""The sections of the configuration (everything but channels, `[backup]` in backup.py and
`[[proxies]]` in proxies.py): frozen attrs classes whose validators check single values;
`config` structures TOML into them and names key paths in errors.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import attrs

from ..protocol.options import non_negative, positive, valid_regex
from .pem import check_files

__all__ = [
    "API_ROLES",
    "TOKEN_ALGORITHMS",
    "AdminConfig",
    "ApiConfig",
    "ApiKey",
    "ClientConfig",
    "EngineConfig",
    "HttpConfig",
    "LimitsConfig",
    "LogConfig",
    "MonitorConfig",
    "PersonalChannelConfig",
    "RedisEngineConfig",
    "ServerConfig",
    "TokenConfig",
]

TOKEN_ALGORITHMS = frozenset(
    {
        "HS256", "HS384", "HS512",
        "RS256", "RS384", "RS512",
        "ES256", "ES384", "ES512",
        "EdDSA",
    }
)  # fmt: skip


def _port(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attr.name}: expected a port number 0..65535, got {value!r}")


MAX_WORKERS = 64


def _workers(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(
            f"{attr.name}: expected a number of processes 1..{MAX_WORKERS}, got {value!r}"
        )


# Private ("$": no client subscribes without a subscription token) and without a namespace (so no
# [[channel.namespaces]] entry is needed).
SYSTEM_CHANNEL = re.compile(r"^\$[-a-zA-Z0-9_.]+$")


def _system_channel(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value and not SYSTEM_CHANNEL.match(value):
        raise ValueError(
            f'{attr.name}: expected "" or a name matching {SYSTEM_CHANNEL.pattern}, got {value!r}'
        )


def _networks(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for text in value:
        try:
            ipaddress.ip_network(text)
        except ValueError as exc:
            raise ValueError(
                f'{attr.name}: expected IP addresses or CIDR networks such as "10.0.0.0/8"; {exc}'
            ) from None


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8000, validator=_port)
    websocket_path: str = "/connection/websocket"
    max_message_size: int = attrs.field(default=65536, validator=positive)
    shutdown_drain_seconds: float = attrs.field(default=5.0, validator=non_negative)
    # Time a closing connection waits for the peer's close frame before dropping the socket.
    close_wait_seconds: float = attrs.field(default=5.0, validator=non_negative)
    node_name: str = "aether"
    # Time a new TCP connection has to complete the WebSocket handshake (slow or half-open peers).
    handshake_timeout: float = attrs.field(default=10.0, validator=positive)
    # Browser origins allowed to open a WebSocket (guards/origin.py); no Origin is always allowed.
    allowed_origins: tuple[str, ...] = ()
    # TLS for wss:// (both or neither): a PEM certificate chain and its unencrypted PEM key, paths
    # relative to the config file (made absolute and checked by `resolved`); "" = plain ws://.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Reverse proxies (CIDRs) whose X-Forwarded-For / X-Real-IP name the client
    # (guards/proxies.py); from any other peer those headers are ignored.
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    # Processes sharing `port` on this host (SO_REUSEPORT), run and restarted by `aether serve`
    # (workers/); more than one needs the Redis engine (checked in `Config`).
    workers: int = attrs.field(default=1, validator=_workers)
    # A worker that exits before it listens has failed to start; this many failed starts in a
    # row and the parent stops every worker and exits 1 instead of restarting for ever.
    worker_max_failed_starts: int = attrs.field(default=5, validator=positive)
    # Restart back-off of a worker that exited: the first delay, doubled per exit in a row (an
    # exit after a minute up starts again from the first), at most the second.
    worker_restart_delay: float = attrs.field(default=0.5, validator=positive)
    worker_restart_max_delay: float = attrs.field(default=30.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.workers > 1 and self.port == 0:
            raise ValueError(
                f"port: {self.workers} workers share one port; name it (0 would give each "
                "worker a port of its own)"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise ValueError(f"{missing}: tls_cert_file and tls_key_file go together; set both")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def resolved(self, base: Path) -> ServerConfig:
        """A copy with the TLS paths made absolute, after checking the files (a `TlsFileError`, a
        ValueError naming the option, if they cannot serve)."""
        if not self.tls:
            return self
        resolved = attrs.evolve(
            self,
            tls_cert_file=str(base / self.tls_cert_file),
            tls_key_file=str(base / self.tls_key_file),
        )
        check_files(resolved.tls_cert_file, resolved.tls_key_file)
        return resolved


@attrs.frozen
class HttpConfig:
    """The internal HTTP listener: server API, operator commands, metrics and health."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = attrs.field(default=9000, validator=_port)
    max_body_size: int = attrs.field(default=1 << 20, validator=positive)
    # Seconds a request's body may take to arrive in full (then 408), and the longest a read of
    # a request head may wait for the next bytes; idle keep-alive connections close after 5 s.
    read_timeout: float = attrs.field(default=10.0, validator=positive)


@attrs.frozen
class PersonalChannelConfig:
    enabled: bool = False
    namespace: str = ""


@attrs.frozen
class ClientConfig:
    ping_interval: float = attrs.field(default=25.0, validator=non_negative)
    pong_timeout: float = attrs.field(default=8.0, validator=non_negative)
    stale_close_delay: float = attrs.field(default=10.0, validator=positive)
    expired_close_delay: float = attrs.field(default=25.0, validator=non_negative)
    expired_sub_close_delay: float = attrs.field(default=25.0, validator=non_negative)
    # How often a connection adds its presence entries again, so that they outlive the Redis
    # engine's presence_ttl while it is connected (0: never; the memory engine needs none).
    presence_update_interval: float = attrs.field(default=25.0, validator=non_negative)
    sub_expiry_check_interval: float = attrs.field(default=5.0, validator=positive)
    outbox_max_bytes: int = attrs.field(default=1 << 20, validator=positive)
    max_messages_in_frame: int = attrs.field(default=16, validator=positive)
    channel_limit: int = attrs.field(default=128, validator=non_negative)
    channel_max_length: int = attrs.field(default=255, validator=positive)
    history_max_publication_limit: int = attrs.field(default=300, validator=non_negative)
    recovery_max_publication_limit: int = attrs.field(default=300, validator=non_negative)
    allow_anonymous_connect_without_token: bool = False
    disallow_anonymous_connection_tokens: bool = False
    insecure: bool = False
    personal_channel: PersonalChannelConfig = PersonalChannelConfig()
    # Backend proxies ([[proxies]] names, "" = none; aether_trio/backend): a connect without a
    # token goes to the connect proxy, a refresh to the refresh proxy, every `rpc` command to
    # the RPC proxy.
    connect_proxy_name: str = ""
    refresh_proxy_name: str = ""
    rpc_proxy_name: str = ""
    # Told (never asked) when a connection that had connected is gone: user, client, code, reason.
    disconnect_proxy_name: str = ""

    def __attrs_post_init__(self) -> None:
        if self.ping_interval and self.pong_timeout >= self.ping_interval:
            raise ValueError("pong_timeout: must be smaller than ping_interval")


# Claims with a meaning of their own cannot hold the user id.
_RESERVED_CLAIMS = frozenset(
    {"exp", "nbf", "iat", "aud", "iss", "jti", "info", "b64info", "channels", "subs", "meta",
     "expire_at", "channel", "client", "data", "override"}
)  # fmt: skip


def _claim_name(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not value or value in _RESERVED_CLAIMS:
        reserved = sorted(_RESERVED_CLAIMS)
        raise ValueError(f"{attr.name}: expected a claim name other than {reserved}")


@attrs.frozen
class TokenConfig:
    """Keys that verify JWTs. A key given inline and as a file is an error; empty means not set."""

    hmac_secret: str = ""
    hmac_secret_file: str = ""
    # During a key rotation tokens signed with the previous HMAC secret are still accepted.
    hmac_previous_secret: str = ""
    hmac_previous_secret_file: str = ""
    rsa_public_key: str = ""
    rsa_public_key_file: str = ""
    ecdsa_public_key: str = ""
    ecdsa_public_key_file: str = ""
    ed25519_public_key: str = ""
    ed25519_public_key_file: str = ""
    algorithms: tuple[str, ...] = (
        "HS256", "HS384", "HS512",
        "RS256", "RS384", "RS512",
        "ES256", "ES384", "ES512",
        "EdDSA",
    )  # fmt: skip
    audience: str = ""
    issuer: str = ""
    # Regular expressions (searched, as Centrifugo's Go regexp MatchString) one `aud` entry, or
    # the `iss` claim, must match; each excludes its exact-match twin.
    audience_regex: str = attrs.field(default="", validator=valid_regex)
    issuer_regex: str = attrs.field(default="", validator=valid_regex)
    # The claim holding the user id (a string), as Centrifugo's `user_id_claim`.
    user_id_claim: str = attrs.field(default="sub", validator=_claim_name)
    leeway: float = attrs.field(default=0.0, validator=non_negative)
    # JWKS endpoint as a key source (keys chosen by the token header's `kid`).
    jwks_url: str = ""
    jwks_refresh_interval: float = attrs.field(default=300.0, validator=positive)
    jwks_min_refresh_interval: float = attrs.field(default=10.0, validator=non_negative)
    jwks_timeout: float = attrs.field(default=5.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError("algorithms: expected at least one algorithm")
        unknown = sorted(set(self.algorithms) - TOKEN_ALGORITHMS)
        if unknown:
            raise ValueError(
                f"algorithms: unknown algorithm(s) {unknown}; allowed: {sorted(TOKEN_ALGORITHMS)}"
            )
        for name in ("audience", "issuer"):
            if getattr(self, name) and getattr(self, name + "_regex"):
                raise ValueError(f"{name}: give either {name} or {name}_regex, not both")
        for name in ("hmac_secret", "hmac_previous_secret", "rsa_public_key", "ecdsa_public_key",
                     "ed25519_public_key"):  # fmt: skip
            if getattr(self, name) and getattr(self, name + "_file"):
                raise ValueError(f"{name}: give either {name} or {name}_file, not both")

    def resolved(self, base: Path) -> TokenConfig:
        """A copy with every `*_file` read into its inline field (paths relative to the config)."""
        changes: dict[str, str] = {}
        for field in attrs.fields(TokenConfig):
            if field.name.endswith("_file") and getattr(self, field.name):
                path = base / getattr(self, field.name)
                try:
                    text = path.read_text()
                except OSError as exc:
                    raise ValueError(f"{field.name}: cannot read {path}: {exc.strerror}") from None
                key = field.name.removesuffix("_file")
                # A trailing newline from an editor is not part of an HMAC secret.
                changes[key] = text.strip() if key.startswith("hmac") else text
                changes[field.name] = ""
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]

    @property
    def has_any_key(self) -> bool:
        return any(
            (
                self.hmac_secret,
                self.rsa_public_key,
                self.ecdsa_public_key,
                self.ed25519_public_key,
                self.jwks_url,
            )
        )


def _redis_address(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix") or not rest:
        expected = "redis://host:port/db, rediss://... or unix://path"
        raise ValueError(f"{attr.name}: expected {expected}, got {value!r}")


def _redis_addresses(inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for address in value:
        _redis_address(inst, attr, address)
    if len(set(value)) != len(value):
        raise ValueError(f"{attr.name}: an address is listed twice")


def _host_ports(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{attr.name}: expected host:port, got {item!r}")


@attrs.frozen
class RedisEngineConfig:
    """`[engine.redis]`: read only when `[engine] type = "redis"` (docs/redis.md).

    One Redis (`address`), several sharded by channel (`addresses`), a master found through
    Sentinel (`sentinel_addresses` + `sentinel_master_name`; `address` then gives the scheme,
    credentials and db), or a Redis Cluster (`cluster_addresses`): one of the last three at most.
    """

    address: str = attrs.field(default="redis://127.0.0.1:6379/0", validator=_redis_address)
    addresses: tuple[str, ...] = attrs.field(default=(), validator=_redis_addresses)
    sentinel_addresses: tuple[str, ...] = attrs.field(default=(), validator=_host_ports)
    sentinel_master_name: str = ""
    sentinel_password: str = ""
    cluster_addresses: tuple[str, ...] = attrs.field(default=(), validator=_redis_addresses)
    # Every key and PUB/SUB channel name starts with it: nodes sharing a Redis share a prefix.
    prefix: str = attrs.field(default="aether", validator=attrs.validators.min_len(1))
    connect_timeout: float = attrs.field(default=1.0, validator=positive)
    io_timeout: float = attrs.field(default=4.0, validator=positive)
    presence_ttl: float = attrs.field(default=60.0, validator=positive)
    probe_interval: float = attrs.field(default=2.0, validator=positive)
    pipelining: bool = True

    def __attrs_post_init__(self) -> None:
        chosen = [name for name in ("addresses", "sentinel_addresses", "cluster_addresses")
                  if getattr(self, name)]  # fmt: skip
        if len(chosen) > 1:
            raise ValueError(f"{chosen[1]}: set at most one of addresses, sentinel_addresses and "
                             "cluster_addresses")  # fmt: skip
        if bool(self.sentinel_addresses) != bool(self.sentinel_master_name):
            missing = "sentinel_master_name" if self.sentinel_addresses else "sentinel_addresses"
            raise ValueError(f"{missing}: sentinel_addresses and sentinel_master_name go together")
        if self.cluster_addresses and ("{" in self.prefix or "}" in self.prefix):
            raise ValueError("prefix: no braces with cluster_addresses (they make hash tags)")


@attrs.frozen
class EngineConfig:
    type: Literal["memory", "redis"] = "memory"
    # The memory engine's streams are saved to [admin] data_dir at a graceful stop and restored
    # at start (engines/persist.py); the save is given up after persist_timeout seconds.
    persist_history: bool = True
    persist_timeout: float = attrs.field(default=10.0, validator=positive)
    redis: RedisEngineConfig = RedisEngineConfig()


@attrs.frozen
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    # JSON lines for log collectors, or readable text for a terminal.
    format: Literal["json", "text"] = "json"


# --- server HTTP API and operator commands (issue 3) ---


API_ROLES = ("publisher", "reader", "admin")


@attrs.frozen
class ApiKey:
    """One server API key: `name` identifies it in logs, `roles` say what it may call."""

    name: str = ""
    key: str = attrs.field(default="", repr=False)
    key_file: str = ""
    roles: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: expected a non-empty name")
        if self.key and self.key_file:
            raise ValueError("key: give either key or key_file, not both")
        if not self.key and not self.key_file:
            raise ValueError("key: expected a non-empty key (or key_file)")
        if not self.roles:
            raise ValueError(f"roles: expected at least one of {list(API_ROLES)}")
        unknown = sorted(set(self.roles) - set(API_ROLES))
        if unknown:
            raise ValueError(f"roles: unknown role(s) {unknown}; allowed: {list(API_ROLES)}")

    def resolved(self, base: Path) -> ApiKey:
        """A copy with `key_file` (relative to the config file) read into `key`."""
        if not self.key_file:
            return self
        path = base / self.key_file
        try:
            key = path.read_text().strip()  # an editor's trailing newline is not part of it
        except OSError as exc:
            raise ValueError(f"key_file: cannot read {path}: {exc.strerror}") from None
        if not key:
            raise ValueError(f"key_file: {path} is empty")
        return attrs.evolve(self, key=key, key_file="")


@attrs.frozen
class ApiConfig:
    """Keys and options of the server HTTP API under [http] (`/api/<method>`)."""

    keys: tuple[ApiKey, ...] = ()
    error_mode: Literal["result", "transport"] = "result"
    # Commands one `batch` request may carry (more: 400): a batch runs in one task, and its size
    # bounds how long one request may keep the server busy.
    max_batch_commands: int = attrs.field(default=1000, validator=positive)
    # How long a publish's result is kept for its `idempotency_key` (centrifuge's
    # idempotent_result_ttl): a retry with the key within it is answered with that result.
    idempotent_result_ttl: float = attrs.field(default=300.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        names = [key.name for key in self.keys]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"keys: duplicate key name(s) {duplicates}")

    def resolved(self, base: Path) -> ApiConfig:
        keys: list[ApiKey] = []
        for index, key in enumerate(self.keys):
            try:
                keys.append(key.resolved(base))
            except ValueError as exc:
                raise ValueError(f"keys[{index}].{exc}") from None
        secrets = [key.key for key in keys]
        if len(set(secrets)) != len(secrets):
            raise ValueError("keys: two entries have the same key; each key needs its own")
        return attrs.evolve(self, keys=tuple(keys))


@attrs.frozen
class AdminConfig:
    """Operator commands, durable state (bans, revocations) and the audit log."""

    data_dir: str = "data"
    # Every connection is subscribed to it server-side; "" = no system channel. Off by default:
    # SDKs report it as a server-side subscription the application never asked for.
    system_channel: str = attrs.field(default="", validator=_system_channel)
    drain_rate: float = attrs.field(default=100.0, validator=positive)
    audit_auth_failures_per_minute: int = attrs.field(default=10, validator=non_negative)


# --- security and limits (issue 5) ---


@attrs.frozen
class LimitsConfig:
    """Rate and size limits (guards/limits.py); a rate or a count of 0 turns that limit off."""

    command_rate: float = attrs.field(default=100.0, validator=non_negative)
    command_burst: int = attrs.field(default=200, validator=positive)
    user_command_rate: float = attrs.field(default=200.0, validator=non_negative)
    user_command_burst: int = attrs.field(default=400, validator=positive)
    command_refusals: int = attrs.field(default=20, validator=positive)
    command_refusal_window: float = attrs.field(default=10.0, validator=positive)
    max_connections: int = attrs.field(default=10000, validator=non_negative)
    connection_limit_per_user: int = attrs.field(default=100, validator=non_negative)
    connections_per_ip: int = attrs.field(default=1000, validator=non_negative)
    connection_rate_per_ip: float = attrs.field(default=50.0, validator=non_negative)
    connection_burst_per_ip: int = attrs.field(default=200, validator=positive)
    channel_publication_rate: float = attrs.field(default=500.0, validator=non_negative)
    channel_publication_burst: int = attrs.field(default=1000, validator=positive)
    max_json_depth: int = attrs.field(default=32, validator=positive)


# --- observability (issue 4) ---


@attrs.frozen
class MonitorConfig:
    """Resource sampling, thresholds, error tracking."""

    sample_interval: float = attrs.field(default=1.0, validator=positive)
    # 0 turns a threshold off.
    rss_max_bytes: int = attrs.field(default=0, validator=non_negative)
    open_files_max_ratio: float = attrs.field(default=0.9, validator=non_negative)
    loop_lag_max_seconds: float = attrs.field(default=0.5, validator=non_negative)
    outbox_max_total_bytes: int = attrs.field(default=0, validator=non_negative)
    sentry_dsn: str = attrs.field(default="", repr=False)
    error_ring_size: int = attrs.field(default=100, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.open_files_max_ratio > 1:
            raise ValueError(
                f"open_files_max_ratio: expected a ratio 0..1, got {self.open_files_max_ratio!r}"
            )
