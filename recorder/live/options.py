"""`ime-record --relay/--publish`: what the settings tree cannot check by itself (a port to listen on, the NATS
client), and the run's LiveSettings once the contracts are known.

Everything here runs in the supervisor before any worker starts, so a mistake is one line and exit 2.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import uuid
from dataclasses import replace
from urllib.parse import urlsplit

from recorder.errors import UserError
from recorder.model.settings import LiveSettings

log = logging.getLogger("recorder.record")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def check_live(settings: LiveSettings) -> LiveSettings | None:
    """None when neither --relay nor --publish is given; a UserError (one line, exit 2) when one cannot work."""
    if not settings.enabled:
        if settings.relay_token:
            log.warning("--relay-token (or IME_RELAY_TOKEN) is set but --relay is not; ignored")
        return None
    if settings.relay_port is not None:
        host = settings.relay_host or "127.0.0.1"
        _check_can_listen(host, settings.relay_port)
        if not is_loopback(host):
            log.warning("--relay listens on %s, not a loopback address: anyone who can reach it gets the live "
                        "feed%s", host, "" if settings.relay_token else "; set IME_RELAY_TOKEN to require a token")
    if settings.nats_url is not None:
        check_nats_url(settings.nats_url)
    if settings.nats_duplicate_window_s > settings.nats_max_age_s:
        raise UserError("--nats-duplicate-window cannot be longer than --nats-max-age")
    return settings


def for_run(settings: LiveSettings, kind: str, contracts: tuple[str, ...]) -> LiveSettings:
    """The hub's and the workers' settings for this run."""
    # Abstract socket namespace: nothing on disk to clean up, and unique to this run.
    return replace(settings, address=f"\0ime-record-live-{os.getpid()}-{uuid.uuid4().hex[:8]}", kind=kind,
                   contracts=contracts)
