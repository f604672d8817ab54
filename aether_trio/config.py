"""Configuration: one TOML file structured into frozen attrs classes by a strict cattrs converter.

Every option has a default, so an empty file (or none at all) is a working single-node server on
the in-memory engine. Unknown keys, wrong types and invalid values raise `ConfigError` naming the
key path (`channel.namespaces[1].history_size: expected a number >= 0, got -3`) before anything
listens.
Secrets may be given inline or as `*_file` paths so the TOML itself can be committed.
"""

from __future__ import annotations

import math
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from .tls import server_context

__all__ = [
    "AdminConfig",
    "ApiConfig",
    "ApiKey",
    "ChannelOptions",
    "ClientConfig",
    "Config",
    "ConfigError",
    "EngineConfig",
    "HttpConfig",
    "LimitsConfig",
    "LogConfig",
    "MonitorConfig",
    "Namespace",
    "ServerConfig",
    "TokenConfig",
    "load_config",
    "parse_config",
]

NAMESPACE_NAME = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")
TOKEN_ALGORITHMS = frozenset(
    {
        "HS256", "HS384", "HS512",
        "RS256", "RS384", "RS512",
        "ES256", "ES384", "ES512",
        "EdDSA",
    }
)  # fmt: skip


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key path and what was expected."""


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name}: expected a number >= 0, got {value!r}")


def _port(_inst: object, attr: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attr.name}: expected a port number 0..65535, got {value!r}")


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name}: expected a number > 0, got {value!r}")


def _regex(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{attr.name}: not a valid regular expression ({exc})") from None


# Private ("$": no client subscribes without a subscription token) and without a namespace (so no
# [[channel.namespaces]] entry is needed).
SYSTEM_CHANNEL = re.compile(r"^\$[-a-zA-Z0-9_.]+$")


def _system_channel(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value and not SYSTEM_CHANNEL.match(value):
        raise ValueError(
            f'{attr.name}: expected "" or a name matching {SYSTEM_CHANNEL.pattern}, got {value!r}'
        )


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8000, validator=_port)
    websocket_path: str = "/connection/websocket"
    max_message_size: int = attrs.field(default=65536, validator=_positive)
    shutdown_drain_seconds: float = attrs.field(default=5.0, validator=_non_negative)
    # Time a closing connection waits for the peer's close frame before dropping the socket.
    close_wait_seconds: float = attrs.field(default=5.0, validator=_non_negative)
    node_name: str = "aether"
    # Time a new TCP connection has to complete the WebSocket handshake (slow or half-open peers).
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    # Browser origins allowed to open a WebSocket (aether_trio.origin); no Origin is always allowed.
    allowed_origins: tuple[str, ...] = ()
    # TLS for wss:// (both or neither): a PEM certificate chain and its unencrypted PEM key, paths
    # relative to the config file (made absolute and checked by `resolved`); "" = plain ws://.
    tls_cert_file: str = ""
    tls_key_file: str = ""

    def __attrs_post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise ValueError(f"{missing}: tls_cert_file and tls_key_file go together; set both")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    def resolved(self, base: Path) -> ServerConfig:
        """A copy with the TLS paths made absolute, after building a TLS context from them (a
        `TlsFileError`, a ValueError naming the option, if the files cannot serve)."""
        if not self.tls:
            return self
        resolved = attrs.evolve(
            self,
            tls_cert_file=str(base / self.tls_cert_file),
            tls_key_file=str(base / self.tls_key_file),
        )
        server_context(resolved.tls_cert_file, resolved.tls_key_file)
        return resolved


@attrs.frozen
class HttpConfig:
    """The internal HTTP listener: server API, operator commands, metrics and health."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = attrs.field(default=9000, validator=_port)
    max_body_size: int = attrs.field(default=1 << 20, validator=_positive)


@attrs.frozen
class PersonalChannelConfig:
    enabled: bool = False
    namespace: str = ""


@attrs.frozen
class ClientConfig:
    ping_interval: float = attrs.field(default=25.0, validator=_non_negative)
    pong_timeout: float = attrs.field(default=8.0, validator=_non_negative)
    stale_close_delay: float = attrs.field(default=10.0, validator=_positive)
    expired_close_delay: float = attrs.field(default=25.0, validator=_non_negative)
    expired_sub_close_delay: float = attrs.field(default=25.0, validator=_non_negative)
    sub_expiry_check_interval: float = attrs.field(default=5.0, validator=_positive)
    outbox_max_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    max_messages_in_frame: int = attrs.field(default=16, validator=_positive)
    channel_limit: int = attrs.field(default=128, validator=_non_negative)
    channel_max_length: int = attrs.field(default=255, validator=_positive)
    history_max_publication_limit: int = attrs.field(default=300, validator=_non_negative)
    recovery_max_publication_limit: int = attrs.field(default=300, validator=_non_negative)
    allow_anonymous_connect_without_token: bool = False
    disallow_anonymous_connection_tokens: bool = False
    insecure: bool = False
    personal_channel: PersonalChannelConfig = PersonalChannelConfig()

    def __attrs_post_init__(self) -> None:
        if self.ping_interval and self.pong_timeout >= self.ping_interval:
            raise ValueError("pong_timeout: must be smaller than ping_interval")


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
    leeway: float = attrs.field(default=0.0, validator=_non_negative)
    # JWKS endpoint as a key source (keys chosen by the token header's `kid`).
    jwks_url: str = ""
    jwks_refresh_interval: float = attrs.field(default=300.0, validator=_positive)
    jwks_min_refresh_interval: float = attrs.field(default=10.0, validator=_non_negative)
    jwks_timeout: float = attrs.field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not self.algorithms:
            raise ValueError("algorithms: expected at least one algorithm")
        unknown = sorted(set(self.algorithms) - TOKEN_ALGORITHMS)
        if unknown:
            raise ValueError(
                f"algorithms: unknown algorithm(s) {unknown}; allowed: {sorted(TOKEN_ALGORITHMS)}"
            )
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


PublicationDataFormat = Literal["", "json", "json_object"]
PublicationHtml = Literal["keep", "escape", "strip"]


@attrs.frozen
class ChannelOptions:
    """Options of a namespace (or of channels without one); names follow Centrifugo v6."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = attrs.field(default=0, validator=_non_negative)
    history_ttl: float = attrs.field(default=0.0, validator=_non_negative)
    # Stream top and epoch outlive the publications for this long after the last publish.
    history_meta_ttl: float = attrs.field(default=30 * 24 * 3600.0, validator=_positive)
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_history_for_client: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_anonymous: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = attrs.field(default="", validator=_regex)
    publication_data_format: PublicationDataFormat = ""
    # Largest publication data (its encoded JSON, in bytes) accepted; 0 = only the frame size.
    max_publication_size: int = attrs.field(default=0, validator=_non_negative)
    # HTML in the string values of published data (aether_trio.sanitize): left as it is,
    # escaped, or stripped of tags.
    publication_html: PublicationHtml = "keep"

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


@attrs.frozen
class Namespace(ChannelOptions):
    name: str = attrs.field(default="", kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not NAMESPACE_NAME.match(self.name):
            raise ValueError(
                f"name: expected a namespace name matching {NAMESPACE_NAME.pattern}, "
                f"got {self.name!r}"
            )


@attrs.frozen
class ChannelConfig:
    without_namespace: ChannelOptions = ChannelOptions()
    namespaces: tuple[Namespace, ...] = ()

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for ns in self.namespaces:
            if ns.name in seen:
                raise ValueError(f"namespaces: duplicate namespace name {ns.name!r}")
            seen.add(ns.name)


@attrs.frozen
class EngineConfig:
    type: Literal["memory"] = "memory"


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
    # Every connection is subscribed to it server-side; "" = no system channel.
    system_channel: str = attrs.field(default="$aether.system", validator=_system_channel)
    drain_rate: float = attrs.field(default=100.0, validator=_positive)
    audit_auth_failures_per_minute: int = attrs.field(default=10, validator=_non_negative)


# --- security and limits (issue 5) ---


@attrs.frozen
class LimitsConfig:
    """Rate and size limits (aether_trio.limits); a rate or a count of 0 turns that limit off."""

    command_rate: float = attrs.field(default=100.0, validator=_non_negative)
    command_burst: int = attrs.field(default=200, validator=_positive)
    user_command_rate: float = attrs.field(default=200.0, validator=_non_negative)
    user_command_burst: int = attrs.field(default=400, validator=_positive)
    command_refusals: int = attrs.field(default=20, validator=_positive)
    command_refusal_window: float = attrs.field(default=10.0, validator=_positive)
    max_connections: int = attrs.field(default=10000, validator=_non_negative)
    connection_limit_per_user: int = attrs.field(default=100, validator=_non_negative)
    connections_per_ip: int = attrs.field(default=1000, validator=_non_negative)
    connection_rate_per_ip: float = attrs.field(default=50.0, validator=_non_negative)
    connection_burst_per_ip: int = attrs.field(default=200, validator=_positive)
    channel_publication_rate: float = attrs.field(default=500.0, validator=_non_negative)
    channel_publication_burst: int = attrs.field(default=1000, validator=_positive)
    max_json_depth: int = attrs.field(default=32, validator=_positive)


# --- observability (issue 4) ---


@attrs.frozen
class MonitorConfig:
    """Resource sampling, thresholds, error tracking."""

    sample_interval: float = attrs.field(default=1.0, validator=_positive)
    # 0 turns a threshold off.
    rss_max_bytes: int = attrs.field(default=0, validator=_non_negative)
    open_files_max_ratio: float = attrs.field(default=0.9, validator=_non_negative)
    loop_lag_max_seconds: float = attrs.field(default=0.5, validator=_non_negative)
    outbox_max_total_bytes: int = attrs.field(default=0, validator=_non_negative)
    sentry_dsn: str = attrs.field(default="", repr=False)
    error_ring_size: int = attrs.field(default=100, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.open_files_max_ratio > 1:
            raise ValueError(
                f"open_files_max_ratio: expected a ratio 0..1, got {self.open_files_max_ratio!r}"
            )


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    http: HttpConfig = HttpConfig()
    client: ClientConfig = ClientConfig()
    token: TokenConfig = TokenConfig()
    # Keys for subscription tokens; when it holds no key, `token` verifies those too.
    subscription_token: TokenConfig = TokenConfig()
    channel: ChannelConfig = ChannelConfig()
    engine: EngineConfig = EngineConfig()
    log: LogConfig = LogConfig()
    api: ApiConfig = ApiConfig()
    admin: AdminConfig = AdminConfig()
    monitor: MonitorConfig = MonitorConfig()
    limits: LimitsConfig = LimitsConfig()

    def __attrs_post_init__(self) -> None:
        ns = self.client.personal_channel.namespace
        if ns and ns not in {n.name for n in self.channel.namespaces}:
            raise ValueError(f"client.personal_channel.namespace: unknown namespace {ns!r}")


def _strict_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, prefer_attrib_converters=False)

    # cattrs would happily turn "1" into 1 or 1 into True; a config must say what it means.
    def exact(kind: type, label: str) -> Any:
        def structure(value: Any, _t: Any) -> Any:
            if type(value) is not kind:
                raise TypeError(f"expected {label}, got {type(value).__name__} {value!r}")
            return value

        return structure

    conv.register_structure_hook(str, exact(str, "a string"))
    conv.register_structure_hook(bool, exact(bool, "true or false"))

    def structure_int(value: Any, _t: Any) -> int:
        if type(value) is not int:
            raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")
        return value

    def structure_float(value: Any, _t: Any) -> float:
        if type(value) not in (int, float):
            raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)

    def structure_literal(value: Any, t: Any) -> Any:
        allowed = typing.get_args(t)
        if not any(type(value) is type(a) and value == a for a in allowed):
            choices = ", ".join(repr(a) for a in allowed)
            raise ValueError(f"expected one of {choices}; got {value!r}")
        return value

    def is_literal(t: Any) -> bool:
        return typing.get_origin(t) in (Literal,)

    def structure_str_tuple(value: Any, _t: Any) -> tuple[str, ...]:
        # Without this a string would be split into its characters.
        if type(value) is not list or not all(type(v) is str for v in value):
            raise TypeError(f"expected an array of strings, got {value!r}")
        return tuple(value)

    table_hooks: dict[Any, Any] = {}

    def structure_table(value: Any, t: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected a table, got {type(value).__name__} {value!r}")
        hook = table_hooks.get(t)
        if hook is None:
            hook = table_hooks[t] = make_dict_structure_fn(t, conv, _cattrs_forbid_extra_keys=True)
        return hook(value, t)

    def is_str_tuple(t: Any) -> bool:
        return bool(t == tuple[str, ...])

    # Arrays of tables, by element type, with their TOML spelling for error messages.
    table_arrays: dict[Any, str] = {Namespace: "channel.namespaces", ApiKey: "api.keys"}

    def is_namespaces(t: Any) -> bool:
        args = typing.get_args(t)
        return typing.get_origin(t) is tuple and args[1:] == (...,) and args[0] in table_arrays

    def structure_namespaces(value: Any, t: Any) -> tuple[Any, ...]:
        item_type = typing.get_args(t)[0]
        if type(value) is not list:
            raise TypeError(
                f"expected an array of tables ([[{table_arrays[item_type]}]]), got {value!r}"
            )
        namespaces, errors = [], []
        for index, item in enumerate(value):
            try:
                namespaces.append(structure_table(item, item_type))
            except Exception as exc:
                exc.add_note(f"Structuring namespaces @ index {index}")
                errors.append(exc)
        if errors:
            raise IterableValidationError("invalid namespaces", errors, tuple)
        return tuple(namespaces)

    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(float, structure_float)
    conv.register_structure_hook_func(is_literal, structure_literal)
    conv.register_structure_hook_func(is_str_tuple, structure_str_tuple)
    conv.register_structure_hook_func(attrs.has, structure_table)
    conv.register_structure_hook_func(is_namespaces, structure_namespaces)
    return conv


_CONVERTER = _strict_converter()


def _flatten_errors(exc: BaseException, path: str) -> list[str]:
    """Turn cattrs' nested exception groups into `key.path: what went wrong` lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return [
            f"{path}{'.' if path else ''}{key}: unknown key" for key in sorted(exc.extra_fields)
        ]
    if isinstance(exc, ClassValidationError | IterableValidationError):
        lines: list[str] = []
        for sub in exc.exceptions:
            note = next((n for n in getattr(sub, "__notes__", []) if isinstance(n, str)), "")
            lines.extend(_flatten_errors(sub, _child_path(path, note)))
        return lines
    if isinstance(exc, BaseExceptionGroup):
        return [line for sub in exc.exceptions for line in _flatten_errors(sub, path)]
    message = str(exc)
    if isinstance(exc, KeyError):
        message = "missing required key"
    if isinstance(exc, ValueError) and ":" in message and not isinstance(exc, TypeError):
        # Validators name their attribute first ("history_size: expected ..."): keep the full path.
        attr, _, rest = message.partition(":")
        if all(part.isidentifier() for part in attr.split(".")) and not path.endswith(attr):
            return [f"{path}{'.' if path else ''}{attr}:{rest}"]
    return [f"{path or '<root>'}: {message}"]


def _child_path(path: str, note: str) -> str:
    # cattrs notes look like "Structuring class Config @ attribute server" or "... @ index 2".
    match = re.search(r"@ attribute (\w+)", note)
    if match:
        return f"{path}{'.' if path else ''}{match.group(1)}"
    match = re.search(r"@ index (\d+)", note)
    if match:
        return f"{path}[{match.group(1)}]"
    return path


def parse_config(data: dict[str, Any], base: Path = Path()) -> Config:
    """Structure already-parsed TOML into a `Config`, resolving secret files relative to `base`."""
    try:
        config = _CONVERTER.structure(data, Config)
        return attrs.evolve(
            config,
            server=_resolve_server(config.server, base),
            token=_resolve(config.token, base, "token"),
            subscription_token=_resolve(config.subscription_token, base, "subscription_token"),
            api=_resolve_api(config.api, base),
        )
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(_flatten_errors(exc, ""))
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid configuration:\n  {exc}") from None


def _resolve_api(api: ApiConfig, base: Path) -> ApiConfig:
    try:
        return api.resolved(base)
    except ValueError as exc:
        raise ValueError(f"api.{exc}") from None


def _resolve_server(server: ServerConfig, base: Path) -> ServerConfig:
    try:
        return server.resolved(base)
    except ValueError as exc:
        raise ValueError(f"server.{exc}") from None


def _resolve(token: TokenConfig, base: Path, section: str) -> TokenConfig:
    try:
        return token.resolved(base)
    except ValueError as exc:
        raise ValueError(f"{section}.{exc}") from None


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML file; `None` means the embedded defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path.parent)
