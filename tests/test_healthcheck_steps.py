"""`run_healthcheck` in the test's own Trio run against an in-process server: each step's
failure is named, and the probe's configuration errors (the real processes:
tests/test_ops_init_healthcheck.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from conftest import make_config, serve_in

from aether_trio.app import Server
from aether_trio.config import Config
from aether_trio.observe.readiness import Check
from aether_trio.ops.healthcheck import Status, run_healthcheck
from aether_trio.ops.probe import ProbeConfigError, Target

KEYS = [
    {"name": "healthcheck", "key": "hc-key-0123456789", "roles": ["publisher"]},
    {"name": "reader", "key": "reader-key-0123456789", "roles": ["reader"]},
]


def config() -> Config:
    return make_config(
        {"api": {"keys": KEYS}, "channel": {"namespaces": [{"name": "healthcheck"}]}}
    )


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, Target]]:
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, config())
        target = Target.from_config(
            server.config,
            ws_url=f"ws://127.0.0.1:{server.port}/connection/websocket",
            http_url=f"http://127.0.0.1:{server.http_port}",
        )
        yield server, target
        nursery.cancel_scope.cancel()


async def test_every_step_passes_against_a_healthy_server() -> None:
    async with serving() as (_server, target):
        report = await run_healthcheck(target, 5.0, 1.0)
    assert report.status is Status.OK, report.line()
    assert report.failed is None
    assert report.jsonable()["failed_step"] is None


async def test_a_failing_readiness_check_is_named() -> None:
    async with serving() as (server, target):
        server.node.readiness_checks.append(lambda: Check("disk", False, "full"))
        report = await run_healthcheck(target, 5.0, 1.0)
    assert report.status is Status.CRITICAL
    assert report.line().startswith("AETHER CRITICAL - ready: HTTP 503 not ready (disk: full)")
    assert [s["status"] for s in report.jsonable()["steps"]][2:] == ["SKIPPED"] * 5


async def test_a_refused_publish_and_a_refused_subscribe_are_named() -> None:
    async with serving() as (_server, target):
        report = await run_healthcheck(attrs.evolve(target, api_key="wrong"), 5.0, 1.0)
        assert report.line().startswith("AETHER CRITICAL - publish: HTTP 401")
        report = await run_healthcheck(attrs.evolve(target, namespace="nowhere"), 5.0, 1.0)
        assert report.line().startswith("AETHER CRITICAL - subscribe: error 102")


async def test_a_server_that_is_not_aether_is_critical() -> None:
    async with serving() as (_server, target):
        # The WebSocket port answers /health with a refusal, not a probe answer.
        url = target.ws_url.replace("ws://", "http://").removesuffix("/connection/websocket")
        report = await run_healthcheck(attrs.evolve(target, http_url=url), 2.0, 1.0)
    assert report.status is Status.CRITICAL
    assert report.line().startswith("AETHER CRITICAL - health:")


def test_the_probe_needs_a_publisher_key_by_name_or_role() -> None:
    cfg = config()
    assert Target.from_config(cfg, key_name="healthcheck").api_key == "hc-key-0123456789"
    with pytest.raises(ProbeConfigError, match="has no publisher role"):
        Target.from_config(cfg, key_name="reader")
    with pytest.raises(ProbeConfigError, match="no \\[api\\] key named 'other'"):
        Target.from_config(cfg, key_name="other")
    default = Target.from_config(cfg)
    assert default.ws_url.startswith("ws://127.0.0.1:0/")
    assert default.http_url == "http://127.0.0.1:0"
