"""`ime-record --relay/--publish`: checking the options and turning them into LiveSettings.

Everything here runs in the supervisor before any worker starts, so a mistake is one line and exit 2.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from recorder.cli_support import parse_host_port
from recorder.errors import UserError
from recorder.model.settings import LiveSettings

log = logging.getLogger("recorder.record")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_duration(text: str, option: str) -> float:
    """'3600', '90s', '30m', '24h', '7d' → seconds."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"bad {option} {text!r}: give a positive duration such as 3600, 30m, 24h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def check_nats_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        raise UserError("--publish needs a URL such as nats://127.0.0.1:4222 (several: comma-separated)")
    try:
        import nats  # noqa: F401
    except ImportError:
        raise UserError("--publish needs the NATS client: pip install 'ime-recorder[nats]'") from None


def _check_can_listen(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"bad --relay host {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            raise UserError(f"--relay cannot listen on {host}:{port}: {exc.strerror}; choose another port") from None


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """--relay/--publish checked and parsed, before anything starts (the contracts may not be known yet)."""

    relay_host: str | None
    relay_port: int | None
    relay_token: str | None
    relay_client_buffer: int
    nats_url: str | None
    nats_stream: str
    nats_max_age_s: float
    nats_duplicate_window_s: float
    nats_replicas: int
    nats_backlog: int

    def settings(self, kind: str, contracts: tuple[str, ...]) -> LiveSettings:
        return LiveSettings(
            # Abstract socket namespace: nothing on disk to clean up, and unique to this run.
            address=f"\0ime-record-live-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            kind=kind,
            contracts=contracts,
            relay_host=self.relay_host,
            relay_port=self.relay_port,
            relay_token=self.relay_token,
            relay_client_buffer=self.relay_client_buffer,
            nats_url=self.nats_url,
            nats_stream=self.nats_stream,
            nats_max_age_s=self.nats_max_age_s,
            nats_duplicate_window_s=self.nats_duplicate_window_s,
            nats_replicas=self.nats_replicas,
            nats_backlog=self.nats_backlog,
        )


def parse_live_options(relay: str | None, relay_token: str | None, relay_client_kib: int, publish: str | None,
                       nats_stream: str, nats_max_age: str, nats_duplicate_window: str, nats_replicas: int,
                       nats_backlog: int) -> LiveOptions | None:
    """None when neither --relay nor --publish is given; a UserError (one line, exit 2) when one is wrong."""
    if relay is None and publish is None:
        if relay_token:
            log.warning("--relay-token (or IME_RELAY_TOKEN) is set but --relay is not; ignored")
        return None
    relay_host: str | None = None
    relay_port: int | None = None
    if relay is not None:
        relay_host, relay_port = parse_host_port(relay, "--relay")
        _check_can_listen(relay_host, relay_port)
        if not is_loopback(relay_host):
            log.warning("--relay listens on %s, not a loopback address: anyone who can reach it gets the live "
                        "feed%s", relay_host, "" if relay_token else "; set IME_RELAY_TOKEN to require a token")
    if publish is not None:
        check_nats_url(publish)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", nats_stream):
        raise UserError(f"bad --nats-stream {nats_stream!r}: use letters, digits, '-' and '_'")
    max_age = parse_duration(nats_max_age, "--nats-max-age")
    window = parse_duration(nats_duplicate_window, "--nats-duplicate-window")
    if window > max_age:
        raise UserError("--nats-duplicate-window cannot be longer than --nats-max-age")
    return LiveOptions(relay_host, relay_port, relay_token or None, relay_client_kib * 1024, publish, nats_stream,
                       max_age, window, nats_replicas, nats_backlog)


def live_settings(kind: str, contracts: tuple[str, ...], relay: str | None, relay_token: str | None,
                  relay_client_kib: int, publish: str | None, nats_stream: str, nats_max_age: str,
                  nats_duplicate_window: str, nats_replicas: int, nats_backlog: int) -> LiveSettings | None:
    """parse_live_options and settings in one step, for when the contracts are known."""
    options = parse_live_options(relay, relay_token, relay_client_kib, publish, nats_stream, nats_max_age,
                                 nats_duplicate_window, nats_replicas, nats_backlog)
    return options.settings(kind, contracts) if options is not None else None
