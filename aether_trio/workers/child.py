"""The worker's side of `aether serve` with `[server] workers` > 1 (`aether serve --instance N
--supervised`, started by the parent in supervisor.py).

Two pipes connect a worker to its parent: its stdout, on which it writes `READY` once it
listens (until then the parent counts an exit as a failed start), and its stdin, which the
parent holds open and never writes. End of file on stdin means the parent is gone, whatever
killed it (SIGKILL included): the worker then stops as if it had received SIGTERM (drain, exit),
instead of serving on, unsupervised, a port a new parent's workers will share.
"""

from __future__ import annotations

import os
import signal

import trio

__all__ = ["READY", "report_to_parent"]

READY = b"ready\n"


async def report_to_parent(stdout: int = 1, stdin: int = 0) -> None:
    """Tell the parent this worker listens, then wait for the parent to go away."""
    try:
        async with trio.lowlevel.FdStream(os.dup(stdout)) as out:
            await out.send_all(READY)
    except trio.BrokenResourceError:
        pass  # the parent is gone already: stdin says so at once, below
    async with trio.lowlevel.FdStream(os.dup(stdin)) as parent:
        # The parent never writes: the read returns at the end of file, when the parent is gone.
        await parent.receive_some()
    # The same path as a SIGTERM from outside: serve_forever's signal loop drains and stops.
    os.kill(os.getpid(), signal.SIGTERM)
