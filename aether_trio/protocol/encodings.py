"""Which codec a connection speaks, from the WebSocket subprotocols its client offers.

Like Centrifugo: a client offering `centrifuge-protobuf` speaks Protobuf; one offering none
speaks JSON (`centrifuge-json` names it explicitly). A client offering only subprotocols Aether
does not serve is refused at the handshake (the caller answers 400 and logs it): accepting it
without a subprotocol would have a browser fail the connection and retry forever, with nothing
to tell the operator why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .codec import JSON, Codec
from .protobuf import PROTOBUF

__all__ = ["SUBPROTOCOLS", "negotiate"]

# In no particular order: the client's order of preference decides.
SUBPROTOCOLS: Final[dict[str, Codec]] = {"centrifuge-protobuf": PROTOBUF, "centrifuge-json": JSON}


def negotiate(offered: Sequence[str]) -> tuple[Codec, str | None] | None:
    """The codec and the subprotocol to accept (None: answer without one), or None to refuse:
    the client offered subprotocols, and Aether serves none of them."""
    if not offered:
        return JSON, None
    for name in offered:
        codec = SUBPROTOCOLS.get(name)
        if codec is not None:
            return codec, name
    return None
