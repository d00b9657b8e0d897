"""An IME-compatible server: the WebSocket endpoints, the token endpoint and /stats.

Frames come from a pluggable `FeedSource` (the simulator's synthetic market, or replayed segments);
`Subscriber` is the per-client handle a source writes to.
"""

from recorder.server.server import FeedServer, ServerConfig
from recorder.server.source import FeedSource
from recorder.server.subscriber import Subscriber

__all__ = ["FeedServer", "FeedSource", "ServerConfig", "Subscriber"]
