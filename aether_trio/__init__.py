"""Aether: a real-time messaging server on Trio that speaks the Centrifugo client protocol v2.

Importing the package stays free of I/O libraries (the sans-IO protocol layer imports `config`
through it); `Server` is loaded on first use.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .config import Config as Config
from .config import ConfigError as ConfigError
from .config import load_config as load_config

if TYPE_CHECKING:
    from .app import Server as Server
    from .app import open_server as open_server
    from .backend import AppDisconnect as AppDisconnect
    from .backend import AppError as AppError
    from .backend import Hooks as Hooks

__all__ = [
    "AppDisconnect",
    "AppError",
    "Config",
    "ConfigError",
    "Hooks",
    "Server",
    "__version__",
    "load_config",
    "open_server",
]

# Loaded on first use: the server and the backend import Trio and httpx.
_LAZY = {
    "Server": "app",
    "open_server": "app",
    "AppDisconnect": "backend",
    "AppError": "backend",
    "Hooks": "backend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
