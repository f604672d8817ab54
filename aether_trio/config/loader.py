"""Configuration: one TOML file structured into frozen attrs classes by a strict cattrs converter.

Every option has a default, so an empty file (or none at all) is a working single-node server on
the in-memory engine. Unknown keys, wrong types and invalid values raise `ConfigError` naming the
key path (`channel.namespaces[1].history_size: expected a number >= 0, got -3`) before anything
listens.
Secrets may be given inline or as `*_file` paths so the TOML itself can be committed.
"""

from __future__ import annotations

import math
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from ..protocol.decoding import error_paths
from ..protocol.options import Namespace
from .backup import BackupConfig
from .channels import ChannelConfig
from .cluster import ClusterConfig
from .proxies import ProxyConfig
from .sections import (
    AdminConfig,
    ApiConfig,
    ApiKey,
    ClientConfig,
    EngineConfig,
    HttpConfig,
    LimitsConfig,
    LogConfig,
    MonitorConfig,
    ServerConfig,
    TokenConfig,
)

__all__ = ["Config", "ConfigError", "for_instance", "load_config", "parse_config"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key path and what was expected."""


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
    backup: BackupConfig = BackupConfig()
    # The application's backend endpoints, by name (aether_trio/backend).
    proxies: tuple[ProxyConfig, ...] = ()
    cluster: ClusterConfig = ClusterConfig()

    def __attrs_post_init__(self) -> None:
        ns = self.client.personal_channel.namespace
        if ns and ns not in {n.name for n in self.channel.namespaces}:
            raise ValueError(f"client.personal_channel.namespace: unknown namespace {ns!r}")
        if self.server.workers > 1 and self.engine.type != "redis":
            raise ValueError(
                f'server.workers: {self.server.workers} workers need engine.type = "redis"; '
                f"with the {self.engine.type} engine each worker would have channels, history "
                "and presence of its own and a publication would reach a part of the "
                "subscribers only (use workers = 1, or the Redis engine: docs/redis.md)"
            )
        self._check_proxy_names()

    def _check_proxy_names(self) -> None:
        names = [proxy.name for proxy in self.proxies]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"proxies: duplicate proxy name(s) {duplicates}")
        references = [
            (f"client.{key}", getattr(self.client, key))
            for key in (
                "connect_proxy_name", "refresh_proxy_name", "rpc_proxy_name",
                "disconnect_proxy_name",
            )
        ]  # fmt: skip
        references.append(("channel.state_proxy_name", self.channel.state_proxy_name))
        spaces = [("channel.without_namespace", self.channel.without_namespace)]
        spaces += [(f"channel.namespaces[{i}]", ns) for i, ns in enumerate(self.channel.namespaces)]
        for path, options in spaces:
            for key in ("subscribe_proxy_name", "publish_proxy_name", "sub_refresh_proxy_name"):
                references.append((f"{path}.{key}", getattr(options, key)))
        for path, name in references:
            if name and name not in names:
                raise ValueError(f"{path}: no [[proxies]] entry is named {name!r}")


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

    def structure_str_table(value: Any, _t: Any) -> dict[str, str]:
        # An inline table of strings ([[proxies]] static_headers).
        if type(value) is not dict or not all(type(v) is str for v in value.values()):
            raise TypeError(f"expected a table of strings, got {value!r}")
        return dict(value)

    def is_str_table(t: Any) -> bool:
        return bool(t == dict[str, str])

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
    table_arrays: dict[Any, str] = {
        Namespace: "channel.namespaces",
        ApiKey: "api.keys",
        ProxyConfig: "proxies",
    }

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
                exc.add_note(IterableValidationNote(f"@ index {index}", index, item_type))
                errors.append(exc)
        if errors:
            raise IterableValidationError("invalid namespaces", errors, tuple)
        return tuple(namespaces)

    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(float, structure_float)
    conv.register_structure_hook_func(is_literal, structure_literal)
    conv.register_structure_hook_func(is_str_tuple, structure_str_tuple)
    conv.register_structure_hook_func(is_str_table, structure_str_table)
    conv.register_structure_hook_func(attrs.has, structure_table)
    conv.register_structure_hook_func(is_namespaces, structure_namespaces)
    return conv


_CONVERTER = _strict_converter()


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
            backup=config.backup.resolved(base),
        )
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as exc:
        lines = [f"{path or '<root>'}: {message}" for path, message in error_paths(exc)]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
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


def for_instance(config: Config, instance: int) -> Config:
    """The configuration of process `instance` (1, 2, ...) of several on one host sharing one
    file (`aether serve --instance N`, the supervisor and systemd templates in ops/): both
    ports are the file's plus N (0 stays 0: the system picks), the node is `<node_name>-N`, and
    its state (history snapshot, bans, audit log) lives in `<[admin] data_dir>/N`, its own.
    With `[server] workers` > 1, process N is worker N: the same, except that every worker
    listens on the file's WebSocket port itself (shared with SO_REUSEPORT)."""
    if instance < 1:
        raise ConfigError(f"--instance: expected a number >= 1, got {instance}")

    def port(base: int, section: str) -> int:
        if base and base + instance > 65535:
            raise ConfigError(f"--instance {instance}: {section}.port {base} + {instance} > 65535")
        return base + instance if base else 0

    return attrs.evolve(
        config,
        server=attrs.evolve(
            config.server,
            port=(
                config.server.port
                if config.server.workers > 1
                else port(config.server.port, "server")
            ),
            node_name=f"{config.server.node_name}-{instance}",
        ),
        http=attrs.evolve(config.http, port=port(config.http.port, "http")),
        admin=attrs.evolve(config.admin, data_dir=str(Path(config.admin.data_dir) / str(instance))),
    )


def load_config(path: str | Path | None, instance: int | None = None) -> Config:
    """Read and validate a TOML file; `None` means the embedded defaults. With `instance`, the
    configuration of that process of several (`for_instance`)."""
    config = _load_file(path)
    return config if instance is None else for_instance(config, instance)


def _load_file(path: str | Path | None) -> Config:
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
