"""The settings of a recording: one frozen tree of sections, every default written once.

Each field a user sets carries its option once (`opt`): long name (= config-file key), help, kind and range, unit
(`--frame-kib` fills `frame_bytes`), environment variable, secret or not, repeatable or not, what a reload does with
it; its default is written in the option's units, as `--help` shows it. From the tree come ime-record's options,
--config's keys and checks, --print-config and a reload's changes (recorder/record/clioptions.py), what a worker and
the live hub are given (sections, picklable), and the library's defaults (DEFAULTS). Pure, the lowest floor.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from recorder.errors import UserError
from recorder.timeparse import (
    CALENDAR_ENV,
    CALENDAR_SHOWN_HELP,
    CALENDARS,
    GREGORIAN,
    TZ_ENV,
    TZ_SHOWN_HELP,
    parse_tz,
)


class Reload(enum.Enum):
    """What a reload (SIGHUP) does with a changed value."""

    NEXT_START = "next start"  # said in the log, used from the next start on
    NOW = "now"
    WITH_CONTRACTS = "with contracts"  # a contract source: applied when its contracts were re-read


# Units: option value × unit = field value; an int unit counts whole units (bytes), a float one keeps fractions.
KIB, MIB, GB = 1 << 10, 1 << 20, 1 << 30
MINUTES = 60.0


@dataclass(frozen=True, slots=True)
class Opt:
    """One field's option. `name` is filled in from the field's name (`ids_file` → `ids-file`) unless given."""

    help: str
    # int, float, str, Path or bool: a bool is a flag, --NAME/--no-NAME when its default is true.
    type: type
    default: Any  # in the option's units, as --help shows it
    name: str = ""
    count: bool = False  # -v, -vv: an int counting its repeats
    exists: bool = False  # a str naming a file that must exist
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    unit: float | None = None
    # Option value and "--name" → field value (UserError naming the option), or a dict of several fields' values.
    parse: Callable[[Any, str], Any] | None = None
    env: str | None = None
    secret: bool = False  # refused in a config file, masked wherever shown, warned about on the command line
    secret_file: str | None = None  # the option that reads the secret from a file instead
    url: bool = False  # shown without credentials
    repeatable: bool = False
    metavar: str | None = None
    short: str | None = None
    reload: Reload = Reload.NEXT_START

    @property
    def toml(self) -> str:
        """The kind a config-file value must have."""
        return {int: "int", float: "float", bool: "bool"}.get(self.type, "text")

    @property
    def param(self) -> str:
        return self.name.replace("-", "_")

    def to_field(self, value: Any) -> Any:
        """The option's value in the field's units; raises UserError (one line, naming the option)."""
        if value is None:
            return None
        if self.repeatable:
            value = tuple(value)
        if self.parse is not None:
            return self.parse(value, f"--{self.name}")
        if self.unit is not None:
            return int(value * self.unit) if isinstance(self.unit, int) else float(value * self.unit)
        return float(value) if self.type is float else value

    def secret_hint(self) -> str:
        """Where the secret belongs instead, for a config file's refusal."""
        named = f" or name a file with {self.secret_file}" if self.secret_file else ""
        return f"set {self.env} in the environment (file){named}"


def opt(default: Any, help: str, type: type = str, **meta: Any) -> Any:
    """A field with its option; the field's default is `default` converted to the field's units."""
    option = Opt(help, type, default, **meta)
    return field(default=option.to_field(default), repr=not option.secret, metadata={"opt": option})


# --- values: pure parsers of what options are written as ---------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str) -> float:
    """'3600', '90s', '30m', '24h', '7d' → seconds."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"bad {option} {text!r}: give a positive duration such as 3600, 30m, 24h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_host_port(spec: str, option: str) -> tuple[str, int]:
    """'8765', ':8765', '127.0.0.1:8765', '[::1]:8765' → (host, port); the host defaults to 127.0.0.1."""
    host, _, port_text = spec.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(f"bad {option} {spec!r}: give [HOST:]PORT, e.g. 127.0.0.1:8765") from None
    if not 0 <= port <= 65535:
        raise UserError(f"bad {option} {spec!r}: port must be 0-65535")
    return host, port


def _relay(spec: str, option: str) -> dict[str, Any]:
    host, port = parse_host_port(spec, option)
    return {"relay_host": host, "relay_port": port}


def _stream_name(name: str, option: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise UserError(f"bad {option} {name!r}: use letters, digits, '-' and '_'")
    return name


# --- the sections ----------------------------------------------------------------------------------------------------


class Section:
    """A section of the tree: built from option values (by parameter name, in the options' units)."""

    __slots__ = ()

    @classmethod
    @functools.cache
    def options(cls) -> tuple[tuple[str, Opt], ...]:
        """(field name, option) of every field a user sets, in order; a name not given is the field's."""
        return tuple((f.name, o if o.name else replace(o, name=f.name.replace("_", "-")))
                     for f in fields(cls) if (o := f.metadata.get("opt")) is not None)

    @classmethod
    def build(cls, **values: Any) -> Any:
        """The section from option values, e.g. OpsSettings.build(retain_gb=2); absent ones keep their default.
        Raises UserError (one line) for a value its option refuses."""
        kwargs: dict[str, Any] = {}
        for name, option in cls.options():
            if option.param in values:
                value = option.to_field(values[option.param])
                kwargs.update(value if isinstance(value, dict) else {name: value})  # a dict: --relay's host and port
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class ContractSource(Section):
    """Where the contracts come from: one of these (the CLI checks that), or --demo's."""

    ids_file: Path | None = opt(None, "File with one contract id per line.", Path, reload=Reload.WITH_CONTRACTS)
    names_file: Path | None = opt(None, "File with one contract name per line.", Path,
                                  reload=Reload.WITH_CONTRACTS)
    ids: str | None = opt(None, "Comma-separated contract ids.", reload=Reload.WITH_CONTRACTS)
    names: str | None = opt(None, "Comma-separated contract names.", reload=Reload.WITH_CONTRACTS)


@dataclass(frozen=True, slots=True)
class RunOptions(Section):
    """The supervisor's own."""

    shards: int = opt(1, "Worker processes; contracts are spread over them by rendezvous hashing.", int,
                      min=1, max=256)
    duration_s: float | None = opt(None, "Stop cleanly after this many seconds (default: until SIGINT/SIGTERM).",
                                   float, name="duration", min=0, min_open=True)
    status_interval_s: float = opt(30, "Seconds between status log lines when stderr is not a terminal.",
                                   float, name="status-interval", min=1, reload=Reload.NOW)
    metrics_port: int | None = opt(None, "Serve Prometheus metrics on this port.", int, min=0, max=65535)
    metrics_host: str = opt("127.0.0.1", "Address for --metrics-port.")


@dataclass(frozen=True, slots=True)
class Credentials(Section):
    token: str | None = opt(None, "JWT (prefer the IME_TOKEN variable: arguments show in `ps`).", env="IME_TOKEN",
                            secret=True, secret_file="token-file")
    token_file: Path | None = opt(None, "File holding the JWT; re-read when refused.", Path)
    username: str | None = opt(None, "Account for the token endpoint (or IME_USERNAME).", env="IME_USERNAME")
    password: str | None = opt(None, "Password (prefer the IME_PASSWORD variable).", env="IME_PASSWORD", secret=True,
                               secret_file="password-file")
    password_file: Path | None = opt(None, "File holding the password (its first line); not visible in `ps` like "
                                     "--password is.", Path)
    token_url: str = opt("https://core.hedgetech.ir/auth/user/token/issue", "Token endpoint.", url=True)


@dataclass(frozen=True, slots=True)
class ConnectionSettings(Section):
    """How a worker connects: its part of the tree."""

    base_urls: tuple[str, ...] = opt(
        ("wss://core.hedgetech.ir/data-engine/ime/live/data/websocket",),
        "WebSocket base URL; /contract/id or /contract/name is appended. Repeat it for a provider with several entry "
        "points: redundant copy k uses URL k mod count.", name="base-url", repeatable=True, url=True)
    kind: str = "id"  # "id" or "name": set from the contract source
    redundancy: int = opt(1, "Independent connections per contract group; the first copy of each message to arrive "
                          "is recorded, later copies become small receipts. 2 survives any single connection drop.",
                          int, min=1, max=8)
    dedupe_window_s: float = opt(2.0, "With --redundancy: seconds within which copies of one message are matched.",
                                 float, name="dedupe-window", min=0.01, max=600)
    max_contracts_per_connection: int | None = opt(
        None, "Split a shard's contracts over several connections of at most this many.", int, min=1)
    max_url_length: int = opt(4096, "Split contracts over several connections so that no URL is longer.", int,
                              min=256)
    max_message_bytes: int = opt(16 << 20, "Larger messages are recorded as an 'oversized' event instead.", int,
                                 min=1024)
    ping_interval_s: float = opt(15, "Ping when nothing arrived for this many seconds; no pong in time drops the "
                                 "connection.", float, name="ping-interval", min=0)
    idle_timeout_s: float = opt(0, "Reconnect after this many seconds without a message (0: off; IME is quiet "
                                "off-hours).", float, name="idle-timeout", min=0)
    receive_slice_us: int = opt(100, "CPU time slice (µs) the receive thread asks Linux ≥ 6.12 for, so it preempts "
                                "compression on wake-up; 0: the kernel's default.", int, min=0, max=100_000)
    writer_nice: int = opt(0, "Added to the compression thread's nice value, so that local bots waking on a busy "
                           "core run before it; the recording then yields to them (a starved writer pauses "
                           "reading).", int, min=0, max=19)
    ca_file: str | None = opt(None, "CA bundle for wss:// and https://.", exists=True)
    handshake_timeout_s: float = 10.0
    ping_timeout_s: float = 10.0
    probe_s: float = 2.0  # an upgrade still open after this long counts as accepted
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 30.0
    reconnect_jitter_s: float = 0.05  # after a connection that delivered data drops
    stagger_s: float = 0.5  # copy k first connects k × stagger_s after copy 0

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    @property
    def extra_base_urls(self) -> tuple[str, ...]:
        return self.base_urls[1:]

    def url_for_copy(self, copy: int) -> str:
        return self.base_urls[copy % len(self.base_urls)]


@dataclass(frozen=True, slots=True)
class StorageSettings(Section):
    """How a worker writes segments: its part of the tree, and the segment writer's defaults."""

    out_dir: Path = opt(Path("ime-data"), "Directory for segment files.", Path, name="out")
    flush_ms: float = opt(200, "Cut a frame when its oldest record is this old (the most a crash can lose).",
                          float, min=1)
    frame_bytes: int = opt(1024, "Cut a frame at this much raw data.", int, name="frame-kib", min=4, unit=KIB)
    rotate_bytes: int = opt(1024, "Seal and start a new file at this compressed size.", float, name="rotate-mb",
                            min=0.01, unit=MIB)
    rotate_seconds: float = opt(60, "Seal and start a new file on wall-clock multiples of this period (0: off).",
                                float, name="rotate-minutes", min=0, unit=MINUTES)
    level: int = opt(3, "zstd level.", int, min=-7, max=22)
    prefix: str = "ime"
    # Eight default frames. At full speed from a fast feeder the receive thread outruns compression and the backlog
    # sits at this limit; at 256 MiB a worker peaked at 351 MiB RSS (issue 15), far above DESIGN's 100 MB.
    max_backlog_bytes: int = 8 << 20
    fault_enospc_after_bytes: int | None = None  # test hook: pretend the disk fills up after this many bytes
    day_tz: str | None = "Asia/Tehran"  # segments go to OUT/YYYY-MM-DD/ by the date in this zone; None: flat


@dataclass(frozen=True, slots=True)
class DemoSettings(Section):
    on: bool = opt(False, "Start the built-in IME simulator on 127.0.0.1 and record from it.", bool, name="demo")
    contracts: int = opt(24, "With --demo: contracts the simulator lists.", int, name="demo-contracts", min=1,
                         max=10_000)
    rate: float = opt(2000, "With --demo: total messages/s the simulator sends.", float, name="demo-rate", min=0)


@dataclass(frozen=True, slots=True)
class LiveSettings(Section):
    """--relay / --publish: what the supervisor, the hub and every worker need to know about live outputs."""

    address: str = ""  # the hub's Unix socket (abstract namespace when it starts with NUL); set at the start
    kind: str = "id"  # "id" or "name": the endpoint being recorded
    contracts: tuple[str, ...] = ()
    shard: int = 0  # set per worker
    relay_host: str | None = opt(None, "Serve the live feed to local IME clients (both endpoints, real paths); host "
                                 "127.0.0.1 by default.", name="relay", metavar="[HOST:]PORT", parse=_relay)
    relay_port: int | None = None  # with relay_host, from --relay
    relay_token: str | None = opt(None, "Relay clients must send this Authorization token (prefer the "
                                  "IME_RELAY_TOKEN variable).", env="IME_RELAY_TOKEN", secret=True,
                                  parse=lambda token, _: token or None)
    relay_client_buffer: int = opt(4096, "A relay client with more than this much unread is cut (close code 1013); "
                                   "the relay never waits.", int, name="relay-client-kib", min=16, unit=KIB)
    nats_url: str | None = opt(None, "Publish every message to NATS JetStream (needs the 'nats' extra); "
                               "comma-separate several servers; a URL with user:password belongs in IME_NATS_URL "
                               "(arguments show in `ps`).", name="publish", metavar="nats://HOST:PORT",
                               env="IME_NATS_URL", url=True)
    nats_stream: str = opt("IME", "JetStream stream (created if missing).", parse=_stream_name)
    nats_max_age_s: float = opt("24h", "Stream retention when the recorder creates it: 3600, 30m, 24h, 7d.",
                                name="nats-max-age", parse=parse_duration)
    nats_duplicate_window_s: float = opt("2m", "Stream duplicate window when the recorder creates it (Nats-Msg-Id "
                                         "deduplication).", name="nats-duplicate-window", parse=parse_duration)
    nats_replicas: int = opt(1, "Stream replicas when the recorder creates it (3 on a 3-node cluster).", int,
                             min=1, max=5)
    nats_backlog: int = opt(1_000_000, "Messages kept for NATS while it is down or slow; older ones are dropped and "
                            "counted.", int, min=1000)
    worker_buffer_bytes: int = 8 << 20  # bytes a worker holds for the hub before it drops
    # The hub's: each shard's contracts (by shard number), so a gap in one shard's stream cuts only the relay
    # clients of its contracts. Empty: unknown, a gap cuts every client.
    shard_contracts: tuple[tuple[str, ...], ...] = ()

    def __repr__(self) -> str:  # never the token, nor a NATS URL's password
        relay = f"{self.relay_host}:{self.relay_port}" if self.relay_port is not None else "off"
        return f"LiveSettings(relay={relay}, nats={'on' if self.nats_url else 'off'}, shard={self.shard})"

    @property
    def enabled(self) -> bool:
        return self.relay_port is not None or self.nats_url is not None


@dataclass(frozen=True, slots=True)
class OpsSettings(Section):
    """Unattended operation (recorder/record/operations.py)."""

    retain_days: float | None = opt(None, "Remove sealed segments that were finished this many days ago or earlier.",
                                    float, min=0, min_open=True)
    retain_bytes: int | None = opt(None, "Remove the oldest sealed segments while the recording takes more than "
                                   "this many GB.", float, name="retain-gb", min=0, min_open=True, unit=GB)
    warn_free_bytes: int | None = opt(None, "Log a warning while the data disk has less free.", float,
                                      name="warn-free-gb", min=0, unit=GB)
    min_free_bytes: int | None = opt(None, "Seal every segment and stop (exit 1) when the data disk has less free "
                                     "than this.", float, name="min-free-gb", min=0, unit=GB)
    on_sealed: str | None = opt(None, "Command run for each sealed segment, its path appended as the last argument.")
    on_sealed_jobs: int = opt(2, "At most this many --on-sealed commands at once.", int, min=1, max=64)
    stall_alert_s: float | None = opt(None, "ERROR line, event and metric when no message arrives for this many "
                                      "seconds in a session.", float, name="stall-alert", min=0, min_open=True)
    # Parsed by recorder/record/sessions.py (checked before anything starts).
    sessions: str = opt("sat-wed 10:30-16:00", "Trading sessions in Asia/Tehran time for --stall-alert and the "
                        "ime_recorder_trading_session metric, e.g. 'sat-wed 09:00-17:00'.")
    notify: bool = opt(True, "Tell systemd (NOTIFY_SOCKET) when recording is ready and that the supervisor is alive.",
                       bool)
    scan_interval_s: float = 2.0
    hook_backoff_s: float = 2.0


def _zone(name: str, option: str) -> str:
    try:
        parse_tz(name)
    except UserError as exc:
        raise UserError(f"bad {option}: {exc}") from None
    return name.strip()


def _calendar(name: str, option: str) -> str:
    if name.strip().lower() not in CALENDARS:
        raise UserError(f"bad {option} {name!r}: give {' or '.join(CALENDARS)}")
    return name.strip().lower()


@dataclass(frozen=True, slots=True)
class LogSettings(Section):
    """What a person reads: log lines and the status table (their times in `tz`, dates in `calendar`)."""

    verbose: int = opt(0, "More log lines (-vv: debug).", int, count=True, short="-v")
    quiet: bool = opt(False, "Only warnings and errors.", bool, short="-q")
    tz: str = opt("UTC", TZ_SHOWN_HELP + " Log lines and the status table.", env=TZ_ENV, parse=_zone,
                  metavar="ZONE")
    calendar: str = opt(GREGORIAN, CALENDAR_SHOWN_HELP + " The status table (log lines stay Gregorian).",
                        env=CALENDAR_ENV, parse=_calendar, metavar="|".join(CALENDARS))


@dataclass(frozen=True, slots=True)
class Settings:
    """The tree: `ime-record`'s options in this order, section by section."""

    contracts: ContractSource = field(default_factory=ContractSource)
    run: RunOptions = field(default_factory=RunOptions)
    credentials: Credentials = field(default_factory=Credentials)
    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    live: LiveSettings = field(default_factory=LiveSettings)
    ops: OpsSettings = field(default_factory=OpsSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @classmethod
    def build(cls, **values: Any) -> Settings:
        """The tree from option values by parameter name (click's), e.g. Settings.build(frame_kib=64)."""
        return cls(**{name: section.build(**values) for name, section in SECTIONS.items()})


SECTIONS: dict[str, type[Section]] = {f.name: f.default_factory for f in fields(Settings)}  # type: ignore[misc]
OPTIONS = tuple(o for section in SECTIONS.values() for _, o in section.options())  # every option, in order
DEFAULTS = Settings()
