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

__all__ = ["Config", "ConfigError", "Server", "__version__", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from .app import Server

        return Server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
