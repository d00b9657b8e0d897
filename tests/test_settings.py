"""The settings tree (recorder/model/settings.py) is the one place an ime-record option and its default exist:
the click options, the config file's keys and kinds, --print-config, a reload's list of changes, the per-process
configs and the library defaults all follow it. Each test fails when an option or a default is written somewhere
else and drifts."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import click
import pytest
from click.core import ParameterSource

from recorder.cli.record import main
from recorder.errors import UserError
from recorder.feed.endpoints import DEFAULT_BASE_URL, regroup, split_contracts
from recorder.live.options import check_live
from recorder.live.relay import LiveSource
from recorder.model.settings import DEFAULTS, OPTIONS, LiveSettings, OpsSettings, Reload, Settings
from recorder.record.clioptions import effective_settings, setting_changes
from recorder.record.config import WorkerConfig
from recorder.record.demo import DemoSimulator
from recorder.record.hooks import HookRunner
from recorder.record.metrics import MetricsServer
from recorder.record.operations import check_ops
from recorder.segment.dedupe import DEFAULT_WINDOW_NS, Deduper
from recorder.segment.encoder import SegmentEncoder
from recorder.segment.writer import SegmentWriter
from recorder.sim.faults import FaultConfig

NOT_SETTINGS = {"config", "print_config", "version", "help"}  # options about the command, not the recording


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name not in NOT_SETTINGS}


def test_every_option_of_ime_record_is_a_field_of_the_tree_and_back():
    options = _options(main)
    assert list(options) == [o.param for o in OPTIONS]  # nothing added to main by hand, nothing missing
    for o in OPTIONS:
        click_option = options[o.param]
        assert f"--{o.name}" in click_option.opts
        assert click_option.default == o.default, o.name
        assert click_option.envvar == o.env and click_option.multiple == o.repeatable, o.name


def test_defaults_are_written_once_and_keep_their_values():
    # The click defaults, converted, are the tree's defaults: nothing is defaulted in two units.
    assert Settings.build(**{o.param: o.default for o in OPTIONS}) == DEFAULTS
    storage, connection, live = DEFAULTS.storage, DEFAULTS.connection, DEFAULTS.live
    assert (storage.frame_bytes, storage.rotate_bytes, storage.rotate_seconds) == (1 << 20, 1 << 30, 3600.0)
    assert (storage.flush_ms, storage.level, storage.max_backlog_bytes) == (200.0, 3, 8 << 20)
    assert (connection.dedupe_window_s, connection.max_url_length, connection.max_message_bytes) == (2.0, 4096,
                                                                                                      16 << 20)
    assert (live.relay_client_buffer, live.nats_max_age_s, live.nats_duplicate_window_s) == (4 << 20, 86400.0, 120.0)
    assert DEFAULTS.ops.sessions == "sat-wed 10:30-16:00" and DEFAULTS.run.status_interval_s == 30.0


def test_the_library_defaults_are_the_tree_defaults():
    writer = inspect.signature(SegmentWriter).parameters
    for name in ("prefix", "level", "frame_bytes", "flush_ms", "rotate_bytes", "rotate_seconds", "max_backlog_bytes"):
        assert writer[name].default == getattr(DEFAULTS.storage, name), name
    assert DEFAULT_WINDOW_NS == 2_000_000_000 == DEFAULTS.connection.dedupe_window_s * 1e9
    assert inspect.signature(Deduper).parameters["window_ns"].default == DEFAULT_WINDOW_NS
    assert DEFAULTS.connection.base_url == DEFAULT_BASE_URL
    for fn in (split_contracts, regroup):
        assert inspect.signature(fn).parameters["max_url_length"].default == DEFAULTS.connection.max_url_length
    assert inspect.signature(SegmentEncoder).parameters["level"].default == DEFAULTS.storage.level
    hooks = inspect.signature(HookRunner).parameters
    assert (hooks["jobs"].default, hooks["backoff_base_s"].default) == (DEFAULTS.ops.on_sealed_jobs,
                                                                        DEFAULTS.ops.hook_backoff_s)
    assert inspect.signature(MetricsServer).parameters["host"].default == DEFAULTS.run.metrics_host
    assert inspect.signature(LiveSource).parameters["max_client_buffer"].default == DEFAULTS.live.relay_client_buffer
    assert FaultConfig().repeat_after == DEFAULTS.connection.dedupe_window_s  # ime-sim repeats at the window's edge
    demo = inspect.signature(DemoSimulator).parameters
    assert (demo["contracts"].default, demo["rate"].default) == (DEFAULTS.demo.contracts, DEFAULTS.demo.rate)


def test_options_fill_fields_in_the_fields_units():
    s = Settings.build(frame_kib=64, rotate_mb=0.5, rotate_minutes=2.5, retain_gb=1.5, relay_client_kib=16,
                       nats_max_age="7d", nats_duplicate_window="90s", relay="[::1]:9000", base_url=["ws://a", "ws://b"],
                       relay_token="", flush_ms=50)
    assert (s.storage.frame_bytes, s.storage.rotate_bytes, s.storage.rotate_seconds) == (65536, 1 << 19, 150.0)
    assert s.ops.retain_bytes == 3 << 29 and isinstance(s.ops.retain_bytes, int)
    assert (s.live.relay_client_buffer, s.live.nats_max_age_s, s.live.nats_duplicate_window_s) == (16384, 604800.0,
                                                                                                    90.0)
    assert (s.live.relay_host, s.live.relay_port, s.live.relay_token, s.live.enabled) == ("::1", 9000, None, True)
    assert (s.connection.base_url, s.connection.extra_base_urls, s.connection.url_for_copy(3)) == ("ws://a",
                                                                                                   ("ws://b",), "ws://b")
    assert s.storage.flush_ms == 50.0 and not DEFAULTS.live.enabled


@pytest.mark.parametrize(("values", "needle"), [
    ({"relay": "host:port"}, "bad --relay 'host:port'"),
    ({"nats_max_age": "soon"}, "bad --nats-max-age 'soon'"),
    ({"nats_stream": "a.b"}, "bad --nats-stream"),
])
def test_values_an_option_refuses_are_one_line_naming_it(values, needle):
    with pytest.raises(UserError) as err:
        Settings.build(**values)
    assert needle in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2


def test_what_the_tree_cannot_check_is_checked_before_start_in_one_line():
    with pytest.raises(UserError, match="--warn-free-gb must not be below --min-free-gb") as err:
        check_ops(OpsSettings.build(warn_free_gb=1, min_free_gb=2))
    assert err.value.exit_code == 2
    with pytest.raises(UserError, match="--nats-duplicate-window cannot be longer than --nats-max-age"):
        check_live(LiveSettings.build(relay="0", nats_max_age="1m"))
    with pytest.raises(UserError, match="--sessions"):
        check_ops(OpsSettings.build(sessions="someday"))


def _sample(o, folder: Path) -> object:
    """A value of the option's kind that its click type accepts."""
    if o.exists:
        (folder / "ca.pem").write_text("x")
        return "ca.pem"
    if o.type is bool:
        return not o.default
    if o.type in (int, float):
        low = (o.min or 0) + (1 if o.min_open else 0)
        return low + 1 if o.max is None or low + 1 <= o.max else low
    return ["ws://h/a"] if o.repeatable else "rel/p" if o.type is Path else "x"


def test_the_config_file_takes_every_key_of_the_tree_with_its_kind_and_refuses_its_secrets(tmp_path):
    lines, expected = [], {}
    for o in OPTIONS:
        if o.secret:
            continue
        value = _sample(o, tmp_path)
        text = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        lines.append(f"{o.name} = {text}")
        expected[o.param] = value
    config = tmp_path / "rec.toml"
    config.write_text("\n".join(lines) + "\n")
    ctx = main.make_context("ime-record", ["--config", str(config)])
    for o in OPTIONS:
        if o.secret:
            assert ctx.get_parameter_source(o.param) is not ParameterSource.DEFAULT_MAP
            continue
        assert ctx.get_parameter_source(o.param) is ParameterSource.DEFAULT_MAP, o.name
        got, want = ctx.params[o.param], expected[o.param]
        if o.type is Path or o.exists:
            want = tmp_path / str(want)  # relative to the file, not to wherever the recorder starts
            got = Path(got)
        assert (list(got) if o.repeatable else got) == want, o.name
    for o in (o for o in OPTIONS if o.secret):
        config.write_text(f'{o.name} = "hunter2"\n')
        with pytest.raises(UserError) as err:
            main.make_context("ime-record", ["--config", str(config)], obj=_reloading())
        assert f"refusing '{o.name}' in clear" in str(err.value) and o.env in str(err.value)
        assert "hunter2" not in str(err.value)
    config.write_text("shards = 2.5\n")
    with pytest.raises(UserError, match="'shards' must be a whole number"):
        main.make_context("ime-record", ["--config", str(config)], obj=_reloading())


def _reloading() -> object:
    from recorder.record.clioptions import RELOADING

    return RELOADING


def test_print_config_lists_every_option_of_the_tree_in_its_order(monkeypatch):
    monkeypatch.setenv("IME_PASSWORD", "hunter2")
    ctx = main.make_context("ime-record", ["--shards", "3"])
    lines = list(effective_settings(ctx))
    keys = [line.lstrip("# ").split(" ", 1)[0] for line in lines[1:]]
    assert keys == [o.name for o in OPTIONS]
    assert "shards = 3  # command line" in lines and '# password = "***"  # environment; secrets are never printed' \
        in lines and "hunter2" not in "\n".join(lines)


def test_a_reload_applies_what_the_tree_says_and_masks_secrets():
    start = {o.param: o.default for o in OPTIONS}
    now = {**start, "shards": 3, "status_interval": 5.0, "ids_file": Path("ids.txt"), "relay_token": "s3cret"}
    changes = {c.option: c for c in setting_changes(start, now, contracts_reread=True)}
    assert set(changes) == {"shards", "status-interval", "ids-file", "relay-token"}
    assert not changes["shards"].applied and changes["status-interval"].applied and changes["ids-file"].applied
    assert not changes["relay-token"].applied and "s3cret" not in changes["relay-token"].new
    assert not {c.option: c for c in setting_changes(start, now, contracts_reread=False)}["ids-file"].applied
    # What a reload applies at once must reach the supervisor: Reread carries the status interval, and the contract
    # sources are applied shard by shard. Marking another option NOW needs Reread and the supervisor to carry it.
    assert {o.name for o in OPTIONS if o.reload is Reload.NOW} == {"status-interval"}
    assert {o.name for o in OPTIONS if o.reload is Reload.WITH_CONTRACTS} == {"ids-file", "names-file", "ids", "names"}


def test_the_worker_and_hub_configs_are_picklable_sections_that_never_show_secrets():
    s = Settings.build(token="eyJ.tok", password="pw", relay="0", relay_token="rt", publish="nats://u:np@h:4222")
    live = s.live
    cfg = WorkerConfig(0, 1, ("1001",), s.connection, s.storage, "run", token="eyJ.tok", live=live)
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back.live == live and back.storage is not s.storage
    shown = " ".join(repr(x) for x in (cfg, live, s.credentials, s))
    assert not any(secret in shown for secret in ("eyJ.tok", "pw'", "rt'", "np@"))
    assert OpsSettings.build(retain_gb=2, notify=False) == OpsSettings(retain_bytes=2 << 30, notify=False)
    assert isinstance(pickle.loads(pickle.dumps(LiveSettings())), LiveSettings)
