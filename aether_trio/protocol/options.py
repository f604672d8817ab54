"""Channel options: what a namespace (or channels without one) allows and keeps, with
Centrifugo v6's names, and the namespace-name rule. The protocol layer decides with them
(`channels`, `permissions`); the config (`[channel]`) is where an operator writes them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

__all__ = [
    "NAMESPACE_NAME",
    "ChannelOptions",
    "Namespace",
    "PublicationDataFormat",
    "PublicationHtml",
    "non_negative",
    "positive",
    "valid_regex",
]


def non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name}: expected a number >= 0, got {value!r}")


def positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name}: expected a number > 0, got {value!r}")


def valid_regex(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{attr.name}: not a valid regular expression ({exc})") from None


DELTA_TYPES = ("fossil",)


def _delta_types(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        if item not in DELTA_TYPES:
            raise ValueError(f"{attr.name}: expected items of {list(DELTA_TYPES)}, got {item!r}")


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
    # The application's backend ([[proxies]] names, "" = none; Centrifugo's names): a subscribe
    # without a token is decided by the subscribe proxy (instead of the allow_subscribe_* rules),
    # a client's publication by the publish proxy (which may change its data), a subscription
    # refresh without a token by the sub_refresh proxy.
    subscribe_proxy_name: str = ""
    publish_proxy_name: str = ""
    sub_refresh_proxy_name: str = ""
    # Subscribers may give a publication tags filter (`tf`, protocol/tags_filter.py).
    allow_tags_filter: bool = False
    # Subscribers that ask (subscribe flag 1) get pushes with a numeric channel id for the name.
    allow_channel_compaction: bool = False
    # Delta compressions a subscriber may ask for (`delta` on subscribe): only "fossil" exists.
    allowed_delta_types: tuple[str, ...] = attrs.field(default=(), validator=_delta_types)

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
