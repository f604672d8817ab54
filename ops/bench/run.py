"""Aether's benchmark harness: `just bench [options]` (or `.venv/bin/python ops/bench/run.py`).

For each scenario, for each server: start the server fresh on a free port (its own process),
run the load generator against it (its own process, loadgen.py), stop the server, scan its log.
Scenario-major order keeps the servers of one scenario close together in time. Writes
results.json and RESULTS.md into --out-dir (default: this directory) and the server logs into
<out-dir>/logs/. Everything is on loopback, every phase has a deadline, and the whole run stops
by itself. `--smoke` uses tiny sizes (seconds): that is what tests/test_bench_smoke.py runs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import code_fingerprint, machine_facts, markdown, ratios, redis_targets
from servers import (
    NODE_DIR,
    REDIS_SERVERS,
    SERVERS,
    RedisServer,
    Server,
    api_support,
    build_go_peer,
    go_version,
    raise_nofile,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# What a run does unless told otherwise; `capacity` (and the Redis servers) on request.
SCENARIOS = ["burst", "paced", "many_channels", "storm", "idle", "reconnect_storm"]
ALL_SCENARIOS = [*SCENARIOS, "capacity"]
DEFAULT_SERVERS = ["aether", "websockets", "socketio-py", "socketio-node", "go-centrifuge"]
# The peers only have one room and no recovery: many_channels and reconnect_storm are Aether's
# alone; capacity is measured for Aether's engines and worker counts.
AETHER_ONLY = {"many_channels", "capacity", "reconnect_storm"}
# The Redis rows: `just bench-redis` (a run with a Redis server writes the report's Redis section).
REDIS_RUN = {
    "servers": ["aether", "aether-redis", "aether-redis-2w"],
    "scenarios": ["burst", "paced", "capacity", "storm", "reconnect_storm"],
}
# Hard time limit of one load generator run, in seconds (phases have tighter deadlines).
TIMEOUTS = {"burst": 600, "paced": 300, "many_channels": 600, "storm": 300, "idle": 300,
            "capacity": 300, "reconnect_storm": 600}  # fmt: skip
PY_DEPS = {"websockets": ["websockets"], "socketio-py": ["socketio", "engineio", "uvicorn"]}

FULL = {
    "burst": {"subscribers": 1000, "messages": 200, "latency_sample": 100},
    "paced": {"subscribers": 1000, "rate": 20000, "seconds": 10.0, "latency_sample": 100},
    "many_channels": {
        "connections": 5000, "shared": 3, "rounds": 2, "shared_messages": 10, "window": 100,
        "latency_sample": 100,
    },
    "storm": {"connections": 5000, "concurrency": 100},
    "idle": {"connections": 10000, "settle_s": 10.0},
    # centrifuge-js 5.8's reconnect: backoff 0.5..20 s with full jitter, 5 s attempt timeout.
    "reconnect_storm": {"clients": 10000, "before": 3, "rate": 2.0, "concurrency": 1000,
                        "min_delay_s": 0.5, "max_delay_s": 20.0, "timeout_s": 5.0},
    # A stage that falls behind queues: its p99 grows to seconds; 250 ms leaves room for the
    # scheduling jitter of a shared machine (quiet, paced p99 is ~12 ms).
    "capacity": {"subscribers": 1000, "rate": 10000, "seconds": 3.0, "step": 1.5,
                 "p99_ms": 250.0, "max_rate": 2000000, "latency_sample": 100},
}  # fmt: skip
SMOKE = {
    "burst": {"subscribers": 20, "messages": 200, "latency_sample": 10},
    "paced": {"subscribers": 20, "rate": 2000, "seconds": 1.0, "latency_sample": 10,
              "warmup_s": 0.2},
    "many_channels": {
        "connections": 50, "shared": 2, "rounds": 1, "shared_messages": 5, "window": 20,
        "latency_sample": 10,
    },
    "storm": {"connections": 50, "concurrency": 20},
    "idle": {"connections": 100, "settle_s": 2.0},
    "reconnect_storm": {"clients": 50, "before": 3, "rate": 10.0, "concurrency": 1000,
                        "min_delay_s": 0.5, "max_delay_s": 20.0, "timeout_s": 5.0},
    "capacity": {"subscribers": 20, "rate": 2000, "seconds": 0.5, "step": 2.0, "p99_ms": 250.0,
                 "max_rate": 8000, "latency_sample": 10, "warmup_s": 0.2},
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a seconds-long check")
    p.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated: %(default)s; also {', '.join(sorted(REDIS_SERVERS))}",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated: %(default)s; also capacity",
    )
    p.add_argument(
        "--redis",
        action="store_true",
        help=f"the Redis rows: --servers {','.join(REDIS_RUN['servers'])} "
        f"--scenarios {','.join(REDIS_RUN['scenarios'])}",
    )
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results go (%(default)s)")
    p.add_argument("--src-addrs", type=int, default=4, help="127.0.0.x source addresses to use")
    p.add_argument("--subscribers", type=int, help="burst and paced subscribers")
    p.add_argument("--messages", type=int, help="burst messages")
    p.add_argument("--rate", type=int, help="paced deliveries/s")
    p.add_argument("--seconds", type=float, help="paced measurement seconds")
    p.add_argument("--channels", type=int, help="many_channels connections")
    p.add_argument("--shared", type=int, help="many_channels shared channels")
    p.add_argument("--connects", type=int, help="storm connections")
    p.add_argument("--idle", type=int, help="idle connections")
    p.add_argument("--reconnects", type=int, help="reconnect_storm clients")
    p.add_argument("--no-api", action="store_true", help="skip the HTTP API publisher")
    p.add_argument("--note", action="append", default=[], help="a note for the report")
    return p.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    sizes = json.loads(json.dumps(SMOKE if args.smoke else FULL))
    overrides = {
        ("burst", "subscribers"): args.subscribers,
        ("paced", "subscribers"): args.subscribers,
        ("burst", "messages"): args.messages,
        ("paced", "rate"): args.rate,
        ("capacity", "subscribers"): args.subscribers,
        ("paced", "seconds"): args.seconds,
        ("many_channels", "connections"): args.channels,
        ("many_channels", "shared"): args.shared,
        ("storm", "connections"): args.connects,
        ("idle", "connections"): args.idle,
        ("reconnect_storm", "clients"): args.reconnects,
    }
    for (scenario, key), value in overrides.items():
        if value is not None:
            sizes[scenario][key] = value
    return sizes


def check_prerequisites(servers: list[str]) -> dict[str, str]:
    """Fail loudly on missing Python deps; install the Node peer (`npm ci`) when needed.
    Returns servers to skip, with the reason."""
    missing = [
        mod
        for name in servers
        for mod in PY_DEPS.get(name, [])
        if not importlib.util.find_spec(mod)
    ]
    if missing:
        sys.exit(
            f"error: missing {', '.join(missing)}: install the bench extra "
            "(.venv/bin/pip install -e '.[bench]', done by `just bench`)"
        )
    skip: dict[str, str] = {}
    if "socketio-node" in servers:
        if not shutil.which("node") or not shutil.which("npm"):
            skip["socketio-node"] = "node/npm not installed"
        elif not (NODE_DIR / "node_modules" / "socket.io").is_dir():
            print("npm ci in ops/bench/peers/node ...", flush=True)
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                timeout=300,
            )
            if done.returncode:
                skip["socketio-node"] = f"npm ci failed ({done.returncode})"
    if "go-centrifuge" in servers:
        print("go-centrifuge: building ops/bench/peers/go_centrifuge if needed ...", flush=True)
        built, how = build_go_peer()
        print(f"go-centrifuge: {how}", flush=True)
        if not built:
            skip["go-centrifuge"] = how
            # Loud: the row is missing from the report; CI installs Go so it never is there.
            print(f"WARNING: the go-centrifuge row is left out: {how}", file=sys.stderr, flush=True)
    return skip


def run_one(
    scenario: str,
    server: Server,
    params: dict[str, Any],
    src_addrs: list[str],
    logs: Path,
    with_api: bool,
) -> dict[str, Any]:
    tag = f"{scenario}-{server.name}"
    result: dict[str, Any] = {
        "scenario": scenario,
        "server": server.name,
        "loadavg": os.getloadavg(),
    }
    try:
        server.start(logs / f"{tag}.server.log")
    except (RuntimeError, OSError) as exc:
        result.update(error=str(exc), rows=[], server_status=server.stop() if server.proc else {})
        return result
    admin_api = server.api if scenario == "reconnect_storm" else None
    spec = {
        "admin_api": admin_api,
        "scenario": scenario,
        "server": server.name,
        "protocol": server.protocol,
        "host": "127.0.0.1",
        "port": server.port,
        "server_pid": server.pid,
        "secret": server.secret,
        "src_addrs": src_addrs,
        "params": params,
        "api": server.api if (with_api and scenario == "burst") else None,
        "timeout": TIMEOUTS[scenario],
    }
    if spec["api"]:
        spec["api"]["conns"] = 4
    if server.redis is not None:
        spec["redis_pid"] = server.redis.pid
    spec["server_pids"] = server.pids()
    if server.aether:
        result["api"] = server.api_note or "not probed"
    spec_path = server.run_dir / f"{tag}.spec.json"
    out_path = server.run_dir / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    try:
        with open(logs / f"{tag}.loadgen.log", "wb") as log:
            subprocess.run(
                [sys.executable, str(HERE / "loadgen.py"), str(spec_path), str(out_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=TIMEOUTS[scenario] + 30,
                preexec_fn=raise_nofile,
                cwd=HERE,
            )
        out = json.loads(out_path.read_text())
        result.update(rows=out["rows"], notes=out.get("notes", []))
        if "error" in out:
            result["error"] = out["error"]
    except (subprocess.TimeoutExpired, OSError, ValueError) as exc:
        result.update(rows=[], error=f"load generator: {type(exc).__name__}: {exc}")
    finally:
        result["server_status"] = server.stop()
        result["loadavg_end"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redis:
        args.servers, args.scenarios = (",".join(REDIS_RUN[k]) for k in ("servers", "scenarios"))
    t0 = time.monotonic()
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(servers) - set(SERVERS)) + sorted(set(scenarios) - set(ALL_SCENARIOS))
    if unknown:
        sys.exit(f"error: unknown server/scenario {unknown}")
    sizes = sizes_from(args)
    skip = check_prerequisites(servers)
    out_dir: Path = args.out_dir
    logs = out_dir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    src_addrs = [f"127.0.0.{i}" for i in range(1, args.src_addrs + 1)]
    secret = secrets.token_hex(32)
    loadavg_before = os.getloadavg()
    uptime_before = uptime()
    results: list[dict[str, Any]] = []
    redis_run = any(name in REDIS_SERVERS for name in servers)
    if redis_run and not shutil.which("redis-server"):
        sys.exit("error: the Redis servers need redis-server (apt-get install -y redis-server)")
    with tempfile.TemporaryDirectory(prefix="aether-bench-") as tmp:
        # Other work may edit aether_trio/ while this runs: every Aether server of the run starts
        # from one copy (PYTHONPATH wins over the editable install's finder), and so does this
        # process's reading of Aether's config classes.
        src = Path(tmp) / "src"
        shutil.copytree(
            ROOT / "aether_trio", src / "aether_trio", ignore=shutil.ignore_patterns("__pycache__")
        )
        sys.path.insert(0, str(src))
        code = code_fingerprint(src / "aether_trio")
        # The API is configured either way (the reconnect storm's `disconnect` needs it);
        # --no-api only leaves out the burst's round through `POST /api/publish`.
        api_settings, api_reason = api_support()
        notes = [f"HTTP API: {api_reason}"]
        if args.no_api:
            notes.append("HTTP API publisher: disabled by --no-api")
        redis = RedisServer(Path(tmp)) if redis_run else None
        try:
            for scenario in scenarios:
                for name in servers:
                    if name in skip or (scenario in AETHER_ONLY and not name.startswith("aether")):
                        continue
                    print(f"[{time.monotonic() - t0:6.1f}s] {scenario} / {name}", flush=True)
                    server = Server(name, Path(tmp), secret, api_settings, src, redis)
                    with_api = api_settings is not None and not args.no_api
                    res = run_one(scenario, server, sizes[scenario], src_addrs, logs, with_api)
                    results.append(res)
                    if res.get("error"):
                        print(f"    error: {res['error']}", flush=True)
        finally:
            if redis is not None:
                redis.stop()
    notes += [f"{name} skipped: {why}" for name, why in skip.items()]
    # Go on PATH and still no binary: the harness is broken, not the machine (a failed run).
    go_broken = "go-centrifuge" in skip and shutil.which("go") is not None
    if results:
        loads = [r["loadavg"][0] for r in results]
        notes.append(
            f"1-minute load average at the start of each scenario: {min(loads):.2f} to "
            f"{max(loads):.2f} ({os.cpu_count()} cores)"
        )
    if code_fingerprint(ROOT / "aether_trio") != code:
        notes.append(
            "aether_trio/ changed on disk during the run; the run used the snapshot taken at its "
            "start throughout"
        )
    notes += args.note
    probes = {res["api"] for res in results if res.get("api")}
    notes += [f"HTTP API probe: {probe}" for probe in sorted(probes)]
    for res in results:
        for row in res.get("rows", []):
            if row.get("loadgen_cpu_pct", 0) > 90:
                notes.append(
                    f"{res['scenario']} / {res['server']}: the load generator used "
                    f"{row['loadgen_cpu_pct']}% of a core: the measured rate may be its limit"
                )
    peers = [s for s in servers if not s.startswith("aether") and s not in skip]
    doc = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["ops/bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "runtime_s": round(time.monotonic() - t0, 1),
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "uptime_before": uptime_before,
        "uptime_after": uptime(),
        "machine": machine_facts(),
        "aether_code": code,
        "servers": {name: SERVERS[name][1] for name in servers},
        "sizes": sizes,
        "peers": peers,
        "results": results,
        "ratios": ratios(results, peers),
        "notes": notes,
    }
    if "go-centrifuge" in servers:
        doc["go"] = go_version() or None
    if redis_run:
        doc["redis_server"] = _output(["redis-server", "--version"])
        doc["targets"] = redis_targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = merged(out_dir / "results.json", doc, redis_run)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    report = markdown(doc)
    (out_dir / "RESULTS.md").write_text(report)
    print(report, flush=True)  # the table, Aether next to its peers
    took = round(time.monotonic() - t0, 1)
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'} in {took} s")
    if "go-centrifuge" in skip:
        print(f"WARNING: no go-centrifuge row: {skip['go-centrifuge']}", file=sys.stderr)
    return 1 if go_broken or any(r.get("error") for r in results) else 0


def merged(path: Path, run: dict[str, Any], redis_run: bool) -> dict[str, Any]:
    """The results file after this run: a run with a Redis server replaces only the Redis section
    (`doc["redis"]`), every other run only the rest, so neither overwrites the other's rows."""
    try:
        previous: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    if redis_run:
        return {**{k: v for k, v in previous.items() if k != "redis"}, "redis": run}
    return {**run, **({"redis": previous["redis"]} if "redis" in previous else {})}


def uptime() -> str:
    """`uptime`'s line (the load averages the report quotes beside the numbers)."""
    return _output(["uptime"])


def _output(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


if __name__ == "__main__":
    sys.exit(main())
