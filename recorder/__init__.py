"""ime-recorder: lossless recorder and paced replayer for the IME WebSocket market-data feed."""

__version__ = "0.1.0"
