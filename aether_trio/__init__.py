"""Aether: a real-time messaging server on Trio that speaks the Centrifugo client protocol v2."""

from ._version import __version__ as __version__
from .app import Server as Server
from .config import Config as Config
from .config import ConfigError as ConfigError
from .config import load_config as load_config

__all__ = ["Config", "ConfigError", "Server", "__version__", "load_config"]
