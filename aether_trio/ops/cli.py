"""`aether init` and `aether healthcheck`: the operations commands (see init.py, healthcheck.py)."""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import trio

from ..config import Config, ConfigError
from .healthcheck import Report, Status, StepResult, run_healthcheck
from .init import InitError, InitOptions, init, loose_modes
from .probe import DEFAULT_NAMESPACE, ProbeConfigError, Target

__all__ = ["add_parsers"]

LoadConfig = Callable[[str | None, int | None], tuple[Config, str | None]]


def cmd_init(args: argparse.Namespace) -> int:
    options = InitOptions(
        directory=Path(args.directory),
        data_dir=Path(args.data_dir),
        log_dir=Path(args.log_dir),
        port=args.port,
        http_port=args.http_port,
        node_name=args.node_name,
        tls_cert_file=args.tls_cert or "",
        tls_key_file=args.tls_key or "",
        allowed_origins=tuple(args.origin or ()),
        force=args.force,
    )
    try:
        result = init(options)
    except InitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in result.written:
        mode = path.stat().st_mode & 0o777
        print(f"wrote {path} (mode {mode:04o})")
    for path in result.kept:
        print(f"kept  {path} (exists; delete it for a new secret)")
    for path in loose_modes(result):
        print(f"warning: {path} is readable by others than its owner: chmod 600", file=sys.stderr)
    config = result.config
    print(
        f"{result.config_path}: OK ({len(config.channel.namespaces)} namespaces, listening on "
        f"{config.server.host}:{config.server.port}, internal {config.http.host}:"
        f"{config.http.port})"
    )
    print(f"next: aether serve -c {result.config_path}")
    return 0


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.cafile is None and not args.no_verify:
        return None  # the system's trust store (for wss:// URLs)
    context = ssl.create_default_context(cafile=args.cafile)
    if args.no_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def cmd_healthcheck(args: argparse.Namespace) -> int:
    try:
        config, _path = args.load_config(args.config, args.instance)
        target = Target.from_config(
            config,
            ws_url=args.url,
            http_url=args.http_url,
            key_name=args.key_name,
            namespace=args.namespace,
            ssl_context=_ssl_context(args),
        )
    except (ConfigError, ProbeConfigError, OSError, ssl.SSLError) as exc:
        # The probe cannot run at all: UNKNOWN, as a Nagios plugin says it.
        failed = StepResult("config", Status.UNKNOWN, 0.0, str(exc).replace("\n", " "))
        _print(args, Report((failed,), None, args.warning_rtt))
        return int(Status.UNKNOWN)
    report = trio.run(run_healthcheck, target, args.timeout, args.warning_rtt)
    _print(args, report)
    return int(report.status)


def _print(args: argparse.Namespace, report: Report) -> None:
    if args.json:
        print(orjson.dumps(report.jsonable()).decode())
    else:
        print(report.line())


def add_parsers(
    sub: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    load_config: LoadConfig,
) -> None:
    """Register `init` and `healthcheck` on the `aether` parser's subparsers."""
    p = sub.add_parser(
        "init", help="write a production config with fresh secrets (ops/config/production.toml)"
    )
    p.add_argument("directory", help="where config.toml and secrets/ go, e.g. /etc/aether")
    p.add_argument("--data-dir", default="/var/lib/aether", help="[admin] data_dir")
    p.add_argument("--log-dir", default="/var/log/aether", help="where the supervisor logs")
    p.add_argument("--port", type=int, default=8000, help="WebSocket port (+N per --instance)")
    p.add_argument("--http-port", type=int, default=9000, help="internal port (+N per --instance)")
    p.add_argument("--node-name", default="aether")
    p.add_argument("--tls-cert", help="PEM certificate chain, for wss:// without nginx")
    p.add_argument("--tls-key", help="its PEM private key")
    p.add_argument("--origin", action="append", help="an allowed browser origin (repeatable)")
    p.add_argument("--force", action="store_true", help="replace an existing config.toml")
    p.set_defaults(func=cmd_init)

    h = with_config(
        sub.add_parser(
            "healthcheck",
            help="probe a running server end to end (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
        )
    )
    h.add_argument("--url", help="WebSocket URL (default: from [server])")
    h.add_argument("--http-url", help="internal listener URL (default: from [http])")
    h.add_argument("--key-name", help="API key to publish with (default: `healthcheck`)")
    h.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of probe channels")
    h.add_argument("--timeout", type=float, default=5.0, help="seconds per step (default 5)")
    h.add_argument(
        "--warning-rtt", type=float, default=0.5, help="round trip above this: WARNING (0.5 s)"
    )
    h.add_argument("--cafile", help="CA bundle to verify a wss:// server with")
    h.add_argument("--no-verify", action="store_true", help="do not verify the wss:// certificate")
    h.add_argument("--json", action="store_true", help="one JSON object instead of the line")
    h.set_defaults(func=cmd_healthcheck, load_config=load_config)
