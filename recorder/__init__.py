"""ime-recorder: lossless recorder and paced replayer for the IME WebSocket market-data feed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from recorder.api import Recording


def open_recording(paths: Any) -> Recording:
    """`recorder.api.open_recording`, imported on first use so that `import recorder` stays light."""
    from recorder.api import open_recording as _open

    return _open(paths)


__all__ = ["__version__", "open_recording"]
