"""One live client connection, from its first frame to its cleanup.

    client.py        `Client`: the connection's state, its read loop and its lifecycle
    handlers.py      one coroutine per client command, and the `HANDLERS` table
    subscribe.py     the subscribe sequence (checks, recovery) every subscription goes through
    subscription.py  what the hub delivers to: buffering until the subscribe reply is queued
    timers.py        the connection's pings, pong check and expiries on the node's scheduler
    outbox.py        the byte-bounded outgoing queue
    flusher.py       coalesced writes: one task writes every connection's queue once per round

Importing the package loads nothing; import the module you need.
"""

__all__: list[str] = []
