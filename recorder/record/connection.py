"""The life of one recording connection, as a pure state machine: outcomes in, actions and log lines out.

The worker (thin I/O glue) reports what happened to a connection — it could not connect, the upgrade was
answered with an HTTP status, it opened, data arrived, it closed with a code — and executes what this core
hands back: wait and connect again, treat it as a refusal (token or contracts: see planner.py), or give up
the whole recorder with one line. Nothing here sleeps, reads a clock or touches a socket; time comes in as
arguments, randomness from an injected `random.Random`, so every path is unit-tested.

Reconnect policy, because the IME service has no resend and every second disconnected is lost data:
- a connection that opened and delivered data was a success: after it drops, reconnect at once (a few
  tens of ms of jitter, so that redundant copies and shards do not reconnect in lock-step);
- backoff (capped exponential, full jitter) grows only over consecutive failures to connect or to get data;
- redundant copies of a group start staggered, so that a server that drops connections at a fixed age
  never takes every copy down at once.

Logging policy: the first failure of each kind is a WARNING with what to check; repeats of the same kind
are summarised at most once a minute, so that a retry loop is visible but never floods the log.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass, field

# HTTP statuses on the upgrade that mean "this URL is wrong", not "try again later".
_WRONG_URL = {404, 405, 410}
_REFUSAL = {401, 403}


class Failure(enum.StrEnum):
    NETWORK = "network"  # connect refused, reset, DNS, TLS
    TIMEOUT = "timeout"  # no upgrade answer in time
    HTTP = "http"  # the upgrade was answered with an unexpected HTTP status
    NOT_WEBSOCKET = "not_websocket"  # the peer answered something that is not an HTTP upgrade
    WRONG_URL = "wrong_url"  # 404 on the upgrade: the path is wrong
    EMPTY = "empty"  # opened, then closed before any data arrived


@dataclass(frozen=True, slots=True)
class Policy:
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 30.0
    reconnect_jitter_s: float = 0.05  # after a productive connection drops
    stagger_s: float = 0.5  # copy k of a group first connects k × stagger_s after copy 0
    wrong_url_attempts: int = 3  # consecutive 404s before the recorder gives up (exit 1)
    repeat_log_s: float = 60.0  # repeats of one failure kind are summarised at most this often


@dataclass(frozen=True, slots=True)
class Log:
    level: int
    message: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Connect (again) after `delay_s`."""

    delay_s: float
    logs: tuple[Log, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """The server refused this connection (close 1008 or HTTP 401/403): the planner decides what next."""

    how: str  # "close 1008" or "HTTP 403": said as what it was, in log lines
    code: int  # 1008, 401 or 403, for event records


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Retrying cannot help; stop the recorder with this one line (exit 1)."""

    message: str


Step = Wait | Refusal | GiveUp


@dataclass(slots=True)
class _Repeats:
    count: int = 0
    since_log: int = 0
    last_log_s: float = -1e18


@dataclass(slots=True)
class ConnectionCore:
    """One copy (0 … redundancy−1) of one connection group."""

    label: str  # e.g. "shard 1 group 3 copy 0", for log lines
    copy: int = 0
    policy: Policy = field(default_factory=Policy)
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0  # consecutive failures to connect or to get data
    delivered: bool = False  # the current connection delivered data
    opened_at_s: float | None = None
    connected_s: float = 0.0  # time this copy spent open, summed over its connections
    _wrong_url: int = 0
    _repeats: dict[Failure, _Repeats] = field(default_factory=dict)

    # --- outcomes ---------------------------------------------------------------------------------

    def start(self) -> Wait:
        """The first connect: staggered by copy so that copies never share a connection age."""
        delay = self.copy * self.policy.stagger_s
        if delay:
            delay += self.rng.uniform(0, self.policy.reconnect_jitter_s)
        return Wait(delay)

    def connect_failed(self, now_s: float, failure: Failure, detail: str) -> Step:
        self.delivered = False
        hint = {
            Failure.NETWORK: "check the network, the host in --base-url and the firewall",
            Failure.TIMEOUT: "the server did not answer the upgrade in time; check --base-url",
            Failure.NOT_WEBSOCKET: "the server at --base-url does not speak WebSocket; check the URL",
        }.get(failure, "")
        return self._retry(now_s, failure, f"{self.label}: cannot connect: {detail}" + (f" ({hint})" if hint else ""))

    def handshake_status(self, now_s: float, status: int | None, detail: str = "") -> Step:
        """The upgrade was answered with an HTTP status other than 101."""
        self.delivered = False
        if status in _REFUSAL:
            self._wrong_url = 0
            return Refusal(f"HTTP {status}", status)
        if status in _WRONG_URL:
            self._wrong_url += 1
            message = (f"the server answered HTTP {status} to the WebSocket upgrade at the --base-url path "
                       f"{self._wrong_url} times in a row: the path is wrong (it should end with "
                       f"/data-engine/ime/live/data/websocket)")
            if self._wrong_url >= self.policy.wrong_url_attempts:
                return GiveUp(message)
            return self._retry(now_s, Failure.WRONG_URL, f"{self.label}: HTTP {status} on the upgrade; "
                                                         "check the --base-url path", level=logging.ERROR)
        shown = f"HTTP {status}" if status is not None else "a response that is not HTTP"
        return self._retry(now_s, Failure.HTTP if status is not None else Failure.NOT_WEBSOCKET,
                           f"{self.label}: the server answered {shown} instead of a WebSocket upgrade"
                           + (f" ({detail})" if detail else "") + "; check --base-url")

    def opened(self, now_s: float) -> None:
        self._wrong_url = 0
        self.delivered = False
        self.opened_at_s = now_s

    def data(self) -> None:
        """The first message of this connection arrived: it works; the next drop reconnects at once."""
        if not self.delivered:
            self.delivered = True
            self.failures = 0
            self._recovered()

    def closed(self, now_s: float, code: int, reason: str, stopping: bool = False, copy_open: bool = False) -> Step:
        """`copy_open`: another copy of this group is still connected."""
        if self.opened_at_s is not None:
            self.connected_s += max(0.0, now_s - self.opened_at_s)
            self.opened_at_s = None
        delivered, self.delivered = self.delivered, False
        if code == 1008:
            return Refusal("close 1008", 1008)
        why = f"code {code}" + (f", {reason!r}" if reason else "")
        if stopping:
            return Wait(0.0)
        if delivered:
            # A working connection dropped: the market does not wait, so neither do we.
            self.failures = 0
            # The jitter keeps connections that dropped together (a server restart) from coming back in lock-step.
            # A copy whose sibling is still up did not drop with it: waiting would only widen the window in which
            # a drop of the sibling loses messages (tests/test_redundancy_e2e.py: 21 lost against a bound of 19).
            delay = 0.0 if copy_open else self.rng.uniform(0, self.policy.reconnect_jitter_s)
            return Wait(delay, (Log(logging.INFO, f"{self.label}: connection closed ({why}); reconnecting"),))
        return self._retry(now_s, Failure.EMPTY, f"{self.label}: the server closed the connection ({why}) "
                                                 "before sending any data")

    def refused_retry(self) -> Wait:
        """After a refusal the planner chose to reconnect (a newer token, or a connection-limit wait)."""
        return Wait(self._next_delay())

    def connection_limit_wait(self) -> Wait:
        """An extra copy refused while another copy is open: the account's connection limit; wait long."""
        self.failures = max(self.failures, 6)
        return Wait(self._next_delay())

    # --- internals --------------------------------------------------------------------------------

    def _next_delay(self) -> float:
        """Full jitter over a ceiling that doubles per consecutive failure, capped."""
        p = self.policy
        ceiling = min(p.backoff_cap_s, p.backoff_base_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def _retry(self, now_s: float, failure: Failure, message: str, level: int = logging.WARNING) -> Wait:
        delay = self._next_delay()
        rep = self._repeats.setdefault(failure, _Repeats())
        rep.count += 1
        rep.since_log += 1
        logs: tuple[Log, ...] = ()
        if rep.count == 1:
            logs = (Log(level, f"{message}; retrying in {delay:.1f}s"),)
            rep.since_log, rep.last_log_s = 0, now_s
        elif now_s - rep.last_log_s >= self.policy.repeat_log_s:
            logs = (Log(level, f"{message}; {rep.since_log} more failures like this since the last report, "
                               f"retrying in {delay:.1f}s"),)
            rep.since_log, rep.last_log_s = 0, now_s
        return Wait(delay, logs)

    def _recovered(self) -> None:
        self._repeats.clear()


class RefusalKind(enum.StrEnum):
    TOKEN = "token"  # a connection that had been accepted was refused: the token expired or was revoked
    CONNECTION_LIMIT = "limit"  # an extra copy refused while another copy, same contracts and token, is open
    FOLLOW = "follow"  # copy k > 0 refused at connect time: copy 0 speaks for the group to the planner
    PLANNER = "planner"  # copy 0 refused at connect time: the token or a contract (planner.py decides)


def classify_refusal(copy: int, was_accepted: bool, other_copy_open: bool, same_token: bool) -> RefusalKind:
    """What a refusal (close 1008, HTTP 401/403) of one copy of a group says.

    A refusal of a connection that was streaming is about the token, whichever copy it is. A copy refused at
    connect time while another copy with the same contracts and token is open proves the contracts and the
    token good: only the account's connection limit is left — never bisect or exclude contracts for it.
    """
    if was_accepted:
        return RefusalKind.TOKEN
    if other_copy_open and same_token:
        return RefusalKind.CONNECTION_LIMIT
    return RefusalKind.FOLLOW if copy != 0 else RefusalKind.PLANNER
