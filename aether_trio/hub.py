"""Who on this node is subscribed to which channel, and fan-out of encoded messages to them.

A publication is encoded once per codec in use on the channel (JSON, Protobuf: each subscriber's
connection has one) into the complete push message, and the same bytes object is handed to every
subscriber of that codec, never encoded per subscriber; the loop calls `deliver` (synchronous,
puts into a bounded outbox) and never awaits, so one slow subscriber cannot delay the others.
Join/leave go only to subscribers that asked for them. The hub knows subscribers only through
the small `Subscriber` protocol.

A channel may also have a `Group`: connections that receive it without a hub subscription each
(the operators' system channel, which every connection has; see `system_channel`). The group gets
the same encoded bytes in the same loop and counts as subscribers wherever the hub counts them,
and a channel with a group stays subscribed on this node whoever else leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from .protocol.codec import Codec
from .protocol.messages import ClientInfo, JoinLeave, Publication

__all__ = ["Encoded", "Group", "Hub", "HubStatistics", "Subscriber"]


class Subscriber(Protocol):
    @property
    def client_id(self) -> str: ...

    @property
    def push_join_leave(self) -> bool: ...

    @property
    def codec(self) -> Codec:
        """What its connection speaks: it is handed that codec's bytes."""

    @property
    def accepts(self) -> Callable[[Mapping[str, str]], bool] | None:
        """Its publication tags filter (None: every publication)."""

    def deliver(self, message: bytes, offset: int) -> None:
        """Queue an encoded push; `offset` is the publication's (0: join, leave, no history)."""


class Group(Protocol):
    def deliver(self, encoded: Callable[[Codec], bytes]) -> int:
        """Send a publication to every member, encoded by `encoded(member's codec)` (at most
        once per codec), never awaiting; return how many."""

    def count(self) -> int: ...


class Encoded:
    """One push, encoded at most once per codec, on first use."""

    __slots__ = ("_body", "_by_codec", "_channel", "_kind")

    def __init__(self, channel: str, kind: str, body: Any) -> None:
        self._channel, self._kind, self._body = channel, kind, body
        self._by_codec: dict[Codec, bytes] = {}

    def __call__(self, codec: Codec) -> bytes:
        message = self._by_codec.get(codec)
        if message is None:
            message = codec.encode_push(self._channel, self._kind, self._body)
            self._by_codec[codec] = message
        return message


@attrs.frozen
class HubStatistics:
    channels: int
    subscriptions: int


class Hub:
    def __init__(self) -> None:
        self._channels: dict[str, dict[str, Subscriber]] = {}
        # Never removed: a group's channel stays subscribed on this node for as long as it runs.
        self._groups: dict[str, Group] = {}

    def add_group(self, channel: str, group: Group) -> bool:
        """Register the group of `channel`; True if the node had no subscriber of it yet."""
        first = channel not in self._channels and channel not in self._groups
        self._groups[channel] = group
        return first

    def add(self, channel: str, sub: Subscriber) -> bool:
        """Register; True if this is the node's first subscriber of `channel`."""
        subs = self._channels.get(channel)
        first = subs is None and channel not in self._groups
        if subs is None:
            subs = self._channels[channel] = {}
        subs[sub.client_id] = sub
        return first

    def remove(self, channel: str, client_id: str) -> bool:
        """Unregister; True if the channel has no subscriber left on this node."""
        subs = self._channels.get(channel)
        if subs is None:
            return False
        subs.pop(client_id, None)
        if subs:
            return False
        del self._channels[channel]
        return channel not in self._groups

    def has(self, channel: str) -> bool:
        """Whether anyone on this node receives `channel` (a subscriber or a group)."""
        return channel in self._channels or channel in self._groups

    def subscribers(self, channel: str) -> list[Subscriber]:
        return list(self._channels.get(channel, {}).values())

    def first_subscriber(self, channel: str) -> Subscriber | None:
        """The channel's longest-standing subscriber on this node, in O(1) (latency sampling)."""
        subs = self._channels.get(channel)
        return next(iter(subs.values())) if subs else None

    def num_subscribers(self, channel: str) -> int:
        group = self._groups.get(channel)
        return len(self._channels.get(channel, ())) + (group.count() if group else 0)

    def channels(self) -> list[str]:
        """Channels with a subscriber on this node (a group without members is not one)."""
        grouped = [c for c, g in self._groups.items() if c not in self._channels and g.count()]
        return [*self._channels, *grouped]

    def broadcast_publication(self, channel: str, pub: Publication) -> int:
        subs = self._channels.get(channel)
        group = self._groups.get(channel)
        if not subs and group is None:
            return 0
        encoded = Encoded(channel, "pub", pub)
        offset = pub.offset
        # Copy: a delivery may disconnect a slow subscriber, which unregisters it.
        receivers = list(subs.values()) if subs else []
        # Runs of subscribers of one codec (usually all of them) skip the memo's lookup.
        last: Codec | None = None
        message = b""
        tags = pub.tags or {}
        delivered = 0
        for sub in receivers:
            accepts = sub.accepts
            if accepts is not None and not accepts(tags):
                continue  # its tags filter rejects the publication
            delivered += 1
            codec = sub.codec
            if codec is not last:
                message, last = encoded(codec), codec
            sub.deliver(message, offset)
        return delivered + (group.deliver(encoded) if group is not None else 0)

    def broadcast_join(self, channel: str, info: ClientInfo) -> int:
        return self._broadcast_join_leave(channel, "join", info)

    def broadcast_leave(self, channel: str, info: ClientInfo) -> int:
        return self._broadcast_join_leave(channel, "leave", info)

    def _broadcast_join_leave(self, channel: str, kind: str, info: ClientInfo) -> int:
        subs = self._channels.get(channel)
        if not subs:
            return 0
        receivers = [sub for sub in subs.values() if sub.push_join_leave]
        if receivers:
            encoded = Encoded(channel, kind, JoinLeave(info))
            for sub in receivers:
                sub.deliver(encoded(sub.codec), 0)
        return len(receivers)

    def statistics(self) -> HubStatistics:
        # Counting a group walks the connections: fine for a scrape or an operator's view.
        members = {c: g.count() for c, g in self._groups.items()}
        channels = len(self._channels) + sum(
            1 for c, n in members.items() if n and c not in self._channels
        )
        return HubStatistics(
            channels, sum(map(len, self._channels.values())) + sum(members.values())
        )
