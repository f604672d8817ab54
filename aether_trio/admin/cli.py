"""`aether admin ...` (operator commands over HTTP) and `aether audit ...` (the local audit log).

`admin` calls `POST /api/admin/<command>` on the running server: the URL defaults to the
config's [http] host and port, the key to the first `[[api.keys]]` entry with the admin role
(`--url` and `--key` override). Results print as lines and tables; `--json` prints the server's
JSON. `audit verify` and `audit tail` read the SQLite database under `[admin] data_dir` directly,
so they work whether or not the server runs. Exit codes: 0 done, 1 refused or broken, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from ..config import Config
from . import chain
from .store import Database, StoreError, database_path

__all__ = ["add_parsers"]

LoadConfig = Callable[[str | None, int | None], tuple[Config, str | None]]


class CliError(Exception):
    """Printed as `error: ...`; exit code 1."""


# --- HTTP ---


def _default_url(config: Config) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
        config.http.host, config.http.host
    )
    return f"http://{f'[{host}]' if ':' in host else host}:{config.http.port}"


def _admin_key(config: Config) -> str:
    for key in config.api.keys:
        if "admin" in key.roles:
            return key.key
    raise CliError("no [[api.keys]] entry with the admin role in the config; give --key")


def call(args: argparse.Namespace, command: str, body: dict[str, Any]) -> dict[str, Any]:
    config, _path = args.load_config(args.config, args.instance)
    url = f"{(args.url or _default_url(config)).rstrip('/')}/api/admin/{command}"
    key = args.key or _admin_key(config)
    payload = orjson.dumps({k: v for k, v in body.items() if v is not None})
    request = urllib.request.Request(
        url, payload, {"Content-Type": "application/json", "X-API-Key": key}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        raise CliError(_http_error(exc.code, exc.read())) from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _http_error(status: int, body: bytes) -> str:
    if status == 401:
        return "401 unauthorized: no API key, or not one the server knows"
    if status == 403:
        return "403 forbidden: the API key lacks the admin role"
    try:
        error = orjson.loads(body)
        field = f"{error['field']}: " if error.get("field") else ""
        return f"{status}: {field}{error['error']}"
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
        return f"HTTP {status}"


# --- output ---


def _when(value: Any) -> str:
    if not isinstance(value, int | float):
        return "never" if value is None else str(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _lines(result: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, value in result.items():
        if isinstance(value, dict) and value:
            out.extend(_lines(value, f"{prefix}{name}."))
        else:
            out.append(f"{prefix}{name}: {_scalar(value)}")
    return out


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def _tree(task: dict[str, Any], depth: int = 0) -> list[str]:
    out = [f"{'  ' * depth}{task['name']}"]
    for nursery in task.get("nurseries", []):
        out.append(f"{'  ' * (depth + 1)}[nursery]")
        for child in nursery["tasks"]:
            out.extend(_tree(child, depth + 2))
    return out


def _render(command: str, result: dict[str, Any]) -> list[str]:
    if command == "bans":
        rows = [[b["user"], _when(b["expire_at"]), b["reason"]] for b in result["bans"]]
        return _table(["USER", "EXPIRES", "REASON"], rows) if rows else ["no bans"]
    if command == "connections":
        rows = [[c["client"], c["user"] or "(anonymous)", c["remote"], c["channels"],
                 f"{c['idle_seconds']:.1f}s"] for c in result["connections"]]  # fmt: skip
        table = _table(["CLIENT", "USER", "REMOTE", "CHANNELS", "IDLE"], rows) if rows else []
        return [*table, f"{result['total']} connection(s), {len(rows)} shown"]
    if command == "tasks":
        left_out = f", {result['left_out']} not shown" if result["left_out"] else ""
        return [*_tree(result["root"]), f"{result['tasks']} tasks{left_out}"]
    if command in ("drain", "drain_status", "drain_cancel"):
        return [_drain_line(result)]
    return _lines(result)


def _drain_line(s: dict[str, Any]) -> str:
    maintenance = "on" if s["maintenance"] else "off"
    return (
        f"drain {s['state']}: {s['closed']}/{s['total']} asked to reconnect, "
        f"{s['remaining']} remaining, {s['still_connected']} still connected "
        f"(rate {s['rate']:g}/s, maintenance {maintenance})"
    )


# --- commands ---


def _body(args: argparse.Namespace) -> dict[str, Any]:
    cmd = args.admin_command
    if cmd == "broadcast":
        try:
            data = orjson.loads(args.data)
        except orjson.JSONDecodeError:
            data = {"text": args.data}  # plain text is sent as {"text": ...}
        return {"data": data}
    if cmd == "maintenance":
        return {"enabled": args.state == "on"}
    if cmd == "drain":
        return {"rate": args.rate, "maintenance": False if args.keep_accepting else None}
    fields = ("user", "duration", "reason", "jti", "expire_at", "before", "level", "max_tasks",
              "client", "channel", "limit")  # fmt: skip
    return {name: getattr(args, name) for name in fields if hasattr(args, name)}


def cmd_admin(args: argparse.Namespace) -> int:
    command = args.admin_command.replace("-", "_")
    command = {"revoke": "revoke_token", "invalidate": "invalidate_user_tokens"}.get(
        command, command
    )
    args.admin_command = command
    try:
        result = call(args, command, _body(args))
        _print(args, command, result)
        while command == "drain" and args.wait and result["state"] == "running":
            time.sleep(1.0)
            result = call(args, "drain_status", {})
            _print(args, "drain_status", result)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print(args: argparse.Namespace, command: str, result: dict[str, Any]) -> None:
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(_render(command, result)))


def cmd_audit(args: argparse.Namespace) -> int:
    config, _path = args.load_config(args.config, args.instance)
    path = database_path(args.data_dir or config.admin.data_dir)
    try:
        db = Database.open(path, readonly=True)
    except (FileNotFoundError, StoreError) as exc:
        print(f"error: cannot open the audit database: {exc}", file=sys.stderr)
        return 2
    try:
        if args.audit_command == "verify":
            found = chain.verify(db.audit_rows(), db.audit_head())
            if found.broken is not None:
                print(f"audit log BROKEN at entry {found.broken.seq}: {found.broken.problem} "
                      f"({found.entries} entries before it verified)")  # fmt: skip
                return 1
            print(f"audit log OK: {found.entries} entries, head {found.head}")
            return 0
        for seq, text, _hash in db.audit_tail(args.n):
            print(text if args.json else _audit_line(seq, orjson.loads(text)))
        return 0
    finally:
        db.close()


def _audit_line(seq: int, e: dict[str, Any]) -> str:
    params = orjson.dumps(e["params"]).decode() if e["params"] else ""
    result = orjson.dumps(e["result"]).decode() if e["result"] is not None else ""
    status = "ok" if e["ok"] else "FAILED"
    return f"#{seq} {e['ts']} {e['actor']} {e['action']} {params} -> {status} {result}".rstrip()


def add_parsers(
    sub: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    load_config: LoadConfig,
) -> None:
    """Register `admin` and `audit` on the `aether` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="server HTTP base URL (default: from [http] host/port)")
    common.add_argument("--key", help="API key (default: first [[api.keys]] with role admin)")
    common.add_argument("--json", action="store_true", help="print the JSON result")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    admin = sub.add_parser("admin", help="operator commands on a running server")
    admin.set_defaults(func=cmd_admin, load_config=load_config)
    commands = admin.add_subparsers(dest="admin_command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return with_config(commands.add_parser(name, help=text, parents=[common]))

    command("node", "node information")
    command("broadcast", "system notice to every connection").add_argument(
        "data", help='JSON, or plain text (sent as {"text": ...})'
    )
    command("maintenance", "refuse (on) or accept (off) new connections").add_argument(
        "state", choices=["on", "off"]
    )
    drain = command("drain", "ask every connection to reconnect, gradually")
    drain.add_argument("--rate", type=float, help="connections per second ([admin] drain_rate)")
    drain.add_argument(
        "--keep-accepting",
        action="store_true",
        help="do not switch maintenance on (drained clients may come back)",
    )
    drain.add_argument("--wait", action="store_true", help="print progress until done")
    command("drain-status", "progress of the drain")
    command("drain-cancel", "stop the drain")
    ban = command("ban", "close a user's connections and refuse new ones")
    ban.add_argument("user")
    ban.add_argument("--duration", type=float, help="seconds (default: until unbanned)")
    ban.add_argument("--reason", help="note kept with the ban")
    command("unban", "lift a ban").add_argument("user")
    command("bans", "list bans")
    revoke = command("revoke", "refuse a connection token by its jti")
    revoke.add_argument("jti")
    revoke.add_argument("--expire-at", type=float, help="unix time to forget it (token's exp)")
    invalidate = command("invalidate", "refuse a user's tokens issued before a time")
    invalidate.add_argument("user")
    invalidate.add_argument("--before", type=int, help="unix time (default: now)")
    command("reload", "reload the configuration file (as SIGHUP)")
    command("log-level", "change the log level").add_argument(
        "level", choices=["debug", "info", "warning", "error"]
    )
    command("tasks", "the live Trio task tree").add_argument("--max-tasks", type=int)
    command("connection", "one connection's state").add_argument("client")
    connections = command("connections", "connections, by user or channel")
    connections.add_argument("--user")
    connections.add_argument("--channel")
    connections.add_argument("--limit", type=int)

    audit = sub.add_parser("audit", help="check or read the audit log (local database)")
    audit.set_defaults(func=cmd_audit, load_config=load_config)
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    for name, text in (("verify", "check the hash chain"), ("tail", "the latest entries")):
        parser = with_config(audit_commands.add_parser(name, help=text))
        parser.add_argument("--data-dir", help="the [admin] data_dir (default: from the config)")
        if name == "tail":
            parser.add_argument("-n", type=int, default=20, help="how many (default 20)")
            parser.add_argument("--json", action="store_true", help="entries as JSON lines")
