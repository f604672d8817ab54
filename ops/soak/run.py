"""`just soak` / `python ops/soak/run.py [--smoke] [--minutes M] [--clients N] [--out DIR]
[--fault NAME@SECONDS ...]`.

Deploys Aether as ops/README.md does (ops/deploy.sh into a prefix, two processes over Redis,
supervisord, nginx with TLS, backups to a private S3), runs a realistic mix of clients,
witnesses (centrifuge-python, centrifuge-js) and publishers for a bounded time while injecting
faults on a schedule, and writes REPORT.md, report.json and timeline.png into the output directory
(ops/soak/ by default; `--smoke` writes into a temporary directory unless `--out` is given).
Everything listens on 127.0.0.1; the run stops by itself. Exit status: 0 when no publication
was lost or duplicated inside the history window, 1 otherwise (the smoke run in CI fails on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backups import server_backup_metrics
from clients import Backoff, Ledger, LoadClient, Stats
from deployment import PROCESSES, Deployment, deployed
from faults import FAULTS, DelayProxy
from js_witnesses import JsWitnesses, ensure_sdk
from report import write_report

HERE = Path(__file__).resolve().parent
HOT = "soak:hot"
SOURCES = 64  # 127.0.0.2 .. 127.0.0.65


@attrs.frozen
class Plan:
    seconds: float
    clients: int
    rooms: int
    hot_rate: float  # API publications a second to the hot channel
    room_rate: float  # ... to random rooms, in all
    personal_rate: float  # ... to random personal channels, in all
    client_publishers: float  # share of clients publishing to their room
    client_publish_every: float
    query_every: float
    backoff: tuple[float, float]
    healthcheck_every: float
    faults: tuple[tuple[float, str], ...]
    settle: float
    slow_hold: float = 8.0
    impair_hold: float = 8.0


SMOKE = Plan(
    seconds=40, clients=120, rooms=12, hot_rate=10, room_rate=20, personal_rate=10,
    client_publishers=0.1, client_publish_every=5, query_every=10, backoff=(0.2, 4),
    healthcheck_every=5,
    faults=((2, "backup_cycle"), (6, "bad_input"), (10, "kill_worker"), (20, "restart_redis"),
            (28, "slow_consumers"), (30, "impair_network")),
    settle=30,
)  # fmt: skip


def full_plan(minutes: float, clients: int) -> Plan:
    seconds = minutes * 60
    cycle = ("kill_worker", "bad_input", "backup_cycle", "restart_redis", "slow_consumers",
             "rolling_deploy", "drain_worker", "impair_network")  # fmt: skip
    every = 150.0  # a fault every 2.5 minutes, the first after a quiet minute
    faults = tuple(
        (60 + k * every, cycle[k % len(cycle)]) for k in range(int((seconds - 90) // every))
    )
    return Plan(
        seconds=seconds, clients=clients, rooms=max(1, clients // 10), hot_rate=10, room_rate=40,
        personal_rate=20, client_publishers=0.05, client_publish_every=10, query_every=30,
        backoff=(0.5, 20), healthcheck_every=15, faults=faults, settle=60,
    )  # fmt: skip


@attrs.define
class Run:
    plan: Plan
    dep: Deployment
    ssl_context: ssl.SSLContext
    proxy: DelayProxy
    stats: Stats = attrs.field(factory=Stats)
    clients: list[LoadClient] = attrs.field(factory=list)
    fault_log: list[dict[str, Any]] = attrs.field(factory=list)
    health: list[dict[str, Any]] = attrs.field(factory=list)
    published: dict[str, int] = attrs.field(factory=dict)  # API publications acknowledged
    # channel -> offset -> (second of the run it was acknowledged, failed attempts before)
    acked: dict[str, dict[int, tuple[float, int]]] = attrs.field(factory=dict)
    publish_retries: int = 0
    publish_failures: int = 0
    witness: Ledger = attrs.field(factory=lambda: Ledger(HOT, ids=set()))
    witness_events: list[str] = attrs.field(factory=list)
    js: JsWitnesses = attrs.field(factory=lambda: JsWitnesses(HOT))
    stop_publishing: trio.Event = attrs.field(factory=trio.Event)
    faults_done: trio.Event = attrs.field(factory=trio.Event)
    lag: dict[int, float] = attrs.field(factory=dict)  # second -> the harness's worst loop lag (ms)
    # A lost offset as the stream holds it now: its publication's id, or None (not in it).
    lost_in_history: dict[str, dict[int, str | None]] = attrs.field(factory=dict)
    backups: list[dict[str, Any]] = attrs.field(factory=list)  # each backup_cycle's attempts
    server_backup_metrics: dict[int, dict[str, float]] = attrs.field(factory=dict)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.stats.started, 2)


def say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


# --- publishers ----------------------------------------------------------------------------------


async def api_publisher(run: Run) -> None:
    """Publications through the server API at the plan's rates, alternating processes; a failed
    publish is retried (on the other process) with the same idempotency key, as a careful
    backend does, for at most 30 s."""
    plan, seq = run.plan, 0
    rate = plan.hot_rate + plan.room_rate + plan.personal_rate
    key = run.dep.key("backend")
    async with httpx.AsyncClient(timeout=5, headers={"X-API-Key": key}) as http, \
            trio.open_nursery() as nursery:  # fmt: skip
        while not run.stop_publishing.is_set():
            seq += 1
            pick = random.uniform(0, rate)
            if pick < plan.hot_rate:
                channel = HOT
            elif pick < plan.hot_rate + plan.room_rate:
                channel = f"soak:room.{random.randrange(plan.rooms)}"
            else:
                channel = f"soak:#u{random.randrange(plan.clients)}"
            nursery.start_soon(publish_one, run, http, channel, seq)
            await trio.sleep(1 / rate)


async def publish_one(run: Run, http: httpx.AsyncClient, channel: str, seq: int) -> None:
    with trio.move_on_after(30):
        attempt = 0
        while True:
            # Latency counts from this attempt: a retry's wait is the fault's, reported there.
            body = {"channel": channel, "data": {"i": f"a{seq}", "t": time.time_ns()},
                    "idempotency_key": f"soak-{seq}"}  # fmt: skip
            instance = 1 + (seq + attempt) % PROCESSES
            run.stats.operations += 1
            try:
                answer = await http.post(f"{run.dep.internal(instance)}/api/publish", json=body)
                result = answer.json()
                if answer.status_code == 200 and "error" not in result:
                    run.published[channel] = run.published.get(channel, 0) + 1
                    offset = (result.get("result") or {}).get("offset")
                    if offset is not None:  # when, and after how many tries (lost ones' story)
                        run.acked.setdefault(channel, {})[int(offset)] = (run.elapsed(), attempt)
                    return
                run.stats.error(f"api publish {answer.status_code} {result.get('error')}")
            except (httpx.HTTPError, ValueError) as exc:
                run.stats.error(f"api publish {type(exc).__name__}")
            attempt += 1
            run.publish_retries += 1
            await trio.sleep(min(2.0, 0.1 * 2**attempt))
    run.publish_failures += 1


# --- health checks, faults, the witness -----------------------------------------------------------


async def health_checks(run: Run) -> None:
    while not run.stop_publishing.is_set():
        for instance in range(1, PROCESSES + 1):
            started = run.elapsed()
            result = await trio.to_thread.run_sync(
                lambda i=instance: run.dep.aether(
                    "healthcheck",
                    "-c",
                    str(run.dep.config),
                    "--instance",
                    str(i),
                    "--json",
                    timeout=60,
                )
            )
            try:
                details = json.loads(result.stdout)
            except ValueError:
                details = {"line": result.stdout.strip() or result.stderr.strip()[-200:]}
            run.health.append(
                {
                    "t": started,
                    "instance": instance,
                    "exit": result.returncode,
                    "summary": details.get("line", details.get("status", "")),
                }
            )
        await trio.sleep(run.plan.healthcheck_every)


async def fault_schedule(run: Run) -> None:
    """Each fault at its time, in its own task: a long one does not push the next one back."""
    async with trio.open_nursery() as nursery:
        for at, name in run.plan.faults:
            await trio.sleep(max(0.0, at - run.elapsed()))
            nursery.start_soon(inject, run, name)
    run.faults_done.set()


async def inject(run: Run, name: str) -> None:
    started = run.elapsed()
    try:
        outcome = await FAULTS[name](run.dep, run)
    except Exception as exc:
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    run.fault_log.append({"t": started, "fault": name, "ended": run.elapsed(), **outcome})
    say(f"[{started:7.1f}s] {name}: {outcome}")


async def loop_lag(run: Run) -> None:
    """How late this harness's own event loop runs (a late harness inflates the latencies)."""
    while True:
        expected = trio.current_time() + 0.1
        await trio.sleep(0.1)
        lag = trio.current_time() - expected
        second = int(run.elapsed())
        run.lag[second] = max(run.lag.get(second, 0.0), lag * 1000)


def witness_thread(run: Run, url: str, token: str, cafile: str, stop: threading.Event) -> None:
    """A real centrifuge-python client on the hot channel (asyncio, in its own thread)."""
    from centrifuge import Client, SubscriptionEventHandler

    ledger = run.witness

    class Events(SubscriptionEventHandler):  # type: ignore[misc]
        async def on_subscribed(self, ctx: Any) -> None:
            if ledger.first is None:
                ledger.stand(ctx.stream_position.epoch if ctx.stream_position else "",
                             ctx.stream_position.offset if ctx.stream_position else 0)  # fmt: skip
            run.witness_events.append(f"subscribed recovered={ctx.recovered}")

        async def on_publication(self, ctx: Any) -> None:
            ledger.apply(ctx.pub.offset, ctx.pub.data)

    async def main() -> None:
        context = ssl.create_default_context(cafile=cafile)
        client = Client(url, token=token, ssl_context=context)
        sub = client.new_subscription(HOT, events=Events())
        await client.connect()
        await sub.subscribe()
        while not stop.is_set():  # noqa: ASYNC110  (a thread's Event, set from Trio)
            await asyncio.sleep(0.2)
        await client.disconnect()

    asyncio.run(main())


# --- the run -------------------------------------------------------------------------------------


async def settle(run: Run, tops: dict[str, int]) -> float:
    """After the publishers stopped and the faults healed: seconds until every client (and the
    witness) is connected and caught up with every channel's top, at most `plan.settle`."""
    started = trio.current_time()

    def behind(client: LoadClient) -> bool:
        return not client.connected or any(
            ledger.last < tops[ch] for ch, ledger in client.ledgers.items()
        )

    with trio.move_on_after(run.plan.settle):
        while (  # noqa: ASYNC110
            any(behind(c) for c in run.clients)
            or run.witness.last < tops[HOT]
            or run.js.behind(tops[HOT])
        ):
            await trio.sleep(0.5)
    return trio.current_time() - started


async def channel_tops(run: Run, channels: list[str]) -> dict[str, int]:
    """Every channel's final top offset, from the server API (retried: it is the truth the
    accounting rests on, so a run that cannot read it fails rather than guesses)."""
    tops: dict[str, int] = {}
    key = run.dep.key("backend")
    async with httpx.AsyncClient(timeout=10, headers={"X-API-Key": key}) as http:
        with trio.fail_after(120):
            for channel in channels:
                attempt = 0
                while channel not in tops:
                    instance = 1 + attempt % PROCESSES
                    attempt += 1
                    try:
                        answer = await http.post(
                            f"{run.dep.internal(instance)}/api/history",
                            json={"channel": channel, "limit": 0},
                        )
                        result = answer.json().get("result")
                    except (httpx.HTTPError, ValueError):
                        result = None
                    if result is None:
                        await trio.sleep(0.5)
                        continue
                    tops[channel] = int(result.get("offset", 0))
    return tops


async def lost_in_history(run: Run, tops: dict[str, int]) -> dict[str, dict[int, str | None]]:
    """Every offset some subscription lost (at most 20 a channel), read back from history: in
    the stream but never delivered, or never in the stream at all (an offset skipped)."""
    wanted: dict[str, set[int]] = {}
    for client in run.clients:
        for channel, ledger in client.ledgers.items():
            missing = ledger.missing_offsets(tops.get(channel, 0))
            if missing:
                wanted.setdefault(channel, set()).update(missing[:20])
    found: dict[str, dict[int, str | None]] = {}
    key = run.dep.key("backend")
    async with httpx.AsyncClient(timeout=10, headers={"X-API-Key": key}) as http:
        for channel, offsets in sorted(wanted.items())[:20]:
            try:
                answer = await http.post(f"{run.dep.internal(1)}/api/history",
                                         json={"channel": channel, "limit": 20000})  # fmt: skip
                pubs = (answer.json().get("result") or {}).get("publications", [])
            except (httpx.HTTPError, ValueError):
                continue
            held = {int(p.get("offset", 0)): _ident(p.get("data")) for p in pubs}
            found[channel] = {offset: held.get(offset) for offset in sorted(offsets)[:20]}
    return found


def _ident(data: Any) -> str:
    return str(data.get("i")) if isinstance(data, dict) else repr(data)[:40]


async def soak(plan: Plan, directory: Path, out: Path) -> dict[str, Any]:
    node = ensure_sdk()
    with deployed(directory / "deployment") as dep:
        context = ssl.create_default_context()
        dep.ca.configure_trust(context)
        cafile = directory / "deployment" / "ca.pem"
        dep.ca.cert_pem.write_to_path(str(cafile))
        say(f"deployed: {dep.url} (redis {dep.redis.address})")
        proxy = DelayProxy(dep.https_port)
        run = Run(plan, dep, context, proxy)
        stop_witness = threading.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            say(f"proxy on {proxy.port}")
            for index in range(plan.clients):
                user = f"u{index}"
                room = f"soak:room.{index % plan.rooms}"
                client = LoadClient(
                    index=index, user=user, token=dep.token(user),
                    channels=[HOT, room, f"soak:#{user}"], room=room,
                    source=f"127.0.0.{2 + index % SOURCES}", stats=run.stats,
                    backoff=Backoff(*plan.backoff), auditor=index < 5,
                    publish_every=plan.client_publish_every
                    if random.random() < plan.client_publishers else 0.0,
                    query_every=plan.query_every,
                )  # fmt: skip
                run.clients.append(client)
                # One client in ten goes through the impairable proxy, the rest straight to nginx.
                port = proxy.port if index % 10 == 9 else dep.https_port
                nursery.start_soon(client.run, "127.0.0.1", port, context)
                if index % 50 == 49:
                    await trio.sleep(0.05)  # the fleet arrives over a moment, not in one SYN burst
            say("clients started")
            nursery.start_soon(
                trio.to_thread.run_sync, witness_thread, run, dep.url, dep.token("witness"),
                str(cafile), stop_witness,
            )  # fmt: skip
            tokens = [dep.token(f"js-witness-{k}") for k in range(run.js.count)]
            direct = f"ws://127.0.0.1:{dep.ws_base + 1}/connection/websocket"
            await nursery.start(run.js.run, node, dep.url, direct, tokens, str(cafile))
            say("witnesses started (centrifuge-python, centrifuge-js)")
            await trio.sleep(2)
            say(f"{sum(c.connected for c in run.clients)} of {plan.clients} clients connected")
            run.stats.started = run.js.started = time.monotonic()
            nursery.start_soon(api_publisher, run)
            nursery.start_soon(health_checks, run)
            nursery.start_soon(fault_schedule, run)
            nursery.start_soon(loop_lag, run)
            await trio.sleep(plan.seconds)
            run.stop_publishing.set()
            say("publishers stopped; waiting for the faults to heal")
            with trio.move_on_after(120):
                await run.faults_done.wait()
            await trio.sleep(1)  # publishes in flight land
            say("settling")
            channels = sorted({ch for c in run.clients for ch in c.channels})
            tops = await channel_tops(run, channels)
            settled = await settle(run, tops)
            run.lost_in_history = await lost_in_history(run, tops)
            run.server_backup_metrics = await server_backup_metrics(dep)
            stop_witness.set()
            await run.js.stop()
            for client in run.clients:
                client.stopping = True
            nursery.cancel_scope.deadline = trio.current_time() + 5
        return write_report(run, tops, settled, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the CI version: under a minute")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fault", action="append", default=[], metavar="NAME@SECONDS",
                        help=f"one more fault on the schedule ({', '.join(FAULTS)}), e.g. "
                        "--smoke --fault rolling_deploy@34")  # fmt: skip
    args = parser.parse_args()
    random.seed(args.seed)
    plan = SMOKE if args.smoke else full_plan(args.minutes, args.clients)
    extra = tuple((float(at), name) for name, at in (f.split("@") for f in args.fault))
    if unknown := {name for _, name in extra} - set(FAULTS):
        parser.error(f"unknown fault {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    plan = attrs.evolve(plan, faults=tuple(sorted(plan.faults + extra)))
    out = args.out or (Path(tempfile.mkdtemp(prefix="aether-soak-")) if args.smoke else HERE)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aether-soak-dep-") as scratch:
        report = trio.run(soak, plan, Path(scratch), out)
    print(f"report: {out / 'REPORT.md'}")
    print(report["summary"])
    return 0 if report["zero_loss"] else 1


if __name__ == "__main__":
    sys.exit(main())
