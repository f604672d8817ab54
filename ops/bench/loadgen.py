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
Every wait has a deadline; a SIGALRM at the spec's `timeout` ends the process regardless.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jwt
import wire
from engine import READY, Conn, Engine, HttpPublisher

CHANNEL = "bench"
OWN = "bench.own."
SHARED = "bench.shared."


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

    def token(self, user: str) -> str:
        if self.spec["protocol"] != "centrifuge":
            return ""
        claims = {"sub": user, "exp": int(time.time()) + 3600}
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
        conns = self.conns("idle", n, lambda i: [])
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
            "jwt": self.spec["protocol"] == "centrifuge",
            **usage,
        }
        if "redis_cpu_s" in usage:
            row["redis_cpu_us_per_connect"] = (
                round(usage["redis_cpu_s"] * 1e6 / len(ready), 1) if ready else None
            )
        row["close_drain_s"] = self.close_and_drain(conns, fds0, 60)
        return [row]

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
