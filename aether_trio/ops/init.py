"""`aether init DIR`: a production configuration from the commented template `production.toml`
(ops/config/production.toml in the source tree links to it).

Writes `DIR/config.toml` and, in `DIR/secrets/` (mode 0700), a fresh random HMAC secret and three
API keys (backend, ops, healthcheck), each a file of mode 0600 that the config names through
`*_file`. An existing config is never overwritten without `force`; an existing secret is never
overwritten at all (rotating a secret by accident would log every client out: delete the file to
get a new one). The result is loaded with the server's own loader before `init` reports success.
"""

from __future__ import annotations

import os
import re
import secrets
from importlib.resources import files
from pathlib import Path

import attrs

from ..config import Config, ConfigError, load_config

__all__ = ["SECRET_FILES", "InitError", "InitOptions", "InitResult", "init", "render"]

CONFIG_NAME = "config.toml"
SECRETS_DIR = "secrets"
# Placeholder -> file under secrets/; each gets a fresh random value.
SECRET_FILES = {
    "hmac_secret_file": "hmac.secret",
    "api_backend_key_file": "api-backend.key",
    "api_ops_key_file": "api-ops.key",
    "api_healthcheck_key_file": "api-healthcheck.key",
}
PLACEHOLDER = re.compile(r"@([a-z_]+)@")


class InitError(Exception):
    """Nothing usable was written; the message says why."""


@attrs.frozen
class InitOptions:
    directory: Path
    data_dir: Path = Path("/var/lib/aether")
    log_dir: Path = Path("/var/log/aether")
    port: int = 8000
    http_port: int = 9000
    node_name: str = "aether"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    allowed_origins: tuple[str, ...] = ()
    force: bool = False


@attrs.frozen
class InitResult:
    config_path: Path
    config: Config
    written: tuple[Path, ...]
    kept: tuple[Path, ...]


def template() -> str:
    return files(__package__).joinpath("production.toml").read_text()


def _toml_string(value: str) -> str:
    """`value` inside a TOML basic string (the template supplies the quotes)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render(options: InitOptions) -> str:
    """The template with every placeholder filled (paths absolute, secrets relative)."""
    directory = options.directory.resolve()
    values = {
        "config_path": str(directory / CONFIG_NAME),
        "secrets_dir": str(directory / SECRETS_DIR),
        "data_dir": str(options.data_dir.resolve()),
        "log_dir": str(options.log_dir.resolve()),
        "port": str(options.port),
        "http_port": str(options.http_port),
        "node_name": options.node_name,
        "tls_cert_file": str(Path(options.tls_cert_file).resolve())
        if options.tls_cert_file
        else "",
        "tls_key_file": str(Path(options.tls_key_file).resolve()) if options.tls_key_file else "",
        **{key: f"{SECRETS_DIR}/{name}" for key, name in SECRET_FILES.items()},
    }
    strings = {k: _toml_string(v) for k, v in values.items() if k not in ("port", "http_port")}
    filled = {**values, **strings}
    filled["allowed_origins"] = ", ".join(f'"{_toml_string(o)}"' for o in options.allowed_origins)

    def fill(match: re.Match[str]) -> str:
        return filled[match.group(1)]

    return PLACEHOLDER.sub(fill, template())


def _write_secret(path: Path) -> None:
    # O_EXCL: never over an existing file; the mode is set at creation, before any byte lands.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")


def _write_atomically(path: Path, text: str, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    temporary.replace(path)


def init(options: InitOptions) -> InitResult:
    directory = options.directory
    config_path = directory / CONFIG_NAME
    if config_path.exists() and not options.force:
        raise InitError(f"{config_path} exists; give --force to replace it (secrets are kept)")
    text = render(options)
    directory.mkdir(parents=True, exist_ok=True)
    secrets_dir = directory / SECRETS_DIR
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    written: list[Path] = []
    kept: list[Path] = []
    for name in SECRET_FILES.values():
        path = secrets_dir / name
        if path.exists():
            kept.append(path)
            continue
        _write_secret(path)
        written.append(path)
    # The config holds no secret; 0640 lets the service's group read it.
    _write_atomically(config_path, text, 0o640)
    written.append(config_path)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise InitError(f"the written {config_path} does not load: {exc}") from None
    return InitResult(config_path, config, tuple(written), tuple(kept))


def loose_modes(result: InitResult) -> list[Path]:
    """Kept secret files that others than their owner can read (a warning for the operator)."""
    return [path for path in result.kept if path.stat().st_mode & 0o077]
