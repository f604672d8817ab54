"""`[cluster]`: how the nodes sharing an engine keep track of each other (aether_trio/cluster.py,
docs/redis.md). On the memory engine there is one node and nothing to share."""

from __future__ import annotations

import attrs

from ..protocol.options import positive

__all__ = ["ClusterConfig"]


@attrs.frozen
class ClusterConfig:
    # Each node announces itself this often; one not heard from for node_expire seconds is
    # left out of `info`, surveys and the user connection counts.
    heartbeat_interval: float = attrs.field(default=3.0, validator=positive)
    node_expire: float = attrs.field(default=7.0, validator=positive)
    # How long `channels` and `info` wait for the other nodes' answers.
    survey_timeout: float = attrs.field(default=5.0, validator=positive)
    # Bans, revocations and token cut-offs are re-read from the engine this often (a control
    # message applies a change at once; this catches a node that missed it).
    state_resync_interval: float = attrs.field(default=5.0, validator=positive)
    # A connection counted against its user's limit on every node lives this long in the
    # engine unless renewed (every third of it): a node that dies stops counting.
    connection_ttl: float = attrs.field(default=60.0, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.node_expire <= self.heartbeat_interval:
            raise ValueError("node_expire: must be longer than heartbeat_interval")
