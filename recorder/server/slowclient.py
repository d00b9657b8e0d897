"""What a server does with a client that cannot keep up: a per-source policy, chosen by whoever owns the source.

A client "cannot keep up" while its transport is paused: more than the server's `write_buffer_high` bytes wait
in user space because the client does not read fast enough. Each source decides what that costs:
- the simulator's live market drops that client's messages (counted) and never cuts it: `SlowClientPolicy()`;
- `ime-replay --serve` waits for the slowest client (a backtest must not silently miss frames), so one client
  that never reads would freeze all the others: it cuts a client that stays paused for `send_timeout` seconds;
- a live relay would cut for the same reason, so that one stuck consumer cannot hold the others' memory.
The cut is a CLOSE with `close_code` and a reason, then the TCP connection is cut if the client does not answer
within the close timeout (it is not reading, so it usually does not).
"""

from __future__ import annotations

from dataclasses import dataclass

TRY_AGAIN_LATER = 1013  # RFC 6455 registry: the client may reconnect (not 1008, which means "bad request")


@dataclass(frozen=True, slots=True)
class SlowClientPolicy:
    send_timeout: float | None = None  # seconds a client may stay paused before it is cut; None: never cut
    close_code: int = TRY_AGAIN_LATER

    def __post_init__(self) -> None:
        if self.send_timeout is not None and self.send_timeout <= 0:
            raise ValueError("the send timeout must be a positive number of seconds")

    def reason(self) -> str:
        """The close reason a cut client is given (and the server logs)."""
        return f"too slow: could not take more data for {self.send_timeout:g}s"
