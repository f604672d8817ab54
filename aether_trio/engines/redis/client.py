"""The bridge to Redis and the one door every command goes through: timeouts, errors and
automatic pipelining.

Theory of operation. `opened` opens a trio-asyncio loop for the engine's life and keeps redis-py's
asyncio client on it; only this module and pubsub.py cross into asyncio (`aio`), so the rest of
the engine (and of Aether) sees plain Trio. With pipelining on, `call` queues (command, waiter)
and waits; the batcher task takes everything queued since it last ran -- the commands issued in
one Trio scheduling round, and under load everything issued while the previous batch was on the
wire -- and sends it as one pipeline: one bridge crossing and one round trip per batch, not per
command (centrifuge's automatic pipelining). With pipelining off every call crosses the bridge
itself on a connection of redis-py's pool.

Where commands go is the topology's business (topology.py): `refresh` asks it (at the start of
every PUB/SUB session and at every probe) and, when the answer changed (a Sentinel promoted
another master), replaces the redis-py client.

Errors, in one place: whatever redis-py raises becomes `EngineError`; so does a call not answered
within `io_timeout`, and a call made while the engine is not `reachable` fails at once instead of
waiting (a temporary error 100 for clients). pubsub.py decides reachability: it marks the engine
reachable once its probe came back, and `call` marks it unreachable when Redis stops answering.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError

from ...config.sections import RedisEngineConfig
from ..base import EngineError
from .scripts import ALL_SCRIPTS, PUBLISH_VIA, Script
from .topology import ClusterTopology, RedisLike, Topology, public_name

__all__ = ["Issued", "RedisClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Command = tuple[Any, ...]
# What redis-py raises for a lost or silent server (besides its own RedisError family).
CONNECTION_ERRORS = (RedisError, OSError, EOFError, TimeoutError)


class _Waiter:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Issued:
    """A command `RedisClient.call_nowait` issued; `wait()` is its answer."""

    __slots__ = ("_client", "_command", "_waiter")

    def __init__(self, client: RedisClient, command: Command, waiter: _Waiter | None) -> None:
        self._client = client
        self._command = command
        self._waiter = waiter

    async def wait(self) -> Any:
        return await self._client._answer(self._command, self._waiter)


class RedisClient:
    def __init__(self, config: RedisEngineConfig, topology: Topology | None = None) -> None:
        self.config = config
        self.topology = topology or Topology(config, config.address)
        self.pipelining = config.pipelining
        self._loop: trio_asyncio.TrioEventLoop | None = None
        self._redis: RedisLike | None = None
        # Where commands go now (`refresh`): None until the topology was first asked.
        self.address: str | None = None
        self._reachable = False
        # Set when a call found Redis silent: the PUB/SUB supervisor probes at once.
        self.trouble = trio.Event()
        self._queue: list[tuple[Command, _Waiter]] = []
        self._queued = trio.Event()
        self._scripts = {script.sha: script for script in ALL_SCRIPTS}
        # Observability and tests: pipelines sent, commands in them, the largest batch.
        self.batches = 0
        self.commands = 0
        self.largest_batch = 0

    # --- reachability ---

    @property
    def reachable(self) -> bool:
        return self._reachable

    def mark_reachable(self) -> None:
        if not self._reachable:
            log.info("redis %s is reachable", self.topology.name)
        self._reachable = True

    def mark_unreachable(self, why: str) -> None:
        if self._reachable:
            log.warning("redis %s is unreachable: %s", self.topology.name, why)
        self._reachable = False
        self.trouble.set()

    def register(self, script: Script) -> None:
        """Another module's script, sent again with its source after a Redis restart too."""
        self._scripts[script.sha] = script

    # --- the bridge ---

    @asynccontextmanager
    async def opened(self, loop: trio_asyncio.TrioEventLoop) -> AsyncIterator[None]:
        """The client and the batcher on `loop` (the asyncio loop every shard shares), for the
        body's duration: the PUB/SUB connection runs inside it, so it is closed while the loop
        still runs."""
        self._loop = loop
        try:
            async with trio.open_nursery() as nursery:
                if self.pipelining:
                    await nursery.start(self._batcher)
                yield
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                if self._redis is not None:
                    await loop.run_aio_coroutine(self.topology.close_client(self._redis))
                await loop.run_aio_coroutine(self.topology.aclose())
            self._redis = None
            self._loop = None

    async def refresh(self) -> bool:
        """Ask the topology where commands go; a new client when that changed. True when it
        changed from an earlier answer (a failover: the caller rebuilds PUB/SUB)."""
        cfg = self.config
        if self._redis is not None and not self.topology.moves:
            return False
        try:
            with trio.fail_after(cfg.connect_timeout + cfg.io_timeout):
                address = await self.aio(self.topology.locate)
        except (trio.TooSlowError, *CONNECTION_ERRORS) as exc:
            raise EngineError(f"could not locate redis {self.topology.name}: {exc}") from exc
        if address == self.address and self._redis is not None:
            return False
        moved = self.address is not None
        if moved:
            # Unreachable until a PUB/SUB session on the new server proved itself: the old
            # connection may be on a demoted master that misses publications.
            self.mark_unreachable(f"moved to {public_name(address)}")
        old, self._redis, self.address = self._redis, self.topology.new_client(address), address
        if old is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.aio(self.topology.close_client, old)
        return moved

    async def aio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run the asyncio coroutine `fn(*args)` on the engine's loop (the bridge)."""
        if self._loop is None:
            raise EngineError("the redis engine is not running")
        result: T = await self._loop.run_aio_coroutine(fn(*args))
        return result

    # --- commands ---

    async def call(self, *command: Any, check: bool = True) -> Any:
        """Send one command and return Redis's answer (`EngineError` on any failure).
        `check=False` sends it even while unreachable (the probe that finds out)."""
        self._ready(check)
        return await self._answer(command, self._enqueue(command) if self.pipelining else None)

    def call_nowait(self, *command: Any) -> Issued:
        """`call` in two steps: with pipelining the command is queued now (behind every command
        queued before it, ahead of every one after: commands issued in a row are executed in
        that order, in one pipeline when no checkpoint came between them), and `wait()` on the
        result is `call`'s answer. Without pipelining `wait()` sends it (so commands issued in a
        row keep their order only if waited for in it). `EngineError` at once when the engine is
        not running or unreachable."""
        self._ready(True)
        return Issued(self, command, self._enqueue(command) if self.pipelining else None)

    def _ready(self, check: bool) -> None:
        if self._loop is None or self._redis is None:  # not started, or not located yet
            raise EngineError("the redis engine is not running")
        if check and not self._reachable:
            raise EngineError("redis is unreachable")

    async def _answer(self, command: Command, waiter: _Waiter | None) -> Any:
        """The answer to `command`: queued with `waiter`, or (None) sent on its own now."""
        with trio.move_on_after(self.config.io_timeout) as scope:
            try:
                if waiter is None:
                    return (await self.aio(self._execute, [command]))[0]
                await waiter.done.wait()
                if waiter.error is not None:
                    raise waiter.error
                return waiter.result
            except ResponseError as exc:
                if isinstance(exc, ReadOnlyError) or "read only replica" in str(exc):
                    # A demoted master (a failover the topology did not tell us about yet):
                    # unready, and the prober asks the topology again at once.
                    self.mark_unreachable(f"{exc}")
                raise EngineError(f"redis refused {command[0]}: {exc}") from exc
            except CONNECTION_ERRORS as exc:
                self.mark_unreachable(f"{type(exc).__name__}: {exc}")
                raise EngineError(f"redis failed: {exc}") from exc
        assert scope.cancelled_caught
        self.mark_unreachable(f"no answer within {self.config.io_timeout} s")
        raise EngineError(f"redis did not answer within {self.config.io_timeout} s")

    async def script(
        self, script: Script, keys: Sequence[str], args: Sequence[Any], *, check: bool = True
    ) -> Any:
        # EVALSHA; a Redis that lost its script cache (restart) gets the source (`_execute`).
        return await self.call("EVALSHA", script.sha, len(keys), *keys, *args, check=check)

    def script_nowait(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Issued:
        return self.call_nowait("EVALSHA", script.sha, len(keys), *keys, *args)

    async def publish(self, channel: str, message: bytes, route: str, *, check: bool = True) -> Any:
        """PUBLISH; in a Redis Cluster through the master of `route`'s slot (`PUBLISH_VIA`)."""
        if self.topology.cluster:
            return await self.script(PUBLISH_VIA, (route,), (channel, message), check=check)
        return await self.call("PUBLISH", channel, message, check=check)

    def publish_nowait(self, channel: str, message: bytes, route: str) -> Issued:
        """`publish`, issued as `call_nowait` issues."""
        if self.topology.cluster:
            return self.script_nowait(PUBLISH_VIA, (route,), (channel, message))
        return self.call_nowait("PUBLISH", channel, message)

    async def probe_routes(self) -> list[str]:
        """Keys to route probes by: one per cluster master (each has its own bus link to the
        PUB/SUB connection's node), else one that does not matter."""
        topology = self.topology
        if not isinstance(topology, ClusterTopology) or self._redis is None:
            return [""]
        routes: list[str] = await self.aio(topology.probe_routes, self._redis)
        return routes

    def _enqueue(self, command: Command) -> _Waiter:
        waiter = _Waiter()
        self._queue.append((command, waiter))
        self._queued.set()
        return waiter

    async def _batcher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await self._queued.wait()
            self._queued = trio.Event()
            batch, self._queue = self._queue, []
            self.batches += 1
            self.commands += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                with trio.fail_after(self.config.io_timeout):
                    results = await self.aio(self._execute, [command for command, _ in batch])
            except (trio.TooSlowError, *CONNECTION_ERRORS) as exc:
                error = exc if not isinstance(exc, trio.TooSlowError) else TimeoutError()
                results = [error] * len(batch)
            for (_, waiter), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    waiter.error = result
                else:
                    waiter.result = result
                waiter.done.set()

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """asyncio side: one pipeline (a single command needs no other path); results in order,
        errors in place. A script unknown to Redis is sent again with its source (EVAL)."""
        assert self._redis is not None  # `call` checked it
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for i in missing:
                    _evalsha, sha, *rest = commands[i]
                    pipe.execute_command("EVAL", self._scripts[sha].source, *rest)
                for i, result in zip(
                    missing, await pipe.execute(raise_on_error=False), strict=True
                ):
                    results[i] = result
        if len(commands) == 1 and isinstance(results[0], BaseException):
            raise results[0]
        return results
