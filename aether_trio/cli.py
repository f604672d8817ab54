"""`aether` command line: serve, check-config, token, version, init, healthcheck, admin, audit,
backup.

Every command that reads the configuration takes `-c FILE` and `--instance N` (process N of
several on one host sharing the file: its own ports, node name and data directory, see
`config.for_instance`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ._version import __version__
from .config import Config, ConfigError, load_config

__all__ = ["main"]

DEFAULT_CONFIG = "config.toml"


def _config_path(arg: str | None) -> str | None:
    """-c FILE, else ./config.toml when present, else the embedded defaults (None)."""
    if arg is not None:
        return arg
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def _load(arg: str | None, instance: int | None = None) -> tuple[Config, str | None]:
    path = _config_path(arg)
    return load_config(path, instance), path


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from .app import HANDLED_SIGNALS, serve_forever
    from .observe.logs import setup_logging

    config, path = _load(args.config, args.instance)
    worker = args.instance if config.server.workers > 1 else None
    setup_logging(config.log.level, config.log.format, sys.stderr, worker=worker)
    if config.server.workers > 1 and args.instance is None:
        return _supervise(config, path, args.pid_file)
    logging.getLogger("aether_trio").info(
        "aether %s starting with %s", __version__, path or "embedded defaults"
    )
    # Held until serve_forever's receiver is in place: a SIGTERM or SIGHUP sent as soon as the pid
    # file exists would otherwise kill the process (the default action) instead of stopping or
    # reloading it gracefully.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    with _pid_file(args.pid_file):
        trio.run(serve_forever, config, path, args.instance, args.supervised)
    return 0


def _supervise(config: Config, path: str | None, pid_file: str | None) -> int:
    """`[server] workers` > 1: this process runs the workers (`aether serve --instance K`) and
    serves nothing itself (workers/supervisor.py)."""
    import trio

    from .workers import RestartPolicy, Supervisor
    from .workers.supervisor import stop_timeout

    server = config.server
    base = [sys.executable, "-m", "aether_trio", "serve", *(["-c", path] if path else [])]
    supervisor = Supervisor(
        server.workers,
        lambda k: [*base, "--instance", str(k), "--supervised"],
        lambda: RestartPolicy(
            first_delay=server.worker_restart_delay,
            max_delay=server.worker_restart_max_delay,
            max_failed_starts=server.worker_max_failed_starts,
        ),
        stop_timeout(server.shutdown_drain_seconds, config.engine.persist_timeout),
    )
    logging.getLogger("aether_trio").info(
        "aether %s starting %d workers on port %d with %s",
        __version__, server.workers, server.port, path or "embedded defaults",
    )  # fmt: skip
    with _pid_file(pid_file):
        return trio.run(supervisor.run)


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """This process's id in `path` while it runs (what `just reload` signals), removed at exit
    unless another process has written its own there meanwhile."""
    if path is None:
        yield
        return
    pid = str(os.getpid())
    Path(path).write_text(pid + "\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == pid:
                Path(path).unlink()


def cmd_check_config(args: argparse.Namespace) -> int:
    config, path = _load(args.config, args.instance)
    print(
        f"{path or 'embedded defaults'}: OK "
        f"({len(config.channel.namespaces)} namespaces, listening on "
        f"{config.server.host}:{config.server.port})"
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .auth.tokens import mint_token

    config, _path = _load(args.config, args.instance)
    if not config.token.hmac_secret:
        print("error: no [token] hmac_secret (or hmac_secret_file) configured", file=sys.stderr)
        return 2
    claims: dict[str, Any] = {"sub": args.user}
    if args.ttl > 0:
        claims["exp"] = int(time.time()) + args.ttl
    if args.channel:
        claims["channel"] = args.channel
    if args.info:
        try:
            claims["info"] = orjson.loads(args.info)
        except orjson.JSONDecodeError:
            print("error: --info must be JSON", file=sys.stderr)
            return 2
    if args.channels and not args.channel:
        claims["channels"] = args.channels
    print(mint_token(config.token.hmac_secret, claims, args.algorithm))
    return 0


def cmd_version(_args: argparse.Namespace) -> int:
    print(f"aether {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aether", description="Aether real-time server")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c", "--config", help=f"TOML config file (default: ./{DEFAULT_CONFIG} if present)"
        )
        p.add_argument(
            "--instance",
            type=int,
            metavar="N",
            help="process N (1, 2, ...) of several sharing the file: ports + N, node name "
            "<node_name>-N, data in <data_dir>/N",
        )
        return p

    serve = with_config(sub.add_parser("serve", help="run the server"))
    serve.add_argument("--pid-file", help="write the process id here while running")
    # A worker started by the parent of `[server] workers` > 1 (workers/child.py): not for users.
    serve.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)
    with_config(sub.add_parser("check-config", help="validate the configuration")).set_defaults(
        func=cmd_check_config
    )
    token = with_config(
        sub.add_parser("token", help="mint a connection or subscription JWT (development)")
    )
    token.add_argument("--user", "-u", default="", help="the `sub` claim (user id)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until `exp` (0: no exp)")
    token.add_argument("--channel", help="mint a subscription token for this channel")
    token.add_argument("--channels", nargs="*", help="server-side channels (connection token)")
    token.add_argument("--info", help="JSON for the `info` claim")
    token.add_argument("--algorithm", default="HS256", choices=["HS256", "HS384", "HS512"])
    token.set_defaults(func=cmd_token)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    from .admin.cli import add_parsers as add_admin_parsers
    from .ops.cli import add_parsers as add_ops_parsers

    add_ops_parsers(sub, with_config, _load)  # `aether init`, `aether healthcheck`
    add_admin_parsers(sub, with_config, _load)  # `aether admin ...`, `aether audit ...`
    from .backup.cli import add_parsers as add_backup_parsers

    add_backup_parsers(sub, with_config, _load)  # `aether backup ...`
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
