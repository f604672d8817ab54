"""The resource monitor and its readiness checks (readiness itself: readiness.py).

`ResourceMonitor.run` is a service: every `[monitor] sample_interval` seconds it measures how late
its own timer woke up (the event-loop lag: time the loop spent running other tasks), reads RSS,
CPU and open files from /proc and the connections' queued outbox bytes, and compares them with the
`[monitor]` thresholds. Crossing one logs a warning (and coming back an info line), sets
`aether_resource_threshold_exceeded{resource}` and fails that resource's readiness check.
Thresholds are read from the node's current config, so a reload changes them.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from .readiness import Check, ReadinessCheck

if TYPE_CHECKING:
    from ..config import MonitorConfig
    from .metrics import Metrics

__all__ = ["RESOURCES", "ResourceMonitor", "ResourceSample", "read_open_files", "read_rss_bytes"]

log = logging.getLogger(__name__)

RESOURCES = ("rss", "open_files", "loop_lag", "outbox_bytes")


# --- resources ---


def read_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None  # not Linux
    return pages * os.sysconf("SC_PAGE_SIZE")


def read_open_files() -> tuple[int | None, int | None]:
    """(open file descriptors, the soft limit); None where unknown or unlimited."""
    try:
        count: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        count = None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return count, (None if soft == resource.RLIM_INFINITY else soft)


@attrs.frozen
class ResourceSample:
    rss_bytes: int | None
    open_files: int | None
    open_files_limit: int | None
    cpu_seconds: float
    # Share of one CPU used since the previous sample.
    cpu_ratio: float
    loop_lag_seconds: float
    outbox_bytes: int


class ResourceMonitor:
    def __init__(
        self,
        metrics: Metrics,
        config: Callable[[], MonitorConfig],
        outbox_bytes: Callable[[], int],
    ) -> None:
        """`config`: the running `[monitor]` section (a reload changes the thresholds);
        `outbox_bytes`: what every connection has queued."""
        self._metrics = metrics
        self._config = config
        self._outbox_bytes = outbox_bytes
        self.last: ResourceSample | None = None
        self.exceeded: dict[str, str] = {}
        self._cpu_mark = (time.monotonic(), _cpu_seconds())
        self._gauges = {name: metrics.threshold_exceeded.labels(name) for name in RESOURCES}
        for gauge in self._gauges.values():
            gauge.set(0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.sample(0.0)
        task_status.started()
        while True:
            deadline = trio.current_time() + self._config().sample_interval
            await trio.sleep_until(deadline)
            # The sleep ends at the first scheduling pass after the deadline; anything later is
            # time the loop spent on other tasks before it could run this one.
            self.sample(max(0.0, trio.current_time() - deadline))

    def sample(self, loop_lag: float) -> ResourceSample:
        now, cpu = time.monotonic(), _cpu_seconds()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        open_files, limit = read_open_files()
        sample = ResourceSample(
            rss_bytes=read_rss_bytes(),
            open_files=open_files,
            open_files_limit=limit,
            cpu_seconds=cpu,
            cpu_ratio=(cpu - cpu_then) / (now - then) if now > then else 0.0,
            loop_lag_seconds=loop_lag,
            outbox_bytes=self._outbox_bytes(),
        )
        self._metrics.loop_lag.observe(loop_lag)
        self.last = sample
        self._compare(sample, self._config())
        return sample

    def _compare(self, sample: ResourceSample, cfg: MonitorConfig) -> None:
        exceeded = over_thresholds(sample, cfg)
        for name in RESOURCES:
            was, now = name in self.exceeded, name in exceeded
            if now and not was:
                log.warning("resource over its threshold: %s %s", name, exceeded[name])
            elif was and not now:
                log.info("resource back under its threshold: %s", name)
            if now != was:
                self._gauges[name].set(int(now))
        self.exceeded = exceeded

    def checks(self) -> list[ReadinessCheck]:
        """One readiness check per watched resource."""

        def check(name: str) -> ReadinessCheck:
            def resource_check() -> Check:
                if name in self.exceeded:
                    return Check(name, False, self.exceeded[name])
                return Check(name, True, _describe(name, self.last))

            resource_check.__name__ = name
            return resource_check

        return [check(name) for name in RESOURCES]


def over_thresholds(sample: ResourceSample, cfg: MonitorConfig) -> dict[str, str]:
    """Resources over their (non-zero) threshold, each with a readable detail."""
    out: dict[str, str] = {}
    if cfg.rss_max_bytes and sample.rss_bytes is not None and sample.rss_bytes > cfg.rss_max_bytes:
        out["rss"] = f"{sample.rss_bytes} bytes > {cfg.rss_max_bytes}"
    if cfg.open_files_max_ratio and sample.open_files is not None and sample.open_files_limit:
        ratio = sample.open_files / sample.open_files_limit
        if ratio > cfg.open_files_max_ratio:
            out["open_files"] = (
                f"{sample.open_files} of {sample.open_files_limit} "
                f"({ratio:.0%} > {cfg.open_files_max_ratio:.0%})"
            )
    if cfg.loop_lag_max_seconds and sample.loop_lag_seconds > cfg.loop_lag_max_seconds:
        out["loop_lag"] = f"{sample.loop_lag_seconds:.3f} s > {cfg.loop_lag_max_seconds} s"
    if cfg.outbox_max_total_bytes and sample.outbox_bytes > cfg.outbox_max_total_bytes:
        out["outbox_bytes"] = f"{sample.outbox_bytes} bytes > {cfg.outbox_max_total_bytes}"
    return out


def _describe(name: str, sample: ResourceSample | None) -> str:
    if sample is None:
        return "not sampled yet"
    if name == "rss":
        return "unknown" if sample.rss_bytes is None else f"{sample.rss_bytes} bytes"
    if name == "open_files":
        return f"{sample.open_files} of {sample.open_files_limit or 'unlimited'}"
    if name == "loop_lag":
        return f"{sample.loop_lag_seconds:.3f} s"
    return f"{sample.outbox_bytes} bytes"


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
