"""Configuration: one TOML file structured into frozen attrs classes by a strict cattrs converter.

    loader.py    `Config` (the root), `load_config`/`parse_config`, the converter and its errors
    sections.py  `[server]`, `[http]`, `[client]`, `[token]`, ... one frozen class per section
    backup.py    `[backup]` (and the durations it is written in)
    proxies.py   `[[proxies]]`: the application's backend endpoints
    channels.py  `[channel]`: namespaces and the options of channels without one (the options
                 are the protocol layer's `ChannelOptions`)

The names below are the package's public surface; modules inside it import each other directly.
"""

from .backup import BackupConfig as BackupConfig
from .channels import ChannelConfig as ChannelConfig
from .cluster import ClusterConfig as ClusterConfig
from .loader import Config as Config
from .loader import ConfigError as ConfigError
from .loader import for_instance as for_instance
from .loader import load_config as load_config
from .loader import parse_config as parse_config
from .proxies import ProxyConfig as ProxyConfig
from .sections import TOKEN_ALGORITHMS as TOKEN_ALGORITHMS
from .sections import AdminConfig as AdminConfig
from .sections import ApiConfig as ApiConfig
from .sections import ApiKey as ApiKey
from .sections import ClientConfig as ClientConfig
from .sections import EngineConfig as EngineConfig
from .sections import HttpConfig as HttpConfig
from .sections import LimitsConfig as LimitsConfig
from .sections import LogConfig as LogConfig
from .sections import MonitorConfig as MonitorConfig
from .sections import PersonalChannelConfig as PersonalChannelConfig
from .sections import RedisEngineConfig as RedisEngineConfig
from .sections import ServerConfig as ServerConfig
from .sections import TokenConfig as TokenConfig

__all__ = [
    "TOKEN_ALGORITHMS",
    "AdminConfig",
    "ApiConfig",
    "ApiKey",
    "BackupConfig",
    "ChannelConfig",
    "ClientConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "EngineConfig",
    "HttpConfig",
    "LimitsConfig",
    "LogConfig",
    "MonitorConfig",
    "PersonalChannelConfig",
    "ProxyConfig",
    "RedisEngineConfig",
    "ServerConfig",
    "TokenConfig",
    "for_instance",
    "load_config",
    "parse_config",
]
