"""Who on this node is subscribed to which channel, and fan-out of encoded messages to them.

A publication is encoded once per codec in use on the channel (JSON, Protobuf: each subscriber's
connection has one) into the complete push message, and the same bytes object is handed to every
subscriber of that codec, never encoded per subscriber; the loop calls `deliver` (synchronous,
puts into a bounded outbox) and never awaits, so one slow subscriber cannot delay the others.
Join/leave go only to subscribers that asked for them. The hub knows subscribers only through
the small `Subscriber` protocol.

Subscribers with fossil delta compression get a `DeltaPush` instead: the full form (their data
as a JSON string in JSON) and the delta against a base, each encoded once per codec (and the
delta computed once per base: live subscribers share the previous publication's data as their
base), the subscriber choosing which it needs (subscriptions.py).

A channel may also have a `Group`: connections that receive it without a hub subscription each
(the operators' system channel, which every connection has; see `system_channel`). The group gets
the same encoded bytes in the same loop and counts as subscribers wherever the hub counts them,
and a channel with a group stays subscribed on this node whoever else leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from .protocol import fossil
from .protocol.codec import Codec
from .protocol.messages import ClientInfo, JoinLeave, Publication, RawJSON

__all__ = ["DeltaPush", "Encoded", "Group", "Hub", "HubStatistics", "Route", "Subscriber"]

Route = tuple[Codec, int]


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

    @property
    def delta(self) -> bool:
        """Fossil delta compression: it is handed a `DeltaPush` (`deliver_delta`)."""

    @property
    def compact(self) -> bool:
        """Channel compaction asked for and allowed: `add` gives it the channel's id."""

    channel_id: int
    """Channel compaction: the id its pushes carry instead of the channel (0: the name); set by
    `add`."""

    route: Route | None
    """Set by `add`: what it is handed, (codec, channel id), one object shared by every
    subscriber of the same pair, so the fan-out tells runs apart by identity; None for a tags
    filter or delta compression, which take the slower path."""

    def deliver_delta(self, source: DeltaPush, data: RawJSON, offset: int) -> None: ...

    def deliver(self, message: bytes, offset: int) -> None:
        """Queue an encoded push; `offset` is the publication's (0: join, leave, no history)."""


class Group(Protocol):
    def deliver(self, encoded: Callable[[Codec], bytes]) -> int:
        """Send a publication to every member, encoded by `encoded(member's codec)` (at most
        once per codec), never awaiting; return how many."""

    def count(self) -> int: ...


_NO_ROUTE: object = object()  # `last` before the first route of a fan-out


class Encoded:
    """One push, encoded at most once per codec (and channel id), on first use."""

    __slots__ = ("_body", "_by_codec", "_channel", "_kind")

    def __init__(self, channel: str, kind: str, body: Any) -> None:
        self._channel, self._kind, self._body = channel, kind, body
        self._by_codec: dict[tuple[Codec, int], bytes] = {}

    def __call__(self, codec: Codec, channel_id: int = 0) -> bytes:
        key = (codec, channel_id)
        message = self._by_codec.get(key)
        if message is None:
            message = codec.encode_push(self._channel, self._kind, self._body, channel_id)
            self._by_codec[key] = message
        return message


class DeltaPush:
    """One publication for delta subscribers: its full form and its deltas, each encoded at
    most once per codec, the delta computed at most once per base."""

    __slots__ = ("_channel", "_full", "_patches", "_plain", "_pub", "_with_base")

    def __init__(self, channel: str, pub: Publication, plain: Encoded) -> None:
        self._channel, self._pub, self._plain = channel, pub, plain
        self._full: dict[tuple[Codec, int], bytes] = {}
        # id(base) -> (base, delta): the base is kept so its id stays its own.
        self._patches: dict[int, tuple[RawJSON, bytes]] = {}
        self._with_base: dict[tuple[Codec, int, int], bytes] = {}

    def full(self, codec: Codec, channel_id: int = 0) -> bytes:
        key = (codec, channel_id)
        message = self._full.get(key)
        if message is None:
            data = self._pub.data
            payload = codec.delta_payload(data)
            # Protobuf: the bytes as they are, the plain push. (None, a payload that is not
            # UTF-8, cannot happen: a publication's data is JSON encoded by orjson.)
            plain = payload is data or payload is None
            body = attrs.evolve(self._pub, data=payload or data)
            message = (
                self._plain(codec, channel_id)
                if plain
                else codec.encode_push(self._channel, "pub", body, channel_id)
            )
            self._full[key] = message
        return message

    def delta(self, codec: Codec, base: RawJSON, channel_id: int = 0) -> bytes:
        key = (codec, channel_id, id(base))
        message = self._with_base.get(key)
        if message is None:
            message = self._with_base[key] = self._delta(codec, base, channel_id)
        return message

    def _delta(self, codec: Codec, base: RawJSON, channel_id: int) -> bytes:
        known = self._patches.get(id(base))
        if known is None:
            known = self._patches[id(base)] = (base, fossil.create(base, self._pub.data))
        patch = known[1]
        payload = codec.delta_payload(patch) if len(patch) < len(self._pub.data) else None
        if payload is None:  # not shorter, or not representable: in full
            return self.full(codec, channel_id)
        body = attrs.evolve(self._pub, data=payload, delta=True)
        return codec.encode_push(self._channel, "pub", body, channel_id)


@attrs.frozen
class HubStatistics:
    channels: int
    subscriptions: int


class Hub:
    def __init__(self) -> None:
        self._channels: dict[str, dict[str, Subscriber]] = {}
        # Never removed: a group's channel stays subscribed on this node for as long as it runs.
        self._groups: dict[str, Group] = {}
        # Channel compaction: the id of a channel while it has subscribers here (ids are never
        # reused within a run, so a stale id can never name another channel).
        self._ids: dict[str, int] = {}
        self._last_id = 0
        # The shared routes (subscriber.route): (codec, 0) for all channels, (codec, id) per
        # channel with compacting subscribers (dropped with its id).
        self._routes: dict[Route, Route] = {}

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
        if sub.compact:  # before anything can be delivered to it
            sub.channel_id = self.channel_id(channel)
        if sub.accepts is not None or sub.delta:
            sub.route = None
        else:
            route = (sub.codec, sub.channel_id)
            sub.route = self._routes.setdefault(route, route)
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
        channel_id = self._ids.pop(channel, None)
        if channel_id is not None:
            for route in [r for r in self._routes if r[1] == channel_id]:
                del self._routes[route]
        return channel not in self._groups

    def channel_id(self, channel: str) -> int:
        """The compaction id of `channel` (which has a subscriber here), given on first use."""
        channel_id = self._ids.get(channel)
        if channel_id is None:
            self._last_id += 1
            channel_id = self._ids[channel] = self._last_id
        return channel_id

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
        # Runs of subscribers of one route (usually all of them) cost one identity check each.
        last: object = _NO_ROUTE
        message = b""
        filtered = 0
        deltas: DeltaPush | None = None
        for sub in receivers:
            route = sub.route
            if route is not last:
                if route is None:  # a tags filter or delta compression
                    accepts = sub.accepts
                    if accepts is not None and not accepts(pub.tags or {}):
                        filtered += 1  # its tags filter rejects the publication
                        continue
                    if not sub.delta:
                        sub.deliver(encoded(sub.codec, sub.channel_id), offset)
                        continue
                    if deltas is None:
                        deltas = DeltaPush(channel, pub, encoded)
                    sub.deliver_delta(deltas, pub.data, offset)
                    continue
                message, last = encoded(*route), route
            sub.deliver(message, offset)
        delivered = len(receivers) - filtered
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
                sub.deliver(encoded(sub.codec, sub.channel_id), 0)
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
