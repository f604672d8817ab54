"""The soak's report: the seed's eight success metrics, each with the counts it is computed from
and PASS/FAIL against the seed's threshold, what each fault did, and a plot of deliveries and
latency over time with the faults marked. Written as REPORT.md, report.json and timeline.png.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

__all__ = ["write_report"]


def _ratio(good: int, total: int) -> float | None:
    return None if total == 0 else good / total


def _metric(name: str, value: float | None, threshold: str, passed: bool | None,
            counts: str) -> dict[str, Any]:  # fmt: skip
    verdict = "NOT MEASURED" if passed is None else ("PASS" if passed else "FAIL")
    return {"metric": name, "value": value, "threshold": threshold, "verdict": verdict,
            "counts": counts}  # fmt: skip


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.3f}%"


def compute(run: Any, tops: dict[str, int], settled: float) -> dict[str, Any]:
    stats = run.stats
    ledgers = [ledger for client in run.clients for ledger in client.ledgers.values()]
    expected = sum(
        max(0, tops.get(sub.channel, 0) - sub.first) for sub in ledgers if sub.first is not None
    )
    lost = sum(sub.missing(tops.get(sub.channel, 0)) for sub in ledgers)
    lost_offsets = _lost_offsets(run, ledgers, tops)
    duplicates = sum(sub.duplicates for sub in ledgers)
    duplicate_paths: dict[str, int] = {}
    for ledger in ledgers:
        for path, count in ledger.duplicate_paths.items():
            duplicate_paths[path] = duplicate_paths.get(path, 0) + count
    out_of_order = sum(sub.out_of_order for sub in ledgers)
    double_published = sum(sub.double_published for sub in ledgers)
    never_subscribed = sum(1 for sub in ledgers if sub.first is None)
    witness = run.witness
    witness_lost = witness.missing(tops.get(witness.channel, 0))
    lat = sorted(stats.latencies_ms)
    health_ok = sum(1 for h in run.health if h["exit"] == 0)
    latency = {
        "samples": len(lat),
        "mean_ms": statistics.fmean(lat) if lat else None,
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
        "max_ms": lat[-1] if lat else None,
    }
    delivery = _ratio(expected - lost, expected)
    connect = _ratio(stats.connects_succeeded, stats.connects_attempted)
    errors = sum(stats.errors.values())
    error_rate = _ratio(errors, stats.operations)
    # A fault's window: from its start to 10 s after it ended (reconnects and retries settle).
    windows = [(f["t"], f.get("ended", f["t"]) + 10) for f in run.fault_log]
    in_fault = sum(1 for t in stats.error_times if any(a <= t <= b for a, b in windows))
    health_in_fault = sum(1 for h in run.health if h["exit"] != 0
                          and any(a <= h["t"] <= b for a, b in windows))  # fmt: skip
    recovery = _ratio(stats.recoveries_succeeded, stats.recoveries_attempted)
    js = run.js.summary(tops.get(run.js.channel, 0))
    health = _ratio(health_ok, len(run.health))
    mean = latency["mean_ms"]
    metrics = [
        _metric("connection success", connect, "≥ 99.9%", connect is not None and connect >= 0.999,
                f"{stats.connects_succeeded} of {stats.connects_attempted} connects"),
        _metric("delivery", delivery, "≥ 99.99%", delivery is not None and delivery >= 0.9999,
                f"{expected - lost} of {expected} publications due to subscriptions "
                f"({lost} lost, {duplicates} duplicated, {out_of_order} out of order)"),
        _metric("average latency", mean, "< 50 ms", mean is not None and mean < 50,
                f"{len(lat)} live deliveries to the load clients sampled (the harness's clock: its "
                f"loop lag is in it); p50 {_ms(latency['p50_ms'])}, p99 {_ms(latency['p99_ms'])}, "
                f"max {_ms(latency['max_ms'])} ms. The centrifuge-js witnesses (Node's clock): "
                f"mean {js['latency_ms']['mean']} ms through nginx, "
                f"{js['direct_latency_ms']['mean']} ms straight to a process"),
        _metric("error rate", error_rate, "< 0.1%", error_rate is not None and error_rate < 0.001,
                f"{errors} errors in {stats.operations} operations ({in_fault} of them inside a "
                "fault's window, its start to 10 s after its end)"),
        _metric("recovery", recovery, "≥ 99.9%", recovery is not None and recovery >= 0.999,
                f"{stats.recoveries_succeeded} of {stats.recoveries_attempted} recoveries "
                "continuous by offset"),
        _metric("health-check pass rate", health, "100%", health is not None and health == 1.0,
                f"{health_ok} of {len(run.health)} `aether healthcheck` runs exited 0 (failures "
                f"inside a fault's window: {health_in_fault})"),
        *_backup_metrics(run.backups),
    ]  # fmt: skip
    js_bad = sum(c["lost"] + c["duplicates"] + c["double_published"] for c in js["clients"])
    zero_loss = (lost == 0 and duplicates == 0 and double_published == 0 and witness_lost == 0
                 and js_bad == 0)  # fmt: skip
    return {
        "plan": _plan_dict(run.plan),
        "metrics": metrics,
        "accounting": {
            "subscriptions": len(ledgers),
            "never_subscribed": never_subscribed,
            "expected": expected,
            "lost": lost,
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "duplicates_by_path": duplicate_paths,
            "double_published": double_published,
            "lost_offsets": lost_offsets,
            "deliveries": stats.deliveries,
            "api_published": sum(run.published.values()),
            "api_publish_retries": run.publish_retries,
            "api_publish_failures": run.publish_failures,
            "settled_after_s": round(settled, 2),
            "witness": {
                "received": len(witness.received),
                "lost": witness_lost,
                "duplicates": witness.duplicates,
                "events": run.witness_events[:20],
            },
            "js_witnesses": js,
        },
        "latency": latency,
        "harness_loop_lag_ms_max": max(run.lag.values(), default=0.0),
        "latency_split": _latency_split(run),
        "errors": dict(stats.errors.most_common()),
        "closes": dict(stats.closes.most_common()),
        "faults": run.fault_log,
        "backups": run.backups,
        "server_backup_metrics": run.server_backup_metrics,
        "health": run.health,
        "zero_loss": zero_loss,
    }


def _lost_offsets(run: Any, ledgers: list[Any], tops: dict[str, int]) -> list[dict[str, Any]]:
    """Each publication lost by some subscription (the 20 most missed): how many missed it, when
    the API acknowledged it and after how many failed tries, and the faults whose window
    (start to 10 s after the end) holds that moment: the evidence a loss needs."""
    missed: Counter[tuple[str, int]] = Counter()
    for ledger in ledgers:
        for offset in ledger.missing_offsets(tops.get(ledger.channel, 0)):
            missed[(ledger.channel, offset)] += 1
    rows = []
    for (channel, offset), count in missed.most_common(20):
        acked = run.acked.get(channel, {}).get(offset)
        at = acked[0] if acked else None
        in_history = run.lost_in_history.get(channel, {})
        rows.append({
            "channel": channel, "offset": offset, "subscriptions_missing_it": count,
            "in_history_now": (in_history[offset] or "NOT IN THE STREAM")
            if offset in in_history else "not read",
            "acknowledged_at_s": at, "failed_tries_before": acked[1] if acked else None,
            "in_windows_of": [f["fault"] for f in run.fault_log if at is not None
                              and f["t"] <= at <= f.get("ended", f["t"]) + 10],
        })  # fmt: skip
    return rows


ON_TIME_MS = 20.0  # a harness second whose worst loop lag stayed under this counts as on time


def _latency_split(run: Any) -> dict[str, Any]:
    """Where publish-to-receive latency goes: the load clients' mean overall and in the seconds
    when this harness's loop ran on time, beside the harness's lag itself (nothing subtracted;
    the centrifuge-js witnesses' own figures, on Node's clock, are in the accounting)."""
    timeline, lag = run.stats.timeline, run.lag
    lags = sorted(lag.values())
    on_time = [row for second, row in timeline.items() if lag.get(second, 0.0) < ON_TIME_MS]
    late = [row for second, row in timeline.items() if lag.get(second, 0.0) >= ON_TIME_MS]

    def mean(rows: list[list[float]]) -> float | None:
        count = sum(row[0] for row in rows)
        return round(sum(row[1] for row in rows) / count, 1) if count else None

    # A fault's window as the report counts errors: its start to 10 s after its end.
    windows = [(f["t"], f.get("ended", f["t"]) + 10) for f in run.fault_log]

    def split(series: dict[int, list[float]]) -> dict[str, Any]:
        def faulty(second: int) -> bool:
            return any(a <= second + 1 and second <= b for a, b in windows)

        inside = [row for second, row in series.items() if faulty(second)]
        outside = [row for second, row in series.items() if not faulty(second)]
        return {"in_fault_windows": mean(inside), "outside_them": mean(outside),
                "samples_outside": int(sum(row[0] for row in outside))}  # fmt: skip

    return {
        "loop_lag_ms": {
            "seconds": len(lags),
            "mean_of_worst_per_second": round(statistics.fmean(lags), 1) if lags else None,
            "p99_of_worst_per_second": round(lags[int(len(lags) * 0.99)], 1) if lags else None,
            f"seconds_at_or_over_{ON_TIME_MS:.0f}ms": len([x for x in lags if x >= ON_TIME_MS]),
        },
        "load_clients_mean_ms": {
            "all": mean(list(timeline.values())),
            f"seconds_loop_under_{ON_TIME_MS:.0f}ms": mean(on_time),
            "deliveries_in_those_seconds": int(sum(row[0] for row in on_time)),
            f"seconds_loop_at_or_over_{ON_TIME_MS:.0f}ms": mean(late),
        },
        "by_fault_windows_mean_ms": {
            "load_clients": split(timeline),
            "centrifuge_js": split(run.js.timeline),
            "loop_lag_worst_per_second": split({s: [1, v] for s, v in lag.items()}),
        },
    }


def _backup_metrics(backups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    created = sum(1 for b in backups if b["created"])
    drilled = [b for b in backups if "verified" in b]
    verified = sum(1 for b in drilled if b["verified"])
    backup = _ratio(created, len(backups))
    verification = _ratio(verified, len(drilled))
    return [
        _metric("backup success", backup, "100%", None if backup is None else backup == 1.0,
                f"{created} of {len(backups)} `aether backup create` runs exited 0 (S3: a "
                "private moto server)" if backups else "not measured: no backup_cycle ran"),
        _metric("backup verification success", verification, "100%",
                None if verification is None else verification == 1.0,
                f"{verified} of {len(drilled)} drills (`aether backup verify`: restored into "
                "scratch SQLite and redis-server, every check) passed"
                if drilled else "not measured: no backup was drilled"),
    ]  # fmt: skip


def _plan_dict(plan: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(plan)


def _markdown(report: dict[str, Any]) -> str:
    acc = report["accounting"]
    lines = ["# Soak report", "",
             f"Plan: {report['plan']['clients']} load clients + 1 centrifuge-python witness + "
             f"{len(acc['js_witnesses']['clients'])} centrifuge-js witnesses, "
             f"{report['plan']['seconds']:.0f} s, faults: "
             + ", ".join(f"{f['fault']} at {f['t']:.0f} s" for f in report["faults"]), "",
             "| metric | value | threshold | verdict | counts |",
             "|---|---|---|---|---|"]  # fmt: skip
    for m in report["metrics"]:
        value = m["value"]
        shown = ("—" if value is None else f"{value:.1f} ms") if "latency" in m["metric"] \
            else _percent(value)  # fmt: skip
        lines.append(f"| {m['metric']} | {shown} | {m['threshold']} | **{m['verdict']}** | "
                     f"{m['counts']} |")  # fmt: skip
    lines += ["", "## Accounting (by offset, inside the history window)", ""]
    lines += [f"- {key}: {value}" for key, value in acc.items()]
    lines += [
        "",
        f"The harness's own event loop ran at most {report['harness_loop_lag_ms_max']:.0f} ms"
        " late (a late harness inflates the measured latencies).",
        "",
    ]
    js = acc["js_witnesses"]
    lines += [
        f"Witnesses on `soak:hot`: centrifuge-python lost {acc['witness']['lost']} of "
        f"{acc['witness']['received']} received; {js['sdk']}: "
        + "; ".join(f"client {k} ({c['path']}) received {c['received']}, lost {c['lost']}, "
                    f"duplicated {c['duplicates']}" for k, c in enumerate(js["clients"]))
        + ".",
        "",
    ]  # fmt: skip
    split, nginx, direct = report["latency_split"], js["latency_ms"], js["direct_latency_ms"]
    loop, load = split["loop_lag_ms"], split["load_clients_mean_ms"]
    lines += [
        "## Where the latency goes (nothing subtracted)",
        "",
        "| measured by | path | mean (ms) | p50 | p99 | samples |",
        "|---|---|---|---|---|---|",
        f"| load clients (this harness, one Trio process) | wss via nginx | "
        f"{report['latency']['mean_ms'] and round(report['latency']['mean_ms'], 1)} | "
        f"{report['latency']['p50_ms'] and round(report['latency']['p50_ms'], 1)} | "
        f"{report['latency']['p99_ms'] and round(report['latency']['p99_ms'], 1)} | "
        f"{report['latency']['samples']} |",
        f"| centrifuge-js witnesses (Node, its own clock) | wss via nginx | {nginx['mean']} | "
        f"{nginx['p50']} | {nginx['p99']} | {nginx['samples']} |",
        f"| centrifuge-js witness (Node) | ws straight to process 1 | {direct['mean']} | "
        f"{direct['p50']} | {direct['p99']} | {direct['samples']} |",
        "",
        f"The harness's loop lag (worst per second, {loop['seconds']} s): mean "
        f"{loop['mean_of_worst_per_second']} ms, p99 {loop['p99_of_worst_per_second']} ms; "
        f"the load clients' mean latency is {load['all']} ms overall, "
        f"{load[f'seconds_loop_under_{ON_TIME_MS:.0f}ms']} ms in the seconds its loop stayed "
        f"under {ON_TIME_MS:.0f} ms late ({load['deliveries_in_those_seconds']} deliveries) and "
        f"{load[f'seconds_loop_at_or_over_{ON_TIME_MS:.0f}ms']} ms in the others.",
        "",
        "Inside fault windows (a fault's start to 10 s after its end) and outside them, mean ms:",
        "",
    ]
    for who, row in split["by_fault_windows_mean_ms"].items():
        lines.append(
            f"- {who.replace('_', ' ')}: {row['in_fault_windows']} inside, "
            f"{row['outside_them']} outside ({row['samples_outside']} samples outside)"
        )
    lines += [""]  # fmt: skip
    lines += ["", "## Faults", "", "| at (s) | fault | what it did |", "|---|---|---|"]
    for fault in report["faults"]:
        rest = {k: v for k, v in fault.items() if k not in ("t", "fault")}
        lines.append(f"| {fault['t']:.1f} | {fault['fault']} | `{json.dumps(rest)}` |")
    lines += ["", "## Backups and their drills", ""]
    lines += ["| process | backup | created (s) | drill | RTO (s) | checks (s) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for b in report["backups"]:
        drill = b.get("drill") or {}
        checks = ", ".join(f"{k} {v}" for k, v in drill.get("checks_s", {}).items())
        verdict = "—" if "verified" not in b else ("passed" if b["verified"] else "FAILED")
        lines.append(f"| {b['instance']} | {b.get('id', b['create_said'])} | {b['create_s']} | "
                     f"{verdict} | {drill.get('rto_seconds', '—')} | {checks} |")  # fmt: skip
    lines += ["", "The server's own `aether_backup_*` metrics (they count the backups it schedules "
              "itself, `[backup] schedule`, off in the soak):", ""]  # fmt: skip
    for instance, samples in report["server_backup_metrics"].items():
        shown = ", ".join(f"{k.removeprefix('aether_backup_')} {v:g}" for k, v in samples.items())
        lines.append(f"- process {instance}: {shown}")
    lines += ["", "## Errors by kind", ""]
    lines += [f"- {k}: {v}" for k, v in report["errors"].items()] or ["- none"]
    lines += ["", "## Connection endings by code", ""]
    lines += [f"- {k}: {v}" for k, v in report["closes"].items()] or ["- none"]
    failed = [h for h in report["health"] if h["exit"] != 0]
    lines += ["", f"## Health checks: {len(report['health']) - len(failed)} of "
              f"{len(report['health'])} OK", ""]  # fmt: skip
    lines += [f"- {h['t']:.1f} s, process {h['instance']}: exit {h['exit']} {h['summary']}"
              for h in failed]  # fmt: skip
    lines += ["", "![deliveries and latency over time](timeline.png)", ""]
    return "\n".join(lines)


def _plot(run: Any, path: Path) -> None:
    timeline = run.stats.timeline
    seconds = sorted(timeline)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(seconds, [timeline[s][0] for s in seconds], linewidth=0.8)
    top.set_ylabel("live deliveries / s")
    bottom.plot(seconds, [timeline[s][1] / timeline[s][0] for s in seconds], linewidth=0.8,
                label="mean")  # fmt: skip
    bottom.plot(seconds, [timeline[s][2] for s in seconds], linewidth=0.6, label="max")
    lag = sorted(run.lag)
    bottom.plot(lag, [max(run.lag[s], 0.1) for s in lag], linewidth=0.6, color="grey",
                label="harness loop lag")  # fmt: skip
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds into the run")
    bottom.legend(loc="upper right")
    for fault in run.fault_log:
        for axis in (top, bottom):
            axis.axvline(fault["t"], color="red", alpha=0.5, linewidth=0.8)
        top.annotate(fault["fault"], (fault["t"], 0), rotation=90, fontsize=7, color="red",
                     xycoords=("data", "axes fraction"), va="bottom")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(run: Any, tops: dict[str, int], settled: float, out: Path) -> dict[str, Any]:
    report = compute(run, tops, settled)
    acc = report["accounting"]
    report["summary"] = (
        f"soak: {acc['expected']} publications due, {acc['lost']} lost, {acc['duplicates']} "
        f"duplicated, {acc['double_published']} published twice; "
        + "; ".join(f"{m['metric']} {m['verdict']}" for m in report["metrics"])
    )
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "REPORT.md").write_text(_markdown(report))
    _plot(run, out / "timeline.png")
    return report
