"""Machine facts, Aether-to-peer ratios, and the markdown rendering of a results document."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "code_fingerprint", "machine_facts", "markdown", "ratios", "reconnect_storm", "redis_targets",
]  # fmt: skip

PACKAGES = [
    "aether-trio", "trio", "trio-websocket", "wsproto", "orjson", "PyJWT", "hypercorn",
    "websockets", "python-socketio", "python-engineio", "uvicorn",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = Path(__file__).resolve().parent / "peers" / "node" / "node_modules"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def code_fingerprint(package: Path) -> str:
    """A digest of the Python source under `package` (the tree may hold uncommitted work)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_facts() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    node_packages = {}
    for name in ("socket.io", "engine.io", "ws"):
        try:
            node_packages[name] = json.loads((NODE_MODULES / name / "package.json").read_text())[
                "version"
            ]
        except OSError:
            node_packages[name] = None
    status = _run(["git", "status", "--porcelain"])
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _run(["node", "--version"]) or None,
        "python_packages": packages,
        "node_packages": node_packages,
        "git_commit": _run(["git", "rev-parse", "--short", "HEAD"]) or None,
        "git_dirty_files": len(status.splitlines()) if status else 0,
        "clock_ticks_per_s": os.sysconf("SC_CLK_TCK"),
    }


# --- ratios ---

# (scenario, row filter, metric, direction): "higher" = bigger is better for Aether.
RATIO_METRICS = [
    ("burst", {"publisher": "websocket"}, "deliveries_per_s", "higher"),
    ("burst", {"publisher": "websocket"}, "server_cpu_us_per_delivery", "lower"),
    ("burst", {"publisher": "websocket"}, "latency_ms.p99", "lower"),
    ("paced", {}, "server_cpu_us_per_delivery", "lower"),
    ("paced", {}, "latency_ms.p50", "lower"),
    ("paced", {}, "latency_ms.p99", "lower"),
    ("storm", {}, "connects_per_s", "higher"),
    ("storm", {}, "server_cpu_us_per_connect", "lower"),
    ("idle", {}, "rss_per_conn_bytes", "lower"),
]


def _get(row: dict[str, Any], path: str) -> float | None:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if isinstance(value, int | float) else None


def _row(results: list[dict[str, Any]], scenario: str, server: str, match: dict[str, Any]) -> Any:
    for res in results:
        if res["scenario"] == scenario and res["server"] == server:
            for row in res.get("rows", []):
                if all(row.get(k) == v for k, v in match.items()):
                    return row
    return None


def ratios(results: list[dict[str, Any]], peers: list[str]) -> list[dict[str, Any]]:
    """Aether's value divided by each peer's, per scenario metric."""
    out = []
    for scenario, match, metric, better in RATIO_METRICS:
        ours = _row(results, scenario, "aether", match)
        a = _get(ours, metric) if ours else None
        entry: dict[str, Any] = {"scenario": scenario, "metric": metric, "better": better}
        for peer in peers:
            row = _row(results, scenario, peer, match)
            b = _get(row, metric) if row else None
            entry[peer] = round(a / b, 3) if a is not None and b else None
        if any(entry.get(p) is not None for p in peers):
            out.append(entry)
    return out


# --- markdown ---


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _lat(row: dict[str, Any], key: str = "latency_ms") -> list[str]:
    lat = row.get(key) or {}
    return [_fmt(lat.get(p), 2) for p in ("p50", "p95", "p99", "max")]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _delivery_rows(results: list[dict[str, Any]], scenario: str) -> list[list[str]]:
    rows = []
    for res in results:
        if res["scenario"] != scenario:
            continue
        if res.get("error") and not res.get("rows"):
            rows.append([res["server"], f"error: {res['error']}"] + [""] * 10)
        for row in res.get("rows", []):
            aether = res["server"].startswith("aether")
            label = row.get("phase") or (row.get("publisher") if aether else "")
            rows.append(
                [
                    res["server"] + (f" ({label})" if label else ""),
                    _fmt(row.get("deliveries_per_s"), 0),
                    _fmt(row.get("server_cpu_us_per_delivery"), 2),
                    _fmt(row.get("server_cpu_pct")),
                    *_lat(row),
                    f"{_fmt(row.get('delivered'))}/{_fmt(row.get('expected'))}",
                    _fmt(row.get("loadgen_cpu_pct")),
                    _closes(row),
                ]
            )
    return rows


def _closes(row: dict[str, Any]) -> str:
    parts = [f"{k} x{v}" for k, v in (row.get("server_closes") or {}).items()]
    parts += [f"{k} x{v}" for k, v in (row.get("setup_failures") or {}).items()]
    return ", ".join(parts) or "none"


DELIVERY_HEAD = [
    "server", "deliveries/s", "server CPU µs/delivery", "server CPU %", "p50 ms", "p95 ms",
    "p99 ms", "max ms", "delivered/expected", "loadgen CPU %", "closes/failures",
]  # fmt: skip


def markdown(doc: dict[str, Any]) -> str:
    """The whole report: the main run (Aether and its peers), then the Redis section when the
    results file has one (a run of its own: `just bench-redis`)."""
    lines = _main(doc) if "results" in doc else ["# Aether benchmark results", ""]
    if doc.get("redis"):
        lines += _redis(doc["redis"])
    return "\n".join(lines)


def _main(doc: dict[str, Any]) -> list[str]:
    m, sizes, results = doc["machine"], doc["sizes"], doc["results"]
    dirty = f", {m['git_dirty_files']} files changed in the tree" if m["git_dirty_files"] else ""
    lines = [
        "# Aether benchmark results",
        "",
        f"Generated {doc['generated']} by `{doc['command']}` in {doc['runtime_s']:.0f} s "
        f"(commit {m['git_commit']}{dirty}; the Aether source under test, snapshot at the "
        f"start of the run, has fingerprint {doc['aether_code']}).",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{m['memory']}, Linux {m['kernel']}; Python {m['python']}, Node {m['node']}"
        + (f", {doc['go']}" if doc.get("go") else "")
        + ". "
        f"Load average before/after: {doc['loadavg_before']} / {doc['loadavg_after']}.",
        "",
        "Packages: "
        + ", ".join(f"{k} {v}" for k, v in m["python_packages"].items() if v)
        + "; npm "
        + ", ".join(f"{k} {v}" for k, v in m["node_packages"].items() if v)
        + ".",
        "",
        "Server and load generator share the machine's cores over loopback; the load generator "
        "is one Python process (one epoll loop, raw sockets). Payload: 100-byte text everywhere. "
        "Latency = publish (inside the load generator, just before the write) to receive, on "
        "sampled subscribers. CPU from /proc/<pid>/stat (10 ms ticks). Other work on the "
        "machine during the run makes these numbers noisy; compare within one run.",
        "",
        "Aether runs with a config written for the run: a fresh HS256 secret, subscribe and "
        "publish allowed for clients on channels without namespace, no history or presence, "
        "`[limits]` rates and counts off, the HTTP API with a publisher key when it exists, "
        "everything else at its defaults (plus the reconnect storm's `recover:` namespace with "
        "history). Each peer runs its library's defaults (no compression); go-centrifuge is "
        "the Go library centrifugal/centrifuge v0.15 (Debian's package) speaking the client "
        "protocol v1 and verifying the same HS256 JWT.",
        "",
    ]
    s = sizes
    sections = [
        ("burst", f"Fan-out burst: {s['burst']['subscribers']:,} subscribers x "
                  f"{s['burst']['messages']:,} messages, one publisher, unpaced"),
        ("paced", f"Fan-out paced: {s['paced']['subscribers']:,} subscribers, "
                  f"{s['paced']['rate']:,} deliveries/s for {s['paced']['seconds']} s"),
        ("many_channels", f"Many channels: {s['many_channels']['connections']:,} connections, "
                          f"each on its own channel + {s['many_channels']['shared']} shared"),
    ]  # fmt: skip
    for scenario, title in sections:
        rows = _delivery_rows(results, scenario)
        if rows:
            lines += [f"## {title}", "", *_table(DELIVERY_HEAD, rows)]
        if scenario == "many_channels":
            for res in results:
                for row in res.get("rows", [])[:1] if res["scenario"] == scenario else []:
                    lines += [
                        f"Setup ({res['server']}): {_fmt(row['subscriptions'])} subscriptions in "
                        f"{row['setup_s']} s = {_fmt(row['subscriptions_per_s'], 0)} "
                        f"subscriptions/s (connect + subscribes in one frame), server CPU "
                        f"{_fmt(row['setup_server_cpu_us_per_subscription'], 1)} µs per "
                        "subscription including the connect.",
                        "",
                    ]
    storm = []
    for res in (r for r in results if r["scenario"] == "storm"):
        if res.get("error") and not res.get("rows"):
            storm.append([res["server"], f"error: {res['error']}"] + [""] * 8)
        for row in res.get("rows", []):
            storm.append(
                [
                    res["server"] + (" (JWT HS256)" if row.get("jwt") else ""),
                    _fmt(row["connects_per_s"], 0),
                    _fmt(row["server_cpu_us_per_connect"], 0),
                    *_lat(row, "connect_latency_ms"),
                    f"{_fmt(row['connected'])}/{_fmt(row['connections'])}",
                    _fmt(row["loadgen_cpu_pct"]),
                    _closes(row),
                ]
            )
    if storm:
        lines += [
            f"## Connect storm: {s['storm']['connections']:,} connects, "
            f"{s['storm']['concurrency']} in progress at a time",
            "",
            "A connect = TCP + WebSocket upgrade + the protocol's own connect and one "
            "subscribe (Centrifugo `connect` with a JWT plus `subscribe` in the same frame, v2 "
            "for Aether and v1 for go-centrifuge / Socket.IO `40` then an acknowledged `join` / "
            "the plain peer's `sub`→`ok`), ready once the subscribe is answered.",
            "",
            *_table(
                [
                    "server",
                    "connects/s",
                    "server CPU µs/connect",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "max ms",
                    "connected",
                    "loadgen CPU %",
                    "closes/failures",
                ],
                storm,
            ),
        ]
    idle = []
    mib = 1 << 20
    for res in (r for r in results if r["scenario"] == "idle"):
        if res.get("error") and not res.get("rows"):
            idle.append([res["server"], f"error: {res['error']}"] + [""] * 6)
        for row in res.get("rows", []):
            per = row.get("rss_per_conn_bytes")
            idle.append(
                [
                    res["server"],
                    f"{_fmt(row['connected'])}/{_fmt(row['connections'])}",
                    _fmt(row["rss_before_bytes"] / mib),
                    _fmt(row["rss_after_bytes"] / mib),
                    _fmt(per / 1024 if per is not None else None, 1),
                    _fmt(row["rss_after_close_bytes"] / mib),
                    _fmt(row.get("close_drain_s"), 2),
                    _closes(row),
                ]
            )
    if idle:
        lines += [
            f"## Idle memory: {s['idle']['connections']:,} idle connections",
            "",
            "RSS of the server process (VmRSS) after a 50-connection warm-up, then after the idle "
            "connections are connected and RSS has settled; per connection = delta / connections. "
            "No gc can be forced inside the servers, so garbage not yet collected counts too. "
            "Idle = connected (Centrifugo `connect`, Socket.IO namespace connect, plain `idle`), "
            'no subscription. "s to close all": from the load generator closing its sockets '
            "(no closing handshake) until the server's open-file count is back to its baseline.",
            "",
            *_table(
                [
                    "server",
                    "connected",
                    "RSS before MiB",
                    "RSS after MiB",
                    "KiB per connection",
                    "RSS after closing MiB",
                    "s to close all",
                    "closes/failures",
                ],
                idle,
            ),
        ]
    storm_section = reconnect_storm(doc)
    if storm_section:
        lines += [line.replace("### ", "## ", 1) if i == 0 else line
                  for i, line in enumerate(storm_section)]  # fmt: skip
    if doc["ratios"]:
        peers = doc["peers"]
        lines += [
            "## Aether relative to each peer",
            "",
            "Aether's value divided by the peer's (for \"higher is better\" metrics a ratio > 1 "
            'favours Aether, for "lower is better" a ratio < 1 does).',
            "",
            *_table(
                ["scenario", "metric", "better", *peers],
                [
                    [r["scenario"], r["metric"], r["better"], *(_fmt(r.get(p), 2) for p in peers)]
                    for r in doc["ratios"]
                ],
            ),
        ]
    lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    problems = [
        r for r in results if r.get("server_status", {}).get("log_error_lines") or r.get("error")
    ]
    if problems:
        lines += ["## Errors seen", ""]
        for r in problems:
            st = r.get("server_status", {})
            lines.append(
                f"- {r['scenario']} / {r['server']}: "
                + (f"load generator error: {r['error']}; " if r.get("error") else "")
                + f"{st.get('log_error_lines', 0)} error/warning lines in the server log"
                + (
                    f", e.g. `{st['log_error_excerpt'][0][:160]}`"
                    if st.get("log_error_excerpt")
                    else ""
                )
            )
        lines.append("")
    return lines


# --- the reconnect storm (both sections) ---

RECONNECT_HEAD = [
    "server", "clients", "all back s", "readmissions/s", "Aether CPU µs/readmission",
    "Redis CPU µs/readmission", "Aether CPU s", "outage p50 ms", "outage p99 ms", "recovered",
    "complete (all publications, in order)", "ended short of the top (publications: clients)",
    "attempts", "missed per client (mean, max)", "resubscribes (2500)", "closes/failures",
    "load 1 min",
]  # fmt: skip


def reconnect_storm(doc: dict[str, Any], names: dict[str, str] | None = None) -> list[str]:
    """The reconnect storm's table (Aether only: no peer here recovers a stream), with what it
    did in words; empty without such rows."""
    rows = []
    for res in (r for r in doc["results"] if r["scenario"] == "reconnect_storm"):
        name = (names or {}).get(res["server"], res["server"])
        if res.get("error") and not res.get("rows"):
            rows.append([name, f"error: {res['error']}"] + [""] * (len(RECONNECT_HEAD) - 2))
        for row in res.get("rows", []):
            outage = row.get("outage_ms") or {}
            rows.append([
                name, _fmt(row["clients"]), _fmt(row.get("all_back_s"), 2),
                _fmt(row.get("readmissions_per_s"), 0),
                _fmt(row.get("server_cpu_us_per_readmission"), 0),
                _fmt(row.get("redis_cpu_us_per_readmission"), 0),
                _fmt(row.get("server_cpu_s"), 2),
                _fmt(outage.get("p50"), 0), _fmt(outage.get("p99"), 0),
                f"{_fmt(row['recovered'])}/{_fmt(row['clients'])}",
                f"{_fmt(row['complete'])}/{_fmt(row['clients'])}",
                ", ".join(f"{k}: {_fmt(v)}" for k, v in (row.get("behind_top") or {}).items())
                or "none",
                _fmt(row.get("attempts")),
                f"{_fmt(row.get('missed_per_client_mean'), 1)}, "
                f"{_fmt(row.get('missed_per_client_max'))}",
                _fmt(row.get("resubscribes", 0)), _closes(row), _load(res),
            ])  # fmt: skip
    if not rows:
        return []
    size = doc["sizes"]["reconnect_storm"]
    return [
        f"### Reconnect storm: {size['clients']:,} clients dropped at once, recovering by "
        "offset (Aether only)",
        "",
        f"Every client connects (its own HS256 JWT, one user for all) and subscribes to "
        f"`recover:bench` (history, `allow_recovery`) with `recoverable`; {size['before']} "
        "publications reach everyone; then one `POST /api/disconnect` for that user, code 3011 "
        f"(reconnect), and publications go on at {size['rate']:g}/s until all are back. Each "
        "client reconnects like centrifuge-js 5.8: after `backoff(step)` = min(max, min + "
        f"uniform(0, min(max, min·2^step))) with min {size['min_delay_s']:g} s, max "
        f"{size['max_delay_s']:g} s, an attempt timing out after {size['timeout_s']:g} s "
        "(step + 1), and resubscribes with `recover`, its epoch and last offset (also while "
        "connected, after an unsubscribe push 2500-2999, as the SDK does). A client is "
        "complete when its reply said `recovered` and it then holds every publication once, in "
        'order. "all back": from the disconnect call to the last recovered subscribe reply; '
        "the CPU is over the same window (closing every connection, the readmissions, and the "
        "fan-out of the publications meanwhile) per readmission. The peers have no history or "
        "recovery, so no peer row.",
        "",
        *_table(RECONNECT_HEAD, rows),
    ]


# --- the Redis section ---

REDIS_NAMES = {
    "aether": "aether, memory engine (this run's baseline)",
    "aether-redis": "aether-redis, 1 process",
    "aether-redis-2w": "aether-redis-2w, 2 workers",
}


def _by_server(results: list[dict[str, Any]], scenario: str) -> dict[str, list[dict[str, Any]]]:
    return {r["server"]: r.get("rows", []) for r in results if r["scenario"] == scenario}


def _load(res: dict[str, Any]) -> str:
    start, end = res.get("loadavg") or [None], res.get("loadavg_end") or [None]
    return f"{_fmt(start[0], 2)} → {_fmt(end[0], 2)}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def redis_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 11's targets, each with the two values, their ratio and whether it is met."""

    def value(scenario: str, server: str, metric: str, match: dict[str, Any]) -> float | None:
        row = _row(results, scenario, server, match)
        return _get(row, metric) if row else None

    def total(scenario: str, server: str, unit: str) -> float | None:
        own = value(scenario, server, f"server_cpu_us_per_{unit}", {"publisher": "websocket"})
        redis = value(scenario, server, f"redis_cpu_us_per_{unit}", {"publisher": "websocket"})
        return own + (redis or 0.0) if own is not None else None

    capacity = {
        name: value("capacity", name, "capacity_deliveries_per_s", {})
        for name in ("aether-redis", "aether-redis-2w")
    }
    connects = {
        name: value("storm", name, "connects_per_s", {})
        for name in ("aether-redis", "aether-redis-2w")
    }
    ws = {"publisher": "websocket"}
    cpu = {
        (scenario, name): value(scenario, name, "server_cpu_us_per_delivery", ws)
        for scenario in ("paced", "burst")
        for name in ("aether", "aether-redis")
    }
    targets = [
        ("2 workers' paced capacity ≥ 1.6 x one worker's (deliveries/s)",
         capacity["aether-redis-2w"], capacity["aether-redis"], ">=", 1.6),
        ("2 workers' connects/s ≥ 1.6 x one worker's (storm)",
         connects["aether-redis-2w"], connects["aether-redis"], ">=", 1.6),
        ("CPU µs per delivery through Redis ≤ 2 x memory engine's, paced (Aether's processes)",
         cpu["paced", "aether-redis"], cpu["paced", "aether"], "<=", 2.0),
        ("... the same with redis-server's CPU added, paced",
         total("paced", "aether-redis", "delivery"), cpu["paced", "aether"], "<=", 2.0),
        ("CPU µs per delivery through Redis ≤ 2 x memory engine's, burst (Aether's processes)",
         cpu["burst", "aether-redis"], cpu["burst", "aether"], "<=", 2.0),
        ("... the same with redis-server's CPU added, burst",
         total("burst", "aether-redis", "delivery"), cpu["burst", "aether"], "<=", 2.0),
    ]  # fmt: skip
    out = []
    for name, a, b, op, bound in targets:
        ratio = _ratio(a, b)
        met = None if ratio is None else (ratio >= bound if op == ">=" else ratio <= bound)
        out.append({"target": name, "value": a, "reference": b, "ratio": ratio, "met": met})
    return out


def _redis(doc: dict[str, Any]) -> list[str]:
    results, sizes = doc["results"], doc["sizes"]
    m = doc["machine"]
    lines = [
        "## Redis engine and workers",
        "",
        f"A run of its own: generated {doc['generated']} by `{doc['command']}` in "
        f"{doc['runtime_s']:.0f} s (commit {m['git_commit']}, Aether source fingerprint "
        f"{doc['aether_code']}), {m['cores']} cores. "
        f"`uptime` before: `{doc.get('uptime_before')}`; "
        f"after: `{doc.get('uptime_after')}`. The machine's other work takes from the same cores: "
        "the 1-minute load average at the start and end of each row is in its last column.",
        "",
        f"{doc.get('redis_server') or 'redis-server'}, started by the harness on a free port with "
        "AOF (`appendfsync always`) and `noeviction` (docs/redis.md's settings), on the same "
        "cores. Aether's config is the main run's (no history or presence) with `[engine] type = "
        '"redis"` (a prefix per server) and, for `aether-redis-2w`, `[server] workers = 2`: the '
        'parent and two workers sharing the port. "Aether CPU" sums every Aether process (the '
        'parent and the workers); "Redis CPU" is the redis-server\'s. The load generator, '
        "Aether's processes and redis-server all share the machine's cores.",
        "",
    ]
    lines += [
        "A connection's consecutive publishes are issued to the broker in a row and waited for "
        "together (connection/serve.py): through Redis a WebSocket publisher's burst goes out in "
        "one pipeline per read and its publications reach the subscribers in batches, as with "
        'the memory engine ("deliveries/read"). The paced rows (one publication at a time for '
        "every engine) compare the engines themselves.",
        "",
    ]
    head = ["server", "deliveries/s", "Aether CPU µs/delivery", "Redis CPU µs/delivery",
            "Aether CPU %", "p50 ms", "p99 ms", "delivered/expected", "deliveries/read",
            "loadgen CPU %", "closes/failures", "load 1 min"]  # fmt: skip
    for scenario, title in (
        ("burst", f"Burst: {sizes['burst']['subscribers']:,} subscribers x "
                  f"{sizes['burst']['messages']:,} messages"),
        ("paced", f"Paced: {sizes['paced']['subscribers']:,} subscribers, "
                  f"{sizes['paced']['rate']:,} deliveries/s for {sizes['paced']['seconds']} s"),
    ):  # fmt: skip
        rows = []
        for res in (r for r in results if r["scenario"] == scenario):
            if res.get("error") and not res.get("rows"):
                rows.append([res["server"], f"error: {res['error']}"] + [""] * (len(head) - 2))
            for row in res.get("rows", []):
                rows.append([
                    REDIS_NAMES.get(res["server"], res["server"]) + f" ({row.get('publisher')})",
                    _fmt(row.get("deliveries_per_s"), 0),
                    _fmt(row.get("server_cpu_us_per_delivery"), 2),
                    _fmt(row.get("redis_cpu_us_per_delivery"), 2),
                    _fmt(row.get("server_cpu_pct")),
                    *(_lat(row)[i] for i in (0, 2)),
                    f"{_fmt(row.get('delivered'))}/{_fmt(row.get('expected'))}",
                    _fmt(row.get("deliveries_per_read")),
                    _fmt(row.get("loadgen_cpu_pct")),
                    _closes(row),
                    _load(res),
                ])  # fmt: skip
        if rows:
            lines += [f"### {title}", "", *_table(head, rows)]
    capacity = []
    for res in (r for r in results if r["scenario"] == "capacity"):
        if res.get("error") and not res.get("rows"):
            capacity.append([res["server"], f"error: {res['error']}", "", "", "", _load(res)])
        rows = res.get("rows", [])
        if not rows:
            continue
        best = [r for r in rows if r.get("held")]
        at = best[-1] if best else rows[0]
        stages = ", ".join(
            f"{r['target_deliveries_per_s'] / 1000:,.0f}k "
            f"{'ok' if r['held'] else 'fell behind'} "
            f"(p99 {_fmt((r.get('latency_ms') or {}).get('p99'), 0)} ms, "
            f"{_fmt(r['delivered'])}/{_fmt(r['expected'])})"
            for r in rows
        )
        capacity.append([
            REDIS_NAMES.get(res["server"], res["server"]),
            _fmt(rows[0].get("capacity_deliveries_per_s"), 0),
            _fmt(at.get("server_cpu_us_per_delivery"), 2),
            _fmt(at.get("redis_cpu_us_per_delivery"), 2),
            stages,
            _load(res),
        ])  # fmt: skip
    if capacity:
        c = sizes["capacity"]
        lines += [
            f"### Paced capacity: {c['subscribers']:,} subscribers, from {c['rate']:,} "
            f"deliveries/s up x{c['step']} per {c['seconds']} s stage",
            "",
            "The highest rate whose stage delivered everything with p99 latency ≤ "
            f"{c['p99_ms']:g} ms; CPU at that stage.",
            "",
            *_table(["server", "capacity deliveries/s", "Aether CPU µs/delivery",
                     "Redis CPU µs/delivery", "stages", "load 1 min"], capacity),
        ]  # fmt: skip
    storm = []
    for res in (r for r in results if r["scenario"] == "storm"):
        if res.get("error") and not res.get("rows"):
            storm.append([res["server"], f"error: {res['error']}"] + [""] * 7)
        for row in res.get("rows", []):
            storm.append([
                REDIS_NAMES.get(res["server"], res["server"]),
                _fmt(row["connects_per_s"], 0),
                _fmt(row["server_cpu_us_per_connect"], 0),
                _fmt(row.get("redis_cpu_us_per_connect"), 0),
                *(_lat(row, "connect_latency_ms")[i] for i in (0, 2)),
                f"{_fmt(row['connected'])}/{_fmt(row['connections'])}",
                _closes(row),
                _load(res),
            ])  # fmt: skip
    if storm:
        lines += [
            f"### Connect storm: {sizes['storm']['connections']:,} connects, "
            f"{sizes['storm']['concurrency']} in progress",
            "",
            *_table(["server", "connects/s", "Aether CPU µs/connect", "Redis CPU µs/connect",
                     "p50 ms", "p99 ms", "connected", "closes/failures", "load 1 min"], storm),
        ]  # fmt: skip
    lines += reconnect_storm(doc, REDIS_NAMES)
    targets = redis_targets(results)
    if any(t["ratio"] is not None for t in targets):
        lines += [
            "### Targets (issue 11)",
            "",
            *_table(
                ["target", "measured", "reference", "ratio", "met"],
                [[t["target"], _fmt(t["value"], 2), _fmt(t["reference"], 2), _fmt(t["ratio"], 2),
                  {True: "yes", False: "**no**", None: "-"}[t["met"]]] for t in targets],
            ),
        ]  # fmt: skip
    lines += ["### Notes", "", *(f"- {n}" for n in doc["notes"]), ""]
    problems = [
        r for r in results if r.get("server_status", {}).get("log_error_lines") or r.get("error")
    ]
    for r in problems:
        st = r.get("server_status", {})
        excerpt = st.get("log_error_excerpt") or [""]
        lines.append(
            f"- error: {r['scenario']} / {r['server']}: {r.get('error') or ''} "
            f"{st.get('log_error_lines', 0)} error/warning lines in the server log "
            f"`{excerpt[0][:160]}`"
        )
    return [*lines, ""]
