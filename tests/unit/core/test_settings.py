"""Settings: seed variable names, durations, clear errors naming the variable."""

from __future__ import annotations

import pytest

from orbitstream.errors import ConfigError
from orbitstream.settings import load_settings, parse_duration


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
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))


def test_seed_defaults() -> None:
    s = load_settings()
    assert (s.port, s.batch_size, s.batch_timeout, s.max_connections) == (8080, 1000, 1.0, 50)
    assert (
        s.anomaly_threshold_battery,
        s.anomaly_threshold_storage,
        s.anomaly_threshold_signal,
    ) == (10.0, 95000.0, -100.0)
    assert s.ack_mode == "memory" and s.store_kind == "chdb"


def test_seed_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("BATCH_SIZE", "5000")
    monkeypatch.setenv("BATCH_TIMEOUT", "250ms")
    monkeypatch.setenv("ANOMALY_THRESHOLD_BATTERY", "20")
    monkeypatch.setenv("ORBITSTREAM_ACK_MODE", "sink")
    s = load_settings()
    assert (s.port, s.batch_size, s.batch_timeout, s.anomaly_threshold_battery, s.ack_mode) == (
        9000,
        5000,
        0.25,
        20.0,
        "sink",
    )


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
        load_settings()
    assert var in str(info.value)
    assert info.value.setting == var


def test_dotenv_is_read(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    Path(str(tmp_path), ".env").write_text("BATCH_SIZE=77\n")
    assert load_settings().batch_size == 77


@pytest.mark.parametrize(
    ("text", "secs"),
    [("1s", 1.0), ("100ms", 0.1), ("1m30s", 90.0), ("2", 2.0), ("1.5s", 1.5), ("500us", 0.0005)],
)
def test_durations(text: str, secs: float) -> None:
    assert parse_duration(text) == pytest.approx(secs)
