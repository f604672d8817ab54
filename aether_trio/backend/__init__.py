"""The application's backend: Centrifugo-compatible HTTP proxies (`[[proxies]]`) and in-process
hooks, behind one `Backend` (dispatch.py). Shapes in wire.py, the HTTP client in http.py, hooks
in hooks.py. An infrastructure unit: it imports the protocol layer and the config, nothing else
of Aether; the node holds the `Backend`, the connection layer asks it.
"""

from ..protocol.errors import AppDisconnect as AppDisconnect
from ..protocol.errors import AppError as AppError
from .dispatch import IDEMPOTENT as IDEMPOTENT
from .dispatch import KINDS as KINDS
from .dispatch import Backend as Backend
from .errors import FAILURES as FAILURES
from .errors import CallFailed as CallFailed
from .hooks import Hooks as Hooks
from .notifier import Notifier as Notifier
from .wire import ChannelEvent as ChannelEvent
from .wire import ConnectEvent as ConnectEvent
from .wire import ConnectResult as ConnectResult
from .wire import DisconnectEvent as DisconnectEvent
from .wire import PublishEvent as PublishEvent
from .wire import PublishResult as PublishResult
from .wire import RefreshEvent as RefreshEvent
from .wire import RefreshResult as RefreshResult
from .wire import RPCEvent as RPCEvent
from .wire import RPCResult as RPCResult
from .wire import SubRefreshEvent as SubRefreshEvent
from .wire import SubRefreshResult as SubRefreshResult
from .wire import SubscribeEvent as SubscribeEvent
from .wire import SubscribeOptions as SubscribeOptions
from .wire import SubscribeResult as SubscribeResult

__all__ = [
    "FAILURES",
    "IDEMPOTENT",
    "KINDS",
    "AppDisconnect",
    "AppError",
    "Backend",
    "CallFailed",
    "ChannelEvent",
    "ConnectEvent",
    "ConnectResult",
    "DisconnectEvent",
    "Hooks",
    "Notifier",
    "PublishEvent",
    "PublishResult",
    "RPCEvent",
    "RPCResult",
    "RefreshEvent",
    "RefreshResult",
    "SubRefreshEvent",
    "SubRefreshResult",
    "SubscribeEvent",
    "SubscribeOptions",
    "SubscribeResult",
]
