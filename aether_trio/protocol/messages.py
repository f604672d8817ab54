"""Commands, results, publications and pushes of protocol v2 (JSON) as frozen attrs classes.

Wire rules live in `codec` (one converter); these classes only say what exists. Output omission
follows upstream: a field equal to its default is left out, so fields that must always be present
(`ClientInfo.user`, `HistoryResult.offset`, ...) have no default at all. Raw JSON payloads (`data`,
`info`) are carried as already-encoded compact JSON bytes (`RawJSON`) so a publication is encoded
once, stored as is and embedded verbatim into every frame that carries it.
"""

from __future__ import annotations

from typing import Any, NewType

import attrs

__all__ = [
    "Binary",
    "ClientInfo",
    "ConnectRequest",
    "ConnectResult",
    "HistoryRequest",
    "HistoryResult",
    "JsonBytes",
    "PresenceRequest",
    "PresenceResult",
    "PresenceStatsRequest",
    "PresenceStatsResult",
    "Publication",
    "PublishRequest",
    "RPCRequest",
    "RPCResult",
    "RawJSON",
    "RefreshRequest",
    "RefreshResult",
    "SendRequest",
    "StreamPosition",
    "SubRefreshRequest",
    "SubRefreshResult",
    "SubscribeRequest",
    "SubscribeResult",
    "UnsubscribeRequest",
]

RawJSON = NewType("RawJSON", bytes)
"""Compact JSON text (no raw newlines) embedded verbatim; b"" means absent."""

NO_JSON = RawJSON(b"")


@attrs.frozen
class Binary:
    """A Protobuf client's payload that is not JSON (a request's `data`). Channels carry JSON,
    which every client can be given, so a publication of it is refused (107)."""

    data: bytes


@attrs.frozen
class JsonBytes:
    """A Protobuf client's publication payload holding JSON: the parsed value (for the checks)
    and the bytes as sent, which are published verbatim (as Centrifugo passes them on) unless
    the channel rewrites them (`publication_html`) or they hold a raw newline (which would split
    a JSON subscriber's frame)."""

    value: Any
    raw: bytes


# --- requests (client -> server); unknown keys are ignored, as the SDKs send new ones freely ---


def _empty_to_none(value: Any) -> Any:
    return value or None


_UINT = attrs.validators.ge(0)


@attrs.frozen
class StreamPosition:
    offset: int = attrs.field(default=0, validator=_UINT)
    epoch: str = ""


@attrs.frozen
class SubscribeRequest:
    channel: str = ""
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: int = attrs.field(default=0, validator=_UINT)
    data: Any = None
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    # Bit 2 asks for error 112 instead of `recovered: false`; other bits (compaction) are ignored.
    flag: int = 0
    # A publication tags filter (a FilterNode object); checked by the subscribe handler.
    tf: Any = None


@attrs.frozen
class ConnectRequest:
    token: str = ""
    data: Any = None
    subs: dict[str, SubscribeRequest] = attrs.Factory(dict)
    name: str = ""
    version: str = ""
    headers: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class UnsubscribeRequest:
    channel: str = ""


@attrs.frozen
class PublishRequest:
    channel: str = ""
    data: Any = None


@attrs.frozen
class PresenceRequest:
    channel: str = ""


@attrs.frozen
class PresenceStatsRequest:
    channel: str = ""


@attrs.frozen
class HistoryRequest:
    channel: str = ""
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False


@attrs.frozen
class RefreshRequest:
    token: str = ""


@attrs.frozen
class SubRefreshRequest:
    channel: str = ""
    token: str = ""


@attrs.frozen
class RPCRequest:
    method: str = ""
    data: Any = None


@attrs.frozen
class SendRequest:
    data: Any = None


@attrs.frozen
class PingRequest:
    pass


# --- results and push bodies (server -> client) ---


@attrs.frozen
class ClientInfo:
    user: str
    client: str
    conn_info: RawJSON = NO_JSON
    chan_info: RawJSON = NO_JSON


@attrs.frozen
class Publication:
    data: RawJSON = NO_JSON
    info: ClientInfo | None = None
    offset: int = 0
    # Empty maps are omitted on the wire, like every other zero value.
    tags: dict[str, str] | None = attrs.field(default=None, converter=_empty_to_none)
    # `data` is a fossil delta against the subscriber's previous publication (delta: "fossil").
    delta: bool = False


@attrs.frozen
class SubscribeResult:
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    publications: tuple[Publication, ...] = ()
    recovered: bool = False
    offset: int = 0
    positioned: bool = False
    data: RawJSON = NO_JSON
    was_recovering: bool = False
    # Fossil delta compression was negotiated: publications' `data` may be deltas.
    delta: bool = False
    # Channel compaction: pushes of this channel carry this id instead of its name.
    id: int = 0


@attrs.frozen
class ConnectResult:
    client: str
    version: str = ""
    expires: bool = False
    ttl: int = 0
    data: RawJSON = NO_JSON
    subs: dict[str, SubscribeResult] | None = attrs.field(default=None, converter=_empty_to_none)
    ping: int = 0
    pong: bool = False


@attrs.frozen
class EmptyResult:
    """`{}` results: unsubscribe, publish, rpc without data, and the ping reply body."""


@attrs.frozen
class PresenceResult:
    presence: dict[str, ClientInfo]


@attrs.frozen
class PresenceStatsResult:
    num_clients: int
    num_users: int


@attrs.frozen
class HistoryResult:
    publications: tuple[Publication, ...]
    epoch: str
    offset: int


@attrs.frozen
class RefreshResult:
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0


@attrs.frozen
class SubRefreshResult:
    expires: bool = False
    ttl: int = 0


@attrs.frozen
class SubscribePush:
    """Body of a `subscribe` push (a server-side subscription added after connect)."""

    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    positioned: bool = False
    data: RawJSON = NO_JSON


@attrs.frozen
class UnsubscribePush:
    # Both keys always present: centrifuge-python indexes them.
    code: int
    reason: str


@attrs.frozen
class JoinLeave:
    info: ClientInfo


@attrs.frozen
class RPCResult:
    """The `rpc` reply: what the application's RPC handler (proxy or hook) answered."""

    data: RawJSON = NO_JSON
