"""Channel options: `[channel.without_namespace]` and `[[channel.namespaces]]` (Centrifugo v6
names), and the namespace-name rule."""

from __future__ import annotations

import re
from typing import Literal

import attrs

from .sections import non_negative, positive, valid_regex

__all__ = [
    "NAMESPACE_NAME",
    "ChannelConfig",
    "ChannelOptions",
    "Namespace",
    "PublicationDataFormat",
    "PublicationHtml",
]

NAMESPACE_NAME = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")

PublicationDataFormat = Literal["", "json", "json_object"]
PublicationHtml = Literal["keep", "escape", "strip"]


@attrs.frozen
class ChannelOptions:
    """Options of a namespace (or of channels without one); names follow Centrifugo v6."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = attrs.field(default=0, validator=non_negative)
    history_ttl: float = attrs.field(default=0.0, validator=non_negative)
    # Stream top and epoch outlive the publications for this long after the last publish.
    history_meta_ttl: float = attrs.field(default=30 * 24 * 3600.0, validator=positive)
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
    channel_regex: str = attrs.field(default="", validator=valid_regex)
    publication_data_format: PublicationDataFormat = ""
    # Largest publication data (its encoded JSON, in bytes) accepted; 0 = only the frame size.
    max_publication_size: int = attrs.field(default=0, validator=non_negative)
    # HTML in the string values of published data (aether_trio.guards.sanitize): left as it is,
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
