"""`[channel]`: the options of channels without a namespace and the namespaces (the options
themselves are the protocol layer's `ChannelOptions`, with Centrifugo v6's names)."""

from __future__ import annotations

import attrs

from ..protocol.options import ChannelOptions, Namespace

__all__ = ["ChannelConfig"]


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
