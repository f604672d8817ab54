"""`[channel]`: the options of channels without a namespace and the namespaces (the options
themselves are the protocol layer's `ChannelOptions`, with Centrifugo v6's names)."""

from __future__ import annotations

import attrs

from ..protocol.options import ChannelOptions, Namespace, non_negative

__all__ = ["ChannelConfig"]


@attrs.frozen
class ChannelConfig:
    without_namespace: ChannelOptions = ChannelOptions()
    namespaces: tuple[Namespace, ...] = ()
    # Channel occupied (first subscriber anywhere in the cluster) and vacated (the last one gone
    # for state_delay seconds) told to this [[proxies]] entry ("" = none; or the
    # on_channel_event hook).
    state_proxy_name: str = ""
    state_delay: float = attrs.field(default=2.0, validator=non_negative)

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        for ns in self.namespaces:
            if ns.name in seen:
                raise ValueError(f"namespaces: duplicate namespace name {ns.name!r}")
            seen.add(ns.name)
