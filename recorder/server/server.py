"""The IME-compatible server: admission (path, token, contracts), then hand-off to a FeedSource.

Both subscription endpoints live on a picows WebSocket port under the real path prefix; the token endpoint
(`POST /auth/user/token/issue`) and `GET /stats` live on a second, plain HTTP port (picows answers only
bodiless GET upgrades).

Refusals follow the API document: close code 1008 with a reason naming what was wrong (never the token).
`reject="close"` accepts the upgrade and closes at once, as the document describes; `reject="handshake"`
answers the upgrade with HTTP 403 instead, the other behaviour a real deployment may show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from recorder.feed.endpoints import (
    PATH_PREFIX,
    TOKEN_PATH,
    EndpointKind,
    SubscriptionError,
    UnknownPathError,
    parse_subscription,
)
from recorder.feed.token import AUTH_HEADER, CONTENT_TYPE, TokenError, decode_token_request, token_from_header
from recorder.server.framing import MAX_CLOSE_REASON, truncate_utf8
from recorder.server.http import HttpRequest, HttpResponse, HttpServer
from recorder.server.slowclient import SlowClientPolicy
from recorder.server.source import FeedSource
from recorder.server.subscriber import CLOSE_TIMEOUT, Subscriber
from recorder.server.tokens import Credentials, TokenAuthority
from recorder.throttle import Throttle

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
STATS_PATH = "/stats"
PROTOCOL_ERROR_LOG_S = 60.0  # a client's protocol error: the first logged at once, then a summary at most this often


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # WebSocket port; 0 picks a free one
    http_port: int = 0  # token endpoint and /stats; 0 picks a free one
    reject: Literal["close", "handshake"] = "close"
    credentials: Credentials | None = None  # None: the token endpoint refuses everyone
    token_ttl: float = 3600.0
    static_token: str | None = field(default=None, repr=False)  # accepted as is, besides issued tokens
    require_token: bool = True  # False: any Authorization (or none) is accepted, e.g. for a local replay
    # A slow client may hold at most this much in our user-space buffer before `writable` turns False.
    write_buffer_high: int = 1 << 20
    write_buffer_low: int = 256 << 10
    # What to do with a client that stays over write_buffer_high: each source's owner chooses (slowclient.py).
    slow_client: SlowClientPolicy = field(default_factory=SlowClientPolicy)
    history: int = 1000  # closed connections kept for /stats
    use_aiofastnet: bool | None = None  # picows's choice by default


class _Listener(WSListener):  # type: ignore[misc]
    """Admitted client: forwards picows callbacks to its Subscriber."""

    def __init__(self, server: FeedServer, kind: EndpointKind, contracts: tuple[str, ...],
                 token_id: str | None) -> None:
        super().__init__()
        self._server = server
        self._kind = kind
        self._contracts = contracts
        self._token_id = token_id
        self.sub: Subscriber | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.sub = self._server._admit(transport, self._kind, self._contracts, self._token_id)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        sub = self.sub
        if sub is None:
            return
        msg_type = frame.msg_type
        if msg_type == WSMsgType.PONG:
            sub.pongs += 1
        elif msg_type == WSMsgType.CLOSE:
            code = int(frame.get_close_code()) if frame.payload_size >= 2 else None
            reason = frame.get_close_reason() if frame.payload_size > 2 else ""
            sub._on_client_close(code, reason)
        # Anything else a client sends (the API has no client messages yet) is ignored.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.sub is not None:
            self.sub._on_disconnected()

    def pause_writing(self) -> None:
        if self.sub is not None:
            self.sub._on_pause()

    def resume_writing(self) -> None:
        if self.sub is not None:
            self.sub._on_resume()


class _PicowsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows's logger for this server's connections, minus the protocol errors its clients make.

    picows logs each malformed frame a client sends at ERROR, one line per frame, with no rate limit: a client
    looping on a bad frame would flood the log with what is its own fault. Those go to the server, which counts
    them and logs them throttled at WARNING; everything else passes through unchanged.
    """

    _CLIENT_FAULTS = ("WS parser error", "on_ws_frame raised WSProtocolError")

    def __init__(self, server: FeedServer) -> None:
        super().__init__(logging.getLogger("picows.server"), {})
        self._server = server

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and isinstance(msg, str) and msg.startswith(self._CLIENT_FAULTS):
            self._server._client_protocol_error(args[0] if args else None)
            return
        super().log(level, msg, *args, **kwargs)


def _protocol_error_text(info: object) -> str:
    """picows's WSProtocolError args, (close code, reason), as one short phrase."""
    if isinstance(info, tuple) and len(info) >= 2:
        code, reason = info[0], info[1]
        with contextlib.suppress(TypeError, ValueError):
            return f"{str(reason)[:200]} (closed with {int(code)})"
    return str(info)[:200]


class _Refusal(WSListener):  # type: ignore[misc]
    """Refused client (reject="close"): accept the upgrade, send CLOSE 1008 with the reason, hang up."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self._reason = reason

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send_close(WSCloseCode.POLICY_VIOLATION, truncate_utf8(self._reason, MAX_CLOSE_REASON))
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.disconnect)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class FeedServer:
    """Serves `source` on both endpoint paths; issues and checks tokens; keeps per-connection stats."""

    def __init__(self, config: ServerConfig, source: FeedSource, authority: TokenAuthority | None = None) -> None:
        self.config = config
        self.source = source
        self.authority = authority or TokenAuthority(ttl=config.token_ttl, static_token=config.static_token)
        self._ws_server: asyncio.Server | None = None
        self._http = HttpServer({
            TOKEN_PATH: {"POST": self._issue_token},
            STATS_PATH: {"GET": lambda _req: HttpResponse.json(200, self.stats())},
        })
        self._subs: dict[int, Subscriber] = {}
        self._history: deque[Subscriber] = deque(maxlen=config.history)
        self._next_id = 1
        self._refused: Counter[str] = Counter()
        self._tokens_issued = 0
        self._cut_slow = 0
        self._started = time.time()
        self.protocol_errors = 0  # frames clients sent that broke the WebSocket protocol (each closed the client)
        self._protocol_log = Throttle(PROTOCOL_ERROR_LOG_S)
        self._protocol_summary: asyncio.TimerHandle | None = None
        self._last_protocol_error = ""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        kwargs: dict[str, Any] = {}
        if cfg.use_aiofastnet is not None:
            kwargs["use_aiofastnet"] = cfg.use_aiofastnet
        self._ws_server = await ws_create_server(
            self._route, cfg.host, cfg.port,
            websocket_handshake_timeout=10, enable_auto_pong=True, max_frame_size=1 << 20,
            logger_name=_PicowsLog(self), **kwargs,
        )
        await self._http.start(cfg.host, cfg.http_port)
        self._started = time.time()
        log.info("serving %s and %s", self.base_url, self.token_url)

    async def close(self, code: int = 1001, reason: str = "server shutting down", timeout: float = 1.0) -> None:
        """Stop accepting, close every client with `code` (abort those that do not answer), stop HTTP."""
        if self._ws_server is not None:
            self._ws_server.close()
        subs = list(self._subs.values())
        for sub in subs:
            sub.close(code, reason)
        if subs:
            waits = [asyncio.ensure_future(s.wait_closed()) for s in subs]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for w in pending:
                w.cancel()
            for sub in subs:
                if not sub.disconnected:
                    sub.abort()
            await asyncio.sleep(0)
        await self._http.close()
        self._ws_server = None
        if self._protocol_summary is not None:  # what was held back is not lost with the server
            self._protocol_summary.cancel()
            self._summarise_protocol_errors()

    # -- clients that break the protocol -------------------------------------------------------------

    def _client_protocol_error(self, info: object) -> None:
        """picows closed a client for a frame that breaks the protocol (see _PicowsLog): the client's fault."""
        self.protocol_errors += 1
        self._last_protocol_error = _protocol_error_text(info)
        now = time.monotonic()
        if self._protocol_log.hit(now):
            log.warning("a client broke the WebSocket protocol: %s; its connection is closed (more are counted in "
                        "/stats and summarised at most once a minute)", self._last_protocol_error)
        elif self._protocol_summary is None:
            self._protocol_summary = asyncio.get_running_loop().call_later(
                self._protocol_log.wait_s(now), self._summarise_protocol_errors)

    def _summarise_protocol_errors(self) -> None:
        self._protocol_summary = None
        since = self._protocol_log.last
        now = time.monotonic()
        held = self._protocol_log.take(now)
        if held:
            log.warning("%d more client(s) broke the WebSocket protocol in the last %.0fs (the last: %s); %d since the "
                        "start; each connection was closed", held, now - (since or now), self._last_protocol_error,
                        self.protocol_errors)

    # -- addresses -----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._ws_server is None:
            raise RuntimeError("server not started")
        return int(self._ws_server.sockets[0].getsockname()[1])

    @property
    def http_port(self) -> int:
        return self._http.port

    @property
    def base_url(self) -> str:
        return f"ws://{self._url_host}:{self.port}{PATH_PREFIX}"

    @property
    def token_url(self) -> str:
        return f"http://{self._url_host}:{self.http_port}{TOKEN_PATH}"

    @property
    def stats_url(self) -> str:
        return f"http://{self._url_host}:{self.http_port}{STATS_PATH}"

    @property
    def _url_host(self) -> str:
        host = self.config.host
        if host in ("", "0.0.0.0"):
            return "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    @property
    def cut_slow(self) -> int:
        """Clients closed by the slow-client policy so far."""
        return self._cut_slow

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subs.values())

    def issue_token(self, subject: str = "demo", ttl: float | None = None) -> str:
        self._tokens_issued += 1
        return self.authority.issue(subject, ttl)

    # -- admission -----------------------------------------------------------------------------------

    def _route(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
        try:
            subscription = parse_subscription(request.path)
        except UnknownPathError:
            self._refused["unknown path"] += 1
            return None  # picows answers 404
        except SubscriptionError as exc:
            return self._refuse("bad subscription", f"bad subscription: {exc}")
        header = request.headers.get(AUTH_HEADER)
        token_id: str | None = None
        if self.config.require_token:
            check = self.authority.check(token_from_header(header) if header else None)
            if not check.ok:
                return self._refuse(check.status.value, check.status.value)
            token_id = check.token_id
        if not subscription.contracts:
            return self._refuse("no contracts", f"no contracts: give {subscription.kind.param}=...")
        for contract in subscription.contracts:
            if not self.source.has_contract(subscription.kind, contract):
                return self._refuse("unknown contract", f"unknown contract: {contract}")
        return _Listener(self, subscription.kind, subscription.contracts, token_id)

    def _refuse(self, key: str, reason: str) -> WSListener | WSUpgradeResponseWithListener:
        self._refused[key] += 1
        log.info("refused a subscription: %s", reason)
        if self.config.reject == "handshake":
            response = WSUpgradeResponse.create_error_response(
                403, orjson.dumps({"error": reason}), {"Content-Type": "application/json"})
            return WSUpgradeResponseWithListener(response, None)
        return _Refusal(reason)

    def _admit(self, transport: WSTransport, kind: EndpointKind, contracts: tuple[str, ...],
               token_id: str | None) -> Subscriber:
        transport.underlying_transport.set_write_buffer_limits(
            high=self.config.write_buffer_high, low=self.config.write_buffer_low)
        sub = Subscriber(self._next_id, kind, contracts, token_id, transport, self._on_gone,
                         self.config.slow_client)
        self._next_id += 1
        self._subs[sub.id] = sub
        log.info("connection %d open: %s endpoint, %d contract(s), peer %s", sub.id, kind.value, len(contracts),
                 sub.peer)
        self.source.on_subscribe(sub)
        return sub

    def _on_gone(self, sub: Subscriber) -> None:
        self._subs.pop(sub.id, None)
        self._history.append(sub)
        if sub.cut_slow:
            self._cut_slow += 1
            log.warning("connection %d (peer %s) cut, close %s: %s", sub.id, sub.peer, sub.close_code,
                        sub.close_reason)
        log.info("connection %d closed (%s, code %s): sent %d, dropped %d", sub.id, sub.closed_by,
                 sub.close_code, sub.sent, sub.dropped)
        try:
            self.source.on_unsubscribe(sub)
        except Exception:
            log.exception("source failed to unsubscribe connection %d", sub.id)

    def revoke(self, token_id: str) -> None:
        self.authority.revoke(token_id)

    # -- HTTP ----------------------------------------------------------------------------------------

    def _issue_token(self, request: HttpRequest) -> HttpResponse:
        ctype = request.headers.get("content-type", CONTENT_TYPE).split(";")[0].strip().lower()
        if ctype != CONTENT_TYPE:
            return HttpResponse.error(415, f"send the form as {CONTENT_TYPE}")
        try:
            username, password = decode_token_request(request.body)
        except TokenError as exc:
            return HttpResponse.error(400, str(exc))
        creds = self.config.credentials
        if creds is None or not creds.matches(username, password):
            self._refused["bad credentials"] += 1
            return HttpResponse.error(401, "invalid username or password")
        return HttpResponse.json(200, {AUTH_HEADER: self.issue_token(username)})

    def stats(self) -> dict[str, Any]:
        """Everything GET /stats answers: per-connection counters, totals, refusals, the source's figures."""
        conns = [s.snapshot() for s in self._history] + [s.snapshot() for s in self._subs.values()]
        totals = {k: sum(c[k] for c in conns) for k in ("sent", "frames", "bytes", "dropped", "pongs")}
        faults: Counter[str] = Counter()
        for c in conns:
            faults.update(c["faults"])
        source_stats: Mapping[str, Any] = self.source.stats()
        return {
            "uptime_s": round(time.time() - self._started, 3),
            "open": len(self._subs),
            "connections": conns,
            "totals": {**totals, "connections": len(conns), "faults": dict(faults), "cut_slow": self._cut_slow},
            "refused": dict(self._refused),
            "protocol_errors": self.protocol_errors,
            "tokens_issued": self._tokens_issued,
            "source": dict(source_stats),
        }
