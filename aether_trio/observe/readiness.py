"""Readiness: a list of checks (`node.readiness_checks`, the node's own first, then the server's
and the resource monitor's), plain synchronous functions returning a `Check`, evaluated whenever
`/ready` or `/metrics` is requested.

A check reads state that something else keeps current (an engine's connection state, a flag, the
last resource sample) and never does I/O, so a probe is cheap and cannot hang. Anyone may append
one; `evaluate` turns a check that raises into a failed check rather than a failed probe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import attrs

__all__ = ["Check", "ReadinessCheck", "evaluate"]

log = logging.getLogger(__name__)


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str = ""


ReadinessCheck = Callable[[], Check]


def evaluate(checks: Iterable[ReadinessCheck]) -> list[Check]:
    results: list[Check] = []
    for check in checks:
        try:
            results.append(check())
        except Exception as exc:
            name = getattr(check, "__name__", "check")
            log.warning("readiness check %s raised", name, exc_info=True)
            results.append(Check(name, False, f"check raised {type(exc).__name__}"))
    return results
