"""The parent of `[server] workers` > 1: start N workers, keep them running, stop them together.

Theory of operation. `aether serve` with workers > 1 serves nothing itself: it runs `aether serve
--instance K --supervised` for K = 1..N (child.py is the worker's side), each in a task of one
nursery that starts it, waits for its exit and, unless the parent is stopping, starts it again
after its `RestartPolicy`'s delay. A worker is *started* once it writes `READY` on its stdout
(it listens); an exit before that is a failed start, and too many in a row make the parent give
up: it stops the other workers and exits 1 with a line saying which worker and how it exited,
instead of restarting for ever (what the process manager above it then does is its business).

Signals: SIGHUP is forwarded to every running worker (each re-reads the file; a change of
`workers` itself needs a restart of the parent). SIGTERM or SIGINT is forwarded too and ends the
restarts: each worker drains (3001 to its clients) and exits; the parent exits once all have,
0 if every one exited cleanly. A worker still running `stop_timeout` seconds later is killed
(SIGKILL) and the exit is 1. Workers stay in the parent's process group, so a process manager
that signals or kills the group (supervisord's stopasgroup/killasgroup, systemd's KillMode) reaches
them too; a second SIGTERM does no harm.
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from .child import READY
from .policy import RestartPolicy

__all__ = ["Supervisor", "exit_description", "stop_timeout"]

log = logging.getLogger(__name__)

# Exit statuses a worker may stop with when asked to: its own clean exit, or SIGTERM arriving
# before it had installed its handler (a worker still starting).
CLEAN_STOPS = (0, -signal.SIGTERM)


def exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Supervisor:
    def __init__(
        self,
        count: int,
        command: Callable[[int], Sequence[str]],
        policy: Callable[[], RestartPolicy],
        stop_timeout: float,
    ) -> None:
        self.count = count
        self.command = command  # worker K's command line
        self.policies = {k: policy() for k in range(1, count + 1)}
        self.stop_timeout = stop_timeout
        self.processes: dict[int, trio.Process] = {}
        self.starts: dict[int, int] = dict.fromkeys(self.policies, 0)
        self.failure = ""  # why the parent gave up or the stop was not clean
        self.listening: set[int] = set()  # the workers that reported READY
        # SIGHUP would kill a worker that has no handler yet: it gets one once it listens.
        self.reload_pending: set[int] = set()
        self._stopping = trio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> int:
        """Until every worker has exited after a stop (a signal, or giving up): the exit status."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._handle_signals, signals)
                async with trio.open_nursery() as workers:
                    for k in self.policies:
                        workers.start_soon(self._keep_running, k)
                nursery.cancel_scope.cancel()  # every worker is gone: signals no longer matter
        if self.failure:
            log.error("%s", self.failure)
            return 1
        log.info("all %d workers stopped", self.count)
        return 0

    async def _handle_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self.reload_pending = set(self.processes) - self.listening
                log.info(
                    "received SIGHUP: forwarded to %d workers (%d more once they listen)",
                    len(self.listening), len(self.reload_pending),
                )  # fmt: skip
                for k in self.listening:
                    self.processes[k].send_signal(signal.SIGHUP)
            elif not self.stopping:
                log.info("received %s: stopping %d workers", name, len(self.processes))
                self.stop()
            # A second SIGTERM changes nothing: the stop is under way.

    def stop(self) -> None:
        """No more restarts; each worker's task sends its worker SIGTERM, and SIGKILL if it is
        still running `stop_timeout` seconds later (`_stop_when_asked`)."""
        self._stopping.set()

    async def _keep_running(self, k: int) -> None:
        policy = self.policies[k]
        while not self.stopping:
            started, uptime, returncode = await self._run_once(k)
            if self.stopping:
                if returncode not in CLEAN_STOPS:
                    self.failure = self.failure or (
                        f"worker {k} did not stop cleanly: {exit_description(returncode)}"
                    )
                log.info("worker %d stopped (%s)", k, exit_description(returncode))
                return
            delay = policy.after_exit(started, uptime)
            if delay is None:
                self.failure = (
                    f"worker {k} failed to start {policy.failed_starts} times in a row (last: "
                    f"{exit_description(returncode)}; its log says why); giving up: stopping "
                    "every worker"
                )
                log.error("%s", self.failure)
                self.stop()
                return
            log.warning(
                "worker %d %s (%s) after %.1f s; starting it again in %.1f s", k,
                "exited" if started else "failed to start", exit_description(returncode),
                uptime, delay,
            )  # fmt: skip
            with trio.move_on_after(delay):
                await self._stopping.wait()

    async def _run_once(self, k: int) -> tuple[bool, float, int]:
        """Start worker K and wait for its exit: (whether it reported READY, seconds it ran,
        its return code)."""
        process = await trio.lowlevel.open_process(
            list(self.command(k)), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.processes[k] = process
        self.starts[k] += 1
        began = trio.current_time()
        started = False
        try:
            async with trio.open_nursery() as nursery:
                # Also when a stop came while the process was being created.
                nursery.start_soon(self._stop_when_asked, k, process)
                assert process.stdout is not None
                seen = b""
                async for chunk in process.stdout:
                    if not started:
                        # Whatever else a worker writes there, only READY's length is kept.
                        seen = (seen + chunk)[-2 * len(READY) :]
                        if READY in seen:
                            started = True
                            self.listening.add(k)
                            log.info("worker %d (pid %d) is listening", k, process.pid)
                            if k in self.reload_pending:
                                self.reload_pending.discard(k)
                                process.send_signal(signal.SIGHUP)
                returncode = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            del self.processes[k]
            self.listening.discard(k)
            self.reload_pending.discard(k)
            # The worker's end of stdin closes: a worker still alive (SIGKILLed above) is gone.
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await pipe.aclose()
        return started, trio.current_time() - began, returncode

    async def _stop_when_asked(self, k: int, process: trio.Process) -> None:
        """Cancelled as soon as the worker has exited, so it signals a running process only."""
        await self._stopping.wait()
        process.send_signal(signal.SIGTERM)
        await trio.sleep(self.stop_timeout)
        self.failure = self.failure or (
            f"worker {k} still running {self.stop_timeout:g} s after SIGTERM: killed"
        )
        log.error("worker %d still running %g s after SIGTERM: SIGKILL", k, self.stop_timeout)
        process.kill()


def stop_timeout(drain_seconds: float, persist_timeout: float) -> float:
    """What a worker's graceful stop may take: the drain, the history save, and a margin for
    the rest (engines closing, the process exiting)."""
    return math.ceil(drain_seconds + persist_timeout + 10)
