"""Settings: seed variable names, durations, clear errors naming the variable."""

from __future__ import annotations

import pytest

from orbitstream.errors import ConfigError
from orbitstream.pipelines.satellites import SatellitesSettings
from orbitstream.settings import Settings, load_settings, parse_duration


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in (
        "PORT",
        "BATCH_SIZE",
        "BATCH_TIMEOUT",
        "DATABASE_URL",
        "ANOMALY_THRESHOLD_BATTERY",
        "ORBITSTREAM_ACK_MODE",
        "ORBITSTREAM_DATA_DIR",
        "MAX_CONNECTIONS",
        "ORBITSTREAM_CONFIG",
        "CLICKHOUSE_URL",
        "CLICKHOUSE_USER",
        "CLICKHOUSE_DB",
        "ORBITSTREAM_POSTGRES_TIMESCALE",
        "ANOMALY_THRESHOLD_STORAGE",
        "ANOMALY_THRESHOLD_SIGNAL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))


def _sat(s: Settings) -> SatellitesSettings:
    return s.pipeline("satellites", SatellitesSettings)


def test_seed_defaults() -> None:
    s = load_settings()
    assert (s.port, s.engine.batch_size, s.engine.batch_timeout, s.postgres.max_connections) == (
        8080,
        1000,
        1.0,
        50,
    )
    sat = _sat(s)
    assert (sat.battery_threshold, sat.storage_threshold, sat.signal_threshold) == (
        10.0,
        95000.0,
        -100.0,
    )
    assert s.http.ack_mode == "memory" and s.store_kind == "chdb"


def test_seed_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("BATCH_SIZE", "5000")
    monkeypatch.setenv("BATCH_TIMEOUT", "250ms")
    monkeypatch.setenv("ANOMALY_THRESHOLD_BATTERY", "20")
    monkeypatch.setenv("ORBITSTREAM_ACK_MODE", "sink")
    s = load_settings()
    assert (
        s.port,
        s.engine.batch_size,
        s.engine.batch_timeout,
        _sat(s).battery_threshold,
        s.http.ack_mode,
    ) == (9000, 5000, 0.25, 20.0, "sink")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("BATCH_SIZE", "0"),
        ("BATCH_SIZE", "ten"),
        ("BATCH_TIMEOUT", "soon"),
        ("ANOMALY_THRESHOLD_BATTERY", "low"),
        ("ORBITSTREAM_ACK_MODE", "disk"),
        ("DATABASE_URL", "mysql://x"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        _sat(load_settings())
    assert var in str(info.value)
    assert info.value.setting == var
    assert "Value error" not in str(info.value)  # pydantic's prefix, not ours


def test_dotenv_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    Path(str(tmp_path), ".env").write_text("BATCH_SIZE=77\n")
    assert load_settings().engine.batch_size == 77


@pytest.mark.parametrize(
    ("text", "secs"),
    [("1s", 1.0), ("100ms", 0.1), ("1m30s", 90.0), ("2", 2.0), ("1.5s", 1.5), ("500us", 0.0005)],
)
def test_durations(text: str, secs: float) -> None:
    assert parse_duration(text) == pytest.approx(secs)


def test_every_section_reads_env_dotenv_and_toml(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    (d / ".env").write_text(
        "CLICKHOUSE_URL=http://ch.example:8123\nORBITSTREAM_POSTGRES_TIMESCALE=off\n"
        "CLICKHOUSE_USER=from-dotenv\n"
    )
    toml = d / "orbit.toml"
    toml.write_text(
        "port = 9999\n[engine]\nbatch_size = 4242\n[postgres]\npartitions_ahead_days = 9\n"
        'ledger_retention_days = 3\n[clickhouse]\nuser = "from-toml"\ndb = "tomldb"\n'
        '[http]\nheader_timeout_secs = "2s"\n[pipelines.satellites]\nbattery_threshold = 33\n'
    )
    monkeypatch.setenv("ORBITSTREAM_CONFIG", str(toml))
    monkeypatch.setenv("ORBITSTREAM_ENGINE__MAX_BUFFER_ROWS", "1234")  # the nested form
    s = load_settings()
    assert s.port == 9999 and s.engine.batch_size == 4242 and s.engine.max_buffer_rows == 1234
    assert s.clickhouse.url == "http://ch.example:8123"  # .env applies to stores too
    assert s.clickhouse.user == "from-dotenv"  # .env wins over the TOML file
    assert s.clickhouse.db == "tomldb"
    assert s.postgres.timescale == "off" and s.postgres.partitions_ahead_days == 9
    assert s.postgres.ledger_retention_days == 3
    assert s.http.header_timeout_secs == 2.0
    assert _sat(s).battery_threshold == 33
    monkeypatch.setenv("ANOMALY_THRESHOLD_BATTERY", "44")  # the environment wins over TOML
    assert _sat(load_settings()).battery_threshold == 44


def test_unknown_keys_in_a_section_are_refused(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    toml = Path(str(tmp_path)) / "bad.toml"
    toml.write_text("[postgres]\ntimescal = 'on'\n")
    monkeypatch.setenv("ORBITSTREAM_CONFIG", str(toml))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "timescal" in str(info.value)


def test_nested_setting_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBITSTREAM_POSTGRES_TIMESCALE", "maybe")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.setting == "ORBITSTREAM_POSTGRES_TIMESCALE"
    monkeypatch.delenv("ORBITSTREAM_POSTGRES_TIMESCALE")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pa/ss@h/db")
    monkeypatch.setenv("MAX_CONNECTIONS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.setting == "MAX_CONNECTIONS" and "pa/ss" not in str(info.value)


@pytest.mark.parametrize(
    "servers",
    [
        "127.0.0.1:9092",
        "a:1,b:65535",
        "broker",
        "[::1]:9092",
        "[::1]",
        "PLAINTEXT://k:9092",
        "sasl_ssl://k:9093",
    ],
)
def test_kafka_bootstrap_servers_that_are_addresses_are_taken(
    servers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    assert load_settings().kafka.servers() == servers


@pytest.mark.parametrize(
    ("servers", "why"),
    [
        ("127.0.0.1:abc", "has port 'abc'"),
        ("k:0", "has port '0'"),
        ("k:70000", "has port '70000'"),
        ("a:1,,b:2", "is empty"),
        (":9092", "has no host"),
        ("http://127.0.0.1:9092", "has the scheme 'http'"),
        ("host:1:2", "more than one ':'"),
        ("::1:9092", "in brackets"),
    ],
)
def test_a_bad_kafka_bootstrap_server_is_refused_naming_the_setting(
    servers: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    with pytest.raises(ConfigError) as err:
        load_settings().kafka.servers()
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(err.value) and why in str(err.value)


def test_the_postgres_write_timeout_reaches_the_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    from orbitstream.stores import build_stores

    monkeypatch.setenv("DATABASE_URL", "postgres://u@127.0.0.1:1/db")
    monkeypatch.setenv("ORBITSTREAM_POSTGRES_WRITE_TIMEOUT", "5s")
    (store,) = build_stores(load_settings())
    assert store.settings.write_timeout_secs == 5.0  # type: ignore[attr-defined]
    monkeypatch.setenv("ORBITSTREAM_POSTGRES_WRITE_TIMEOUT", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.setting == "ORBITSTREAM_POSTGRES_WRITE_TIMEOUT"


def test_the_health_check_interval_reaches_the_pipelines(monkeypatch: pytest.MonkeyPatch) -> None:
    from orbitstream.runtime import pipeline_limits

    assert pipeline_limits(load_settings().engine).health_check_secs == 5.0
    monkeypatch.setenv("ORBITSTREAM_HEALTH_CHECK_INTERVAL", "1s")
    assert pipeline_limits(load_settings().engine).health_check_secs == 1.0
    monkeypatch.setenv("ORBITSTREAM_HEALTH_CHECK_INTERVAL", "0s")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.setting == "ORBITSTREAM_HEALTH_CHECK_INTERVAL"
