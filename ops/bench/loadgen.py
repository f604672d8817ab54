"""The load generator process: `python loadgen.py SPEC.json OUT.json`, one scenario against one
running server, results as JSON. Started by run.py; it reads the server's CPU time and RSS from
/proc itself, so every measurement window is exactly the one it drives.

Scenarios (sizes in the spec's `params`):
- burst:   N subscribers of one channel; M messages published as fast as the publisher socket takes
           them (over the WebSocket, then through the HTTP API when the spec names one).
- paced:   N subscribers; messages at a fixed rate so that deliveries/s = `rate`; a warm-up second
           first, then `seconds` of measurement.
- many_channels: N connections, each on its own channel plus `shared` shared channels; one
           message per own channel (`rounds` times), then a burst on the shared channels.
- capacity: the paced fan-out at rising rates until a stage falls behind (a delivery missing or
           p99 latency over `p99_ms`): the highest rate that held.
- storm:   N connects (token verified by the server), at most `concurrency` in progress.
- idle:    N idle connections; server RSS before and after (and after closing them).
- reconnect_storm (Aether only): N clients subscribed with recovery to a channel with history,
           a few publications, then all dropped at once by the server API's `disconnect` (code
           3011, reconnect); publications go on while they reconnect with centrifuge-js's
           backoff and resubscribe with `recover`; every client must come back recovered with
           every publication in order.
Every wait has a deadline; a SIGALRM at the spec's `timeout` ends the process regardless.
"""

from __future__ import annotations

import heapq
import http.client
import json
import math
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import jwt
import wire
from engine import READY, Conn, Engine, HttpPublisher

__all__ = ["Run", "main"]

CHANNEL = "bench"
OWN = "bench.own."
SHARED = "bench.shared."
# The reconnect storm's channel (servers.py gives the namespace history and recovery) and the one
# user every storm client connects as: one `disconnect` call drops them all at once.
RECOVER_CHANNEL = "recover:bench"
STORM_USER = "storm"
# Close code of the drop: 3011 "force reconnect" (the SDKs reconnect after 3000-3499).
FORCE_RECONNECT = 3011


class Proc:
    """CPU time and memory of the server, from /proc: the sum over its processes (one, or the
    parent and the workers of `[server] workers`; a process gone meanwhile counts as 0)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds (all threads of all its processes)."""
        user = system = 0.0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except FileNotFoundError:
                continue
            # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
            user += int(fields[11]) / self.tick
            system += int(fields[12]) / self.tick
        return user, system

    def status(self, key: str) -> int:
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            total += int(line.split()[1]) * 1024
                            break
            except FileNotFoundError:
                continue
        return total

    def rss(self) -> int:
        return self.status("VmRSS")

    def fds(self) -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in self.pids)


class Window:
    """Server CPU, Redis CPU (when the server uses one), load generator CPU and wall time
    between `__init__` and `close`."""

    def __init__(self, proc: Proc, redis: Proc | None = None) -> None:
        self.proc, self.redis = proc, redis
        self.t0 = time.monotonic_ns()
        self.user0, self.sys0 = proc.cpu_split()
        self.redis0 = redis.cpu() if redis else 0.0
        self.self0 = time.process_time()
        self.self_sys0 = os.times().system

    def close(self) -> dict[str, float]:
        wall = (time.monotonic_ns() - self.t0) / 1e9
        user, system = self.proc.cpu_split()
        user, system = user - self.user0, system - self.sys0
        server = user + system
        own = time.process_time() - self.self0
        own_sys = os.times().system - self.self_sys0
        usage = {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server, 3),
            "server_sys_cpu_s": round(system, 3),
            "server_cpu_pct": round(100 * server / wall, 1) if wall else 0.0,
            "loadgen_cpu_s": round(own, 3),
            "loadgen_cpu_pct": round(100 * own / wall, 1) if wall else 0.0,
            "loadgen_sys_cpu_s": round(own_sys, 3),
        }
        if self.redis is not None:
            redis = self.redis.cpu() - self.redis0
            usage["redis_cpu_s"] = round(redis, 3)
            usage["redis_cpu_pct"] = round(100 * redis / wall, 1) if wall else 0.0
        return usage


def percentiles(values_ns: Any) -> dict[str, float] | None:
    if not values_ns:
        return None
    ordered = sorted(values_ns)
    n = len(ordered)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * n) - 1)] / 1e6, 3)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": rank(100), "samples": n}


class WsPublisher:
    """Publishing over one WebSocket connection; `window` bounds unacknowledged publishes where
    the protocol acknowledges them (Centrifugo); everywhere the socket buffer bounds the rest."""

    def __init__(self, conn: Conn, window: int) -> None:
        self.conn, self.window = conn, window
        self.sent = 0

    def can_publish(self) -> bool:
        conn = self.conn
        if conn.state != READY or len(conn.wbuf) > 65536:
            return False
        return not (conn.proto.acks and self.window and self.sent - conn.acked >= self.window)

    def publish(self, channel: str, data: bytes) -> None:
        self.conn.send(self.conn.proto.publish(self.sent, channel, data))
        self.sent += 1


class Run:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.params: dict[str, Any] = spec["params"]
        self.proto = wire.PROTOCOLS[spec["protocol"]]()
        self.proc = Proc(spec.get("server_pids") or [spec["server_pid"]])
        self.redis = Proc([spec["redis_pid"]]) if spec.get("redis_pid") else None
        self.engine = Engine(
            spec["host"], spec["port"], spec["src_addrs"], self.params.get("setup_concurrency", 200)
        )
        self.t_end = time.monotonic() + spec["timeout"] - 5
        self.notes: list[str] = []

    # --- helpers ---

    def token(self, user: str, later_s: int = 0) -> str:
        """An HS256 connect token for protocols that verify one; `later_s` moves `exp` on
        (different tokens for one user)."""
        if not self.proto.jwt:
            return ""
        claims = {"sub": user, "exp": int(time.time()) + 3600 + later_s}
        return jwt.encode(claims, self.spec["secret"], algorithm="HS256")

    def conns(self, role: str, n: int, channels: Any, first: int = 0) -> list[Conn]:
        return [
            Conn(self.engine, self.proto, role, i, channels(i), self.token(f"u{i}"))
            for i in range(first, first + n)
        ]

    def deadline(self, seconds: float) -> float:
        return min(time.monotonic() + seconds, self.t_end)

    def open(self, conns: list[Conn], seconds: float) -> float:
        """Open and set up `conns`; returns the seconds it took."""
        eng = self.engine
        t0 = time.monotonic()
        before = eng.ready + sum(eng.failures.values())
        eng.open(conns)
        goal = before + len(conns)
        eng.run_until(
            lambda: eng.ready + sum(eng.failures.values()) >= goal, self.deadline(seconds)
        )
        return time.monotonic() - t0

    def idle(self, seconds: float) -> None:
        self.engine.run_until(lambda: False, self.deadline(seconds))

    def sample(self, subs: list[Conn], n: int) -> None:
        step = max(1, len(subs) // max(1, n))
        for conn in subs[::step][:n]:
            conn.sampled = True

    def base_row(self) -> dict[str, Any]:
        eng = self.engine
        return {
            "setup_failures": dict(eng.failures),
            "server_closes": dict(eng.closes),
        }

    # --- phases ---

    def burst(
        self, publisher: Any, targets: list[str], expected: int, seconds: float, quiet: float = 3.0
    ) -> dict[str, Any]:
        """Publish `targets` (one channel per message) as fast as the publisher takes them; wait
        for `expected` deliveries, or `quiet` seconds without one, or the deadline."""
        eng = self.engine
        eng.reset_counters()
        eng.min_seq = 0
        state = {"seq": 0, "t_done": 0.0}
        total = len(targets)
        window = Window(self.proc, self.redis)
        t_first = time.monotonic_ns()

        def tick() -> float | None:
            seq = state["seq"]
            while seq < total and publisher.can_publish():
                publisher.publish(targets[seq], wire.payload(seq, time.monotonic_ns()))
                seq += 1
            if seq == total and not state["t_done"]:
                state["t_done"] = time.monotonic()
            state["seq"] = seq
            return None

        tick()
        complete = eng.run_until(
            self._all_delivered_or_quiet(expected, state, quiet), self.deadline(seconds), tick
        )
        usage = window.close()
        t_last = eng.t_last_delivery or time.monotonic_ns()
        elapsed = (t_last - t_first) / 1e9
        row = self._delivery_row(expected, elapsed, usage, complete)
        row["published"] = state["seq"]
        row["publisher_acked"] = getattr(publisher, "acked", None)
        row["publisher_errors"] = getattr(publisher, "errors", None)
        if isinstance(publisher, WsPublisher):
            row["publisher_acked"] = publisher.conn.acked if publisher.conn.proto.acks else None
            row["publisher_errors"] = publisher.conn.errors
        return row

    def paced(
        self, publisher: Any, channel: str, first: int, count: int, per_s: float, receivers: int
    ) -> dict[str, Any]:
        """`count` messages at `per_s` messages/s (sequence numbers from `first`)."""
        eng = self.engine
        eng.reset_counters()
        eng.min_seq = first
        interval = 1 / per_s
        state = {"seq": 0, "lag": 0.0, "t_done": 0.0}
        window = Window(self.proc, self.redis)
        t0 = time.monotonic()
        t_first = time.monotonic_ns()

        def tick() -> float | None:
            now = time.monotonic()
            seq = state["seq"]
            while seq < count and now >= t0 + seq * interval and publisher.can_publish():
                state["lag"] = max(state["lag"], now - (t0 + seq * interval))
                publisher.publish(channel, wire.payload(first + seq, time.monotonic_ns()))
                seq += 1
            state["seq"] = seq
            if seq == count:
                if not state["t_done"]:
                    state["t_done"] = now
                return None
            return max(0.0, t0 + seq * interval - time.monotonic())

        expected = count * receivers

        tick()
        complete = eng.run_until(
            self._all_delivered_or_quiet(expected, state, 3.0),
            self.deadline(count * interval + 30),
            tick,
        )
        usage = window.close()
        elapsed = ((eng.t_last_delivery or time.monotonic_ns()) - t_first) / 1e9
        row = self._delivery_row(expected, elapsed, usage, complete)
        row["publish_lag_max_ms"] = round(state["lag"] * 1000, 3)
        return row

    def _all_delivered_or_quiet(
        self, expected: int, state: dict[str, Any], quiet: float
    ) -> Callable[[], bool]:
        """The end of a delivery phase: `expected` deliveries, or, once the publisher is done
        (`state["t_done"]`), `quiet` seconds without one."""
        eng = self.engine

        def done() -> bool:
            if eng.delivered >= expected:
                return True
            if not state["t_done"]:
                return False
            last = max(eng.t_last_delivery / 1e9, state["t_done"])
            return time.monotonic() - last > quiet

        return done

    def _delivery_row(
        self, expected: int, elapsed: float, usage: dict[str, float], complete: bool
    ) -> dict[str, Any]:
        eng = self.engine
        delivered = eng.delivered
        row = {
            **self.base_row(),
            "expected": expected,
            "delivered": delivered,
            "complete": complete,
            "elapsed_s": round(elapsed, 3),
            "deliveries_per_s": round(delivered / elapsed, 1) if elapsed > 0 else 0.0,
            "server_cpu_us_per_delivery": (
                round(usage["server_cpu_s"] * 1e6 / delivered, 2) if delivered else None
            ),
            "latency_ms": percentiles(eng.latencies),
            # The load generator's own cost; a read's is mostly fixed, so it falls with more
            # deliveries per read (server batching, or a busy load generator reading late).
            "loadgen_cpu_us_per_delivery": (
                round(usage["loadgen_cpu_s"] * 1e6 / delivered, 2) if delivered else None
            ),
            "deliveries_per_read": round(delivered / eng.reads, 1) if eng.reads else None,
            "server_rss_peak_bytes": self.proc.status("VmHWM"),
            **usage,
        }
        if "redis_cpu_s" in usage:
            row["redis_cpu_us_per_delivery"] = (
                round(usage["redis_cpu_s"] * 1e6 / delivered, 2) if delivered else None
            )
        return row

    # --- scenarios ---

    def fanout_setup(self) -> tuple[list[Conn], Conn, dict[str, Any]]:
        n = self.params["subscribers"]
        subs = self.conns("sub", n, lambda i: [CHANNEL])
        pub = Conn(self.engine, self.proto, "pub", n, [], self.token("publisher"))
        took = self.open([*subs, pub], 60 + n / 50)
        ready = sum(c.state == READY for c in subs)
        if pub.state != READY or not ready:
            raise RuntimeError(
                f"setup failed: {ready}/{n} subscribers ready, {self.engine.failures}"
            )
        self.sample(subs, self.params.get("latency_sample", 100))
        return subs, pub, {"subscribers": ready, "setup_s": round(took, 3)}

    def scenario_burst(self) -> list[dict[str, Any]]:
        p = self.params
        subs, pub, info = self.fanout_setup()
        n, m = info["subscribers"], p["messages"]
        rows = []
        ws = WsPublisher(pub, 0)
        row = self.burst(ws, [CHANNEL] * m, n * m, p.get("seconds_max", 300))
        rows.append({**info, "publisher": "websocket", "messages": m, **row})
        api = self.spec.get("api")
        if api:
            self.idle(1.0)
            http = HttpPublisher(self.engine, api["port"], api["path"], api["key"], api["conns"])
            row = self.burst(http, [CHANNEL] * m, n * m, p.get("seconds_max", 300))
            http.close()
            row["http_statuses"] = dict(http.statuses)
            rows.append({**info, "publisher": "http_api", "messages": m, **row})
        self.engine.close_all([*subs, pub])
        return rows

    def scenario_paced(self) -> list[dict[str, Any]]:
        p = self.params
        subs, pub, info = self.fanout_setup()
        n = info["subscribers"]
        per_s = p["rate"] / n
        warm = max(1, int(per_s * p.get("warmup_s", 1.0)))
        count = max(1, int(per_s * p["seconds"]))
        ws = WsPublisher(pub, 0)
        self.paced(ws, CHANNEL, 0, warm, per_s, n)
        row = self.paced(ws, CHANNEL, warm, count, per_s, n)
        self.engine.close_all([*subs, pub])
        return [
            {**info, "publisher": "websocket", "target_deliveries_per_s": p["rate"],
             "messages": count, **row}
        ]  # fmt: skip

    def scenario_capacity(self) -> list[dict[str, Any]]:
        """The paced fan-out at rising rates (x `step` per stage, `seconds` each): the capacity
        is the highest rate whose stage delivered everything with p99 latency under `p99_ms`.
        Stops at the first stage that did not (or at `max_rate`). One row per stage."""
        p = self.params
        subs, pub, info = self.fanout_setup()
        n = info["subscribers"]
        ws = WsPublisher(pub, 0)
        self.paced(ws, CHANNEL, 0, max(1, int(p["rate"] / n * p.get("warmup_s", 1.0))),
                   p["rate"] / n, n)  # fmt: skip
        rows, rate, first = [], float(p["rate"]), 10**6
        while rate <= p.get("max_rate", 2_000_000):
            per_s = rate / n
            count = max(1, int(per_s * p["seconds"]))
            row = self.paced(ws, CHANNEL, first, count, per_s, n)
            first += count
            p99 = (row.get("latency_ms") or {}).get("p99")
            held = row["delivered"] >= row["expected"] and p99 is not None and p99 <= p["p99_ms"]
            rows.append({**info, "publisher": "websocket", "target_deliveries_per_s": round(rate),
                         "messages": count, "held": held, **row})  # fmt: skip
            if not held:
                break
            self.idle(0.5)  # what the previous stage left in buffers drains
            rate *= p.get("step", 1.5)
        self.engine.close_all([*subs, pub])
        capacity = max((r["target_deliveries_per_s"] for r in rows if r["held"]), default=0)
        for row in rows:
            row["capacity_deliveries_per_s"] = capacity
        return rows

    def scenario_many_channels(self) -> list[dict[str, Any]]:
        p = self.params
        n, k = p["connections"], p["shared"]
        shared = [f"{SHARED}{j}" for j in range(k)]
        conns = self.conns("sub", n, lambda i: [f"{OWN}{i}", *shared])
        pub = Conn(self.engine, self.proto, "pub", n, [], self.token("publisher"))
        window = Window(self.proc, self.redis)
        took = self.open(conns, 60 + n / 50)
        setup_usage = window.close()
        self.open([pub], 30)
        ready = sum(c.state == READY for c in conns)
        if pub.state != READY or not ready:
            raise RuntimeError(f"setup failed: {ready}/{n} ready, {self.engine.failures}")
        info = {
            "connections": ready,
            "shared_channels": k,
            "subscriptions": ready * (1 + k),
            "setup_s": round(took, 3),
            "subscriptions_per_s": round(ready * (1 + k) / took, 1),
            "setup_server_cpu_us_per_subscription": round(
                setup_usage["server_cpu_s"] * 1e6 / (ready * (1 + k)), 2
            ),
        }
        rows = []
        for conn in conns:
            conn.sampled = True
        rounds = p.get("rounds", 1)
        targets = [f"{OWN}{i}" for _ in range(rounds) for i in range(n)]
        ws = WsPublisher(pub, p.get("window", 100))
        row = self.burst(ws, targets, ready * rounds, p.get("seconds_max", 300))
        rows.append({**info, "phase": "own channels", "messages": len(targets), **row})
        for conn in conns:
            conn.sampled = False
        self.sample(conns, p.get("latency_sample", 100))
        m = p["shared_messages"]
        targets = [shared[j % k] for j in range(m * k)]
        row = self.burst(ws, targets, ready * k * m, p.get("seconds_max", 300))
        rows.append({**info, "phase": "shared channels", "messages": len(targets), **row})
        self.engine.close_all([*conns, pub])
        return rows

    def scenario_storm(self) -> list[dict[str, Any]]:
        p = self.params
        n = p["connections"]
        # A connect is the protocol's connect plus one subscribe (join for Socket.IO and the
        # plain peer), as an SDK's client does it: the setup a reconnect storm repeats.
        conns = self.conns("sub", n, lambda i: ["storm"])
        self.engine.max_opening = p.get("concurrency", 100)
        fds0 = self.proc.fds()
        window = Window(self.proc, self.redis)
        t0 = time.monotonic_ns()
        self.open(conns, 60 + n / 50)
        ready = [c for c in conns if c.state == READY]
        usage = window.close()
        t_end = max((c.t_ready for c in ready), default=time.monotonic_ns())
        elapsed = (t_end - t0) / 1e9
        row = {
            **self.base_row(),
            "connections": n,
            "connected": len(ready),
            "concurrency": self.engine.max_opening,
            "elapsed_s": round(elapsed, 3),
            "connects_per_s": round(len(ready) / elapsed, 1) if elapsed > 0 else 0.0,
            "server_cpu_us_per_connect": (
                round(usage["server_cpu_s"] * 1e6 / len(ready), 1) if ready else None
            ),
            "connect_latency_ms": percentiles([c.t_ready - c.t_start for c in ready]),
            "jwt": bool(self.proto.jwt),
            **usage,
        }
        if "redis_cpu_s" in usage:
            row["redis_cpu_us_per_connect"] = (
                round(usage["redis_cpu_s"] * 1e6 / len(ready), 1) if ready else None
            )
        row["close_drain_s"] = self.close_and_drain(conns, fds0, 60)
        return [row]

    def scenario_reconnect_storm(self) -> list[dict[str, Any]]:
        """N clients recover after a server-side drop (see `ReconnectStorm`). Phases: set up
        (connect + subscribe with `recoverable`), `before` publications that every client
        receives, the drop (one `POST /api/disconnect` for the storm's user, code 3011), the
        outage: publications at `rate`/s until every client is back, then the check that every
        client holds every publication up to the stream's top (`/api/history`), in order, once.
        Publications go through the server API: no publisher connection to keep alive through
        a storm that may stall the server's loop for seconds."""
        p = self.params
        api = self.spec.get("admin_api")
        if not api or not api.get("admin_key"):
            raise RuntimeError("needs the server API's disconnect (an admin key): none answered")
        eng = self.engine
        storm = ReconnectStorm(self)
        n = storm.n
        fds0 = self.proc.fds()
        took = self.open(storm.conns, 60 + n / 50)
        ready = sum(c.state == READY for c in storm.conns)
        if ready < n:
            raise RuntimeError(f"setup failed: {ready}/{n} clients ready, {eng.failures}")
        publisher = HttpPublisher(eng, api["port"], api["path"], api["key"], 2)
        seq = 0
        goal = {"count": 0}

        def publish() -> None:
            """Publish up to `goal["count"]` publications in all (a request at a time per
            API connection)."""
            nonlocal seq
            while seq < goal["count"] and publisher.can_publish():
                publisher.publish(RECOVER_CHANNEL, wire.payload(seq, time.monotonic_ns()))
                seq += 1

        def tick_publish() -> float | None:
            publish()
            return None

        before = goal["count"] = p.get("before", 3)
        storm.set_target(before)
        eng.run_until(lambda: storm.reached == n, self.deadline(60), tick_publish)
        if storm.reached < n:
            raise RuntimeError(f"before the drop: {storm.reached}/{n} clients got publications")
        epochs = {c.stream.epoch for c in storm.conns}
        eng.reset_counters()
        eng.failures.clear()
        eng.closes.clear()
        eng.max_opening = p.get("concurrency", 1000)
        eng.on_close = storm.on_close
        storm.storming = True
        storm.window = Window(self.proc, self.redis)
        t_drop = time.monotonic()
        drop = {"user": STORM_USER, "disconnect": {"code": FORCE_RECONNECT}}
        reply = self._api(api, "disconnect", drop)
        if "error" in reply:
            raise RuntimeError(f"POST /api/disconnect answered {reply}")
        interval = 1 / p.get("rate", 2.0)
        state = {"next_check": 0.0}

        def tick() -> float | None:
            now = time.monotonic()
            if storm.back < n:  # publications go on during the outage
                goal["count"] = before + 1 + int((now - t_drop) / interval)
            publish()
            if now >= state["next_check"]:
                storm.time_out_attempts()
                state["next_check"] = now + 0.1
            due = storm.reconnect_due()
            return min(due if due is not None else 0.05, 0.1)

        all_back = eng.run_until(
            lambda: storm.back == n, self.deadline(p.get("seconds_max", 60 + n / 50)), tick
        )
        usage = storm.usage or storm.window.close()
        t_all_back = time.monotonic()
        eng.on_close = None
        storm.storming = False
        # Every publication answered, then the stream's top from the server: every client
        # must end there.
        eng.run_until(
            lambda: publisher.acked + publisher.errors >= goal["count"],
            self.deadline(30),
            tick_publish,
        )
        top = self._api(api, "history", {"channel": RECOVER_CHANNEL, "limit": 0})
        stream_top = int(top.get("result", {}).get("offset", 0))
        storm.set_target(stream_top)
        eng.run_until(lambda: storm.reached == n, self.deadline(30))
        publisher.close()
        row = self._storm_row(storm, p, took, t_drop, t_all_back, all_back, usage, seq,
                              before, epochs, fds0, stream_top)  # fmt: skip
        row["publisher_acked"], row["publisher_errors"] = publisher.acked, publisher.errors
        row["http_statuses"] = dict(publisher.statuses)
        return [row]

    def _api(self, api: dict[str, Any], method: str, body: dict[str, Any]) -> dict[str, Any]:
        """One server API call with the admin key; the decoded answer, or {"error": ...}."""
        conn = http.client.HTTPConnection("127.0.0.1", api["port"], timeout=30)
        try:
            headers = {"Content-Type": "application/json", "X-API-Key": api["admin_key"]}
            conn.request("POST", f"/api/{method}", json.dumps(body), headers)
            response = conn.getresponse()
            text = response.read()
        except OSError as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            conn.close()
        if response.status != 200:
            return {"error": f"HTTP {response.status} {text[:200]!r}"}
        answer: dict[str, Any] = json.loads(text)
        return answer

    def _storm_row(
        self, storm: ReconnectStorm, p: dict[str, Any], took: float, t_drop: float,
        t_all_back: float, all_back: bool, usage: dict[str, float], published: int,
        before: int, epochs: set[str], fds0: int, stream_top: int,
    ) -> dict[str, Any]:  # fmt: skip
        conns, n = storm.conns, storm.n
        streams = [c.stream for c in conns]
        recovered = sum(s.recovered is True for s in streams)
        complete = [
            s.recovered is True and s.offset == stream_top and not s.gaps and not s.dups
            for s in streams
        ]
        back = [i for i in range(n) if storm.back_at[i]]
        drop_ns = int(t_drop * 1e9)
        last_back = max((storm.back_at[i] for i in back), default=0)
        missed = [s.missed for s in streams if s.recovered]
        # Clients by how many publications short of the top they ended (complete ones: none).
        short = Counter(stream_top - s.offset for s in streams if s.offset != stream_top)
        behind_top = {str(k): v for k, v in sorted(short.items())}
        row: dict[str, Any] = {
            **self.base_row(),
            "clients": n,
            "setup_s": round(took, 3),
            "publications_before": before,
            "publications": published,
            "publications_during_outage": published - before,
            "stream_top": stream_top,
            "epochs": len(epochs),
            "back": len(back),
            "recovered": recovered,
            "not_recovered": sum(s.recovered is False for s in streams),
            "complete": sum(complete),
            "failed": n - sum(complete),
            "behind_top": behind_top,
            "gaps": sum(s.gaps for s in streams),
            "duplicates": sum(s.dups for s in streams),
            # Unsubscribe pushes 2500 followed (a Redis PUB/SUB session lost and rebuilt).
            "resubscribes": sum(s.resubscribes for s in streams),
            "all_back": all_back,
            "all_back_s": round((last_back - drop_ns) / 1e9, 3) if all_back else None,
            "all_dropped_s": round((max(storm.dropped_at) - drop_ns) / 1e9, 3)
            if all(storm.dropped_at) else None,
            "outage_ms": percentiles([storm.back_at[i] - storm.dropped_at[i] for i in back]),
            "attempts": storm.attempts,
            "attempts_per_client_max": 1 + max(storm.steps, default=0),
            "missed_per_client_mean": round(sum(missed) / len(missed), 2) if missed else None,
            "missed_per_client_max": max(missed, default=None),
            "readmissions_per_s": round(len(back) / ((last_back - drop_ns) / 1e9), 1)
            if back and last_back > drop_ns else None,
            "server_cpu_us_per_readmission": (
                round(usage["server_cpu_s"] * 1e6 / len(back), 1) if back else None
            ),
            "backoff_s": [p.get("min_delay_s", 0.5), p.get("max_delay_s", 20.0)],
            "concurrency": self.engine.max_opening,
            "wall_after_all_back_s": round(time.monotonic() - t_all_back, 3),
            **usage,
        }  # fmt: skip
        if "redis_cpu_s" in usage:
            row["redis_cpu_us_per_readmission"] = (
                round(usage["redis_cpu_s"] * 1e6 / len(back), 1) if back else None
            )
        row["close_drain_s"] = self.close_and_drain(conns, fds0, 60)
        return row

    def scenario_idle(self) -> list[dict[str, Any]]:
        p = self.params
        n = p["connections"]
        proc = self.proc
        # Warm-up: code paths and lazily built tables exist before the baseline is taken.
        warm = self.conns("idle", min(50, n), lambda i: [], first=n)
        self.open(warm, 30)
        self.engine.close_all(warm)
        self.idle(1.0)
        rss0, fds0 = proc.rss(), proc.fds()
        conns = self.conns("idle", n, lambda i: [])
        took = self.open(conns, 60 + n / 50)
        connected = sum(c.state == READY for c in conns)
        rss1 = self._settled_rss(p.get("settle_s", 10.0))
        drain = self.close_and_drain(conns, fds0, 60)
        rss2 = self._settled_rss(p.get("settle_s", 10.0))
        return [
            {
                **self.base_row(),
                "connections": n,
                "connected": connected,
                "setup_s": round(took, 3),
                "rss_before_bytes": rss0,
                "rss_after_bytes": rss1,
                "rss_after_close_bytes": rss2,
                "rss_peak_bytes": proc.status("VmHWM"),
                "rss_per_conn_bytes": round((rss1 - rss0) / connected) if connected else None,
                "close_drain_s": drain,
            }
        ]

    def close_and_drain(self, conns: list[Conn], fds0: int, limit: float) -> float | None:
        """Close `conns` (FIN, no closing handshake) and return the seconds until the server's
        open file count is back to `fds0` (+2 for stragglers), or None after `limit` s."""
        t0 = time.monotonic()
        self.engine.close_all(conns)
        t_end = min(t0 + limit, self.t_end)
        while time.monotonic() < t_end:
            if self.proc.fds() <= fds0 + 2:
                return round(time.monotonic() - t0, 3)
            time.sleep(0.05)
        self.notes.append(
            f"server still had {self.proc.fds() - fds0} more files open after {limit} s"
        )
        return None

    def _settled_rss(self, limit: float) -> int:
        """RSS once it changed by less than 0.5% over half a second (or after `limit` s)."""
        t_end = time.monotonic() + limit
        last = self.proc.rss()
        while time.monotonic() < t_end:
            self.idle(0.5)
            now = self.proc.rss()
            if abs(now - last) <= 0.005 * last:
                return now
            last = now
        self.notes.append("RSS still moving when measured")
        return last


class ReconnectStorm:
    """The reconnect storm (`Run.scenario_reconnect_storm`): N recovering clients of one
    channel with history, dropped at once by the server, each reconnecting on its own
    centrifuge-js schedule: a failed or timed-out attempt (no connect and subscribe reply within
    `timeout_s`, centrifuge-js's 5 s) is retried after `backoff(step)`, step + 1. Reconnect
    timers are a heap the engine loop's tick pops; the set of attempts in flight is checked for
    timeouts every 100 ms."""

    def __init__(self, run: Run) -> None:
        p = run.params
        self.run, self.engine = run, run.engine
        self.n = p["clients"]
        self.low, self.high = p.get("min_delay_s", 0.5), p.get("max_delay_s", 20.0)
        self.timeout_ns = int(p.get("timeout_s", 5.0) * 1e9)
        self.proto = wire.Recovering(on_back=self.on_back, on_publication=self.on_publication)
        self.conns = [
            Conn(self.engine, self.proto, "stream", i, [RECOVER_CHANNEL],
                 run.token(STORM_USER, later_s=i))
            for i in range(self.n)
        ]  # fmt: skip
        for conn in self.conns:
            conn.stream = wire.Stream()
        # Per client: when the server dropped it, when it was back, its failed attempts.
        self.dropped_at = [0] * self.n
        self.back_at = [0] * self.n
        self.steps = [0] * self.n
        self.timers: list[tuple[float, int]] = []
        self.trying: dict[int, Conn] = {}
        self.storming = False
        self.back = 0
        self.attempts = 0
        self.usage: dict[str, float] | None = None
        self.window: Window | None = None
        # Clients whose offset reached `target` (counted as publications arrive).
        self.target = 0
        self.reached = 0
        self.reached_at = [0] * self.n

    # --- the adapter's callbacks ---

    def on_publication(self, conn: Conn) -> None:
        i = conn.index
        if conn.stream.offset >= self.target and self.reached_at[i] < self.target:
            self.reached_at[i] = self.target
            self.reached += 1

    def on_back(self, conn: Conn) -> None:
        self.on_publication(conn)  # recovered publications came with the reply
        if not self.storming:
            return
        i = conn.index
        self.trying.pop(i, None)
        self.back_at[i] = time.monotonic_ns()
        self.back += 1
        if self.back == self.n and self.window is not None:
            self.usage = self.window.close()  # the readmission window ends with the last one

    def on_close(self, conn: Conn) -> None:
        """The server dropped `conn` or an attempt failed: the next attempt after a backoff."""
        if not self.storming or conn.role != "stream":
            return
        i = conn.index
        now = time.monotonic()
        if not self.dropped_at[i]:
            self.dropped_at[i] = time.monotonic_ns()
        else:
            self.steps[i] += 1
        self.trying.pop(i, None)
        delay = wire.backoff(self.steps[i], self.low, self.high)
        heapq.heappush(self.timers, (now + delay, i))

    # --- the loop's tick ---

    def reconnect_due(self) -> float | None:
        now = time.monotonic()
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, i = heapq.heappop(timers)
            conn = self.conns[i]
            conn.reset()
            self.trying[i] = conn
            self.attempts += 1
            self.engine.open([conn])
        return timers[0][0] - now if timers else None

    def time_out_attempts(self) -> None:
        now = time.monotonic_ns()
        late = [
            c for c in self.trying.values()
            if c.sock is not None and c.state != READY and now - c.t_start > self.timeout_ns
        ]  # fmt: skip
        for conn in late:
            conn.fail("timeout")

    def set_target(self, top: int) -> None:
        self.target = top
        self.reached = 0
        for conn in self.conns:
            self.on_publication(conn)


def main() -> int:
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise TimeoutError(f"load generator hard timeout ({spec['timeout']} s)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(spec["timeout"]))
    run = Run(spec)
    result: dict[str, Any] = {"scenario": spec["scenario"], "server": spec["server"]}
    try:
        result["rows"] = getattr(run, f"scenario_{spec['scenario']}")()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["rows"] = []
    finally:
        signal.alarm(0)
    result["notes"] = run.notes
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
