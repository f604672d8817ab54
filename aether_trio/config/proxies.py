"""`[[proxies]]`: HTTP endpoints of the application's backend speaking Centrifugo's proxy
protocol (aether_trio/backend)."""

from __future__ import annotations

import re
from typing import Any

import attrs

from ..protocol.options import non_negative, positive

__all__ = ["ProxyConfig"]

PROXY_NAME = re.compile(r"^[-a-zA-Z0-9_.]+$")


def _proxy_name(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if not PROXY_NAME.match(value):
        raise ValueError(
            f"{attr.name}: expected a name matching {PROXY_NAME.pattern}, got {value!r}"
        )


def _endpoint(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise ValueError(f"{attr.name}: expected an http:// or https:// URL, got {value!r}")


def _header_names(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for name in value:
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError(f"{attr.name}: {name!r} is not an HTTP header name")


def _static_headers(_inst: object, attr: attrs.Attribute[Any], value: dict[str, str]) -> None:
    _header_names(_inst, attr, tuple(value))
    for name, text in value.items():
        if "\r" in text or "\n" in text:
            raise ValueError(f"{attr.name}: the value of {name!r} holds a line break")


def _lowercase(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name.lower() for name in value)


@attrs.frozen
class ProxyConfig:
    """One `[[proxies]]` entry: an HTTP endpoint of the application's backend speaking
    Centrifugo's proxy protocol, referenced by name ([client] connect_proxy_name, ...,
    a namespace's subscribe_proxy_name, ...)."""

    name: str = attrs.field(default="", validator=_proxy_name)
    endpoint: str = attrs.field(default="", validator=_endpoint)
    # The whole call, retries included (Centrifugo's default: 1 s).
    timeout: float = attrs.field(default=1.0, validator=positive)
    # Headers of the client's WebSocket upgrade request passed on (e.g. Cookie, Authorization);
    # any other header is not.
    http_headers: tuple[str, ...] = attrs.field(
        default=(), validator=_header_names, converter=_lowercase
    )
    # Headers the client sent in its connect command (SDK header emulation) passed on: the
    # client controls them, list only what the backend checks itself (a signed token).
    emulated_headers: tuple[str, ...] = attrs.field(
        default=(), validator=_header_names, converter=_lowercase
    )
    # Calls that decide without side effects (connect, refresh, subscribe, sub_refresh) are
    # tried again after a connection failure or a 502/503/504, at most this many times, after
    # pauses doubling from retry_backoff up to retry_backoff_max; publish and rpc never are.
    max_retries: int = attrs.field(default=2, validator=non_negative)
    retry_backoff: float = attrs.field(default=0.05, validator=positive)
    retry_backoff_max: float = attrs.field(default=0.5, validator=positive)
    # Headers sent with every request (e.g. a secret the backend checks to know Aether is
    # calling); a client's passed-on header of the same name wins, as in Centrifugo.
    static_headers: dict[str, str] = attrs.field(
        factory=dict, validator=_static_headers, repr=False
    )
