"""`aether` command line: serve, check-config, token, version, admin, audit."""

from __future__ import annotations

import argparse
import logging
import sys
import time
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


def _load(arg: str | None) -> tuple[Config, str | None]:
    path = _config_path(arg)
    return load_config(path), path


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from .app import serve_forever
    from .observe.logs import setup_logging

    config, path = _load(args.config)
    setup_logging(config.log.level, config.log.format, sys.stderr)
    logging.getLogger("aether_trio").info(
        "aether %s starting with %s", __version__, path or "embedded defaults"
    )
    trio.run(serve_forever, config, path)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config, path = _load(args.config)
    print(
        f"{path or 'embedded defaults'}: OK "
        f"({len(config.channel.namespaces)} namespaces, listening on "
        f"{config.server.host}:{config.server.port})"
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .auth.tokens import mint_token

    config, _path = _load(args.config)
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
        return p

    with_config(sub.add_parser("serve", help="run the server")).set_defaults(func=cmd_serve)
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

    add_admin_parsers(sub, with_config, _load)  # `aether admin ...`, `aether audit ...`
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
