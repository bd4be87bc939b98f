"""The starlink pipeline as registered: its spec, settings (the seed's variables) and the
errors naming the variable at fault."""

from __future__ import annotations

import pytest

from orbitstream.core import registry
from orbitstream.errors import ConfigError
from orbitstream.pipelines.starlink import StarlinkPipelineSettings
from orbitstream.runtime import plan_pipelines
from orbitstream.settings import load_settings

_VARS = (
    "CLIENT_ID",
    "CLIENT_SECRET",
    "BATCH_SIZE",
    "MAX_LINGER",
    "STARLINK_TOKEN_URL",
    "STARLINK_STREAM_URL",
    "STARLINK_RAW_ARCHIVE",
    "CLICKHOUSE_DB",
    "CLICKHOUSE_DATABASE",
    "ORBITSTREAM_STARLINK__NAMESPACE",
    "ORBITSTREAM_CONFIG",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))


def _own() -> StarlinkPipelineSettings:
    return load_settings().pipeline("starlink", StarlinkPipelineSettings)


def test_registered_with_its_source_and_namespace() -> None:
    spec = registry.pipeline("starlink")
    assert spec.sources == ("starlink",)
    assert registry.source_type("starlink").handler.endswith("StarlinkMapper")
    (plan,) = plan_pipelines(load_settings(), ["starlink"])
    assert plan.namespace == "starlink"
    assert [t.qualified_name for t in plan.tables] == [
        "starlink.telemetry",
        "starlink.alerts",
        "starlink.alert_events",
        "starlink.ip_allocations",
    ]


def test_clickhouse_db_sets_the_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_DB", "sl_prod")
    (plan,) = plan_pipelines(load_settings(), ["starlink"])
    assert plan.namespace == "sl_prod"
    monkeypatch.setenv("ORBITSTREAM_STARLINK__NAMESPACE", "own")
    (plan,) = plan_pipelines(load_settings(), ["starlink"])
    assert plan.namespace == "own"


def test_seed_variables_and_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    own = _own()
    assert own.token_url == "https://starlink.com/api/auth/connect/token"
    assert own.stream_url == "https://starlink.com/api/public/v2/telemetry/stream"
    assert (own.batch_size, own.max_linger_ms) == (1000, 15000)
    monkeypatch.setenv("CLIENT_ID", "abc123")
    monkeypatch.setenv("CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("BATCH_SIZE", "500")
    monkeypatch.setenv("MAX_LINGER", "100")
    monkeypatch.setenv("STARLINK_STREAM_URL", "http://127.0.0.1:9/stream")
    client = _own().client_settings()
    assert (client.client_id, client.batch_size, client.max_linger_ms) == ("abc123", 500, 100)
    assert client.client_secret.get_secret_value() == "s3cret"
    assert client.stream_url == "http://127.0.0.1:9/stream"
    assert client.request_body() == b'{"batchSize":500,"maxLingerMs":100}'


@pytest.mark.parametrize(
    ("var", "value", "shown"),
    [
        ("BATCH_SIZE", "65001", "BATCH_SIZE='65001': Input should be less than or equal to"),
        ("BATCH_SIZE", "0", "BATCH_SIZE='0'"),
        ("CLIENT_ID", "", "CLIENT_ID='': must not be empty"),
        ("STARLINK_TOKEN_URL", "starlink.com/token", "starlink.com/token"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, shown: str
) -> None:
    monkeypatch.setenv("CLIENT_ID", "abc123")
    monkeypatch.setenv("CLIENT_SECRET", "s3cret")
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        _own().client_settings()
    assert err.value.setting == var
    assert var in str(err.value) and shown in str(err.value)
    assert "s3cret" not in str(err.value)


def test_missing_secret_is_named_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_ID", "abc123")
    with pytest.raises(ConfigError, match=r"CLIENT_SECRET=\(not set\): must not be empty$"):
        _own().client_settings()
    monkeypatch.setenv("CLIENT_SECRET", "")
    with pytest.raises(ConfigError, match=r"CLIENT_SECRET='': must not be empty$"):
        _own().client_settings()
    monkeypatch.delenv("CLIENT_ID")
    with pytest.raises(
        ConfigError,
        match=r"CLIENT_ID=\(not set\): must not be empty; CLIENT_SECRET='': must not be empty$",
    ):
        _own().client_settings()


def test_every_bad_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("BATCH_SIZE", "70000")
    monkeypatch.setenv("STARLINK_TOKEN_URL", "starlink.com/token")
    with pytest.raises(ConfigError) as err:
        _own().client_settings()
    text = str(err.value)
    for part in (
        "CLIENT_ID=(not set): must not be empty",
        "BATCH_SIZE='70000': Input should be less than or equal to 65000",
        "STARLINK_TOKEN_URL='starlink.com/token'",
    ):
        assert part in text
    assert err.value.setting in ("CLIENT_ID", "BATCH_SIZE", "STARLINK_TOKEN_URL")
    assert "s3cret" not in text


def test_max_linger_out_of_range_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_LINGER", "65001")
    with pytest.raises(ConfigError) as err:
        _own()
    assert err.value.setting == "MAX_LINGER"


def test_an_engine_batch_size_above_65000_does_not_stop_other_pipelines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCH_SIZE", "100000")
    plans = plan_pipelines(load_settings())  # every registered pipeline, starlink included
    assert "starlink" in [p.name for p in plans]
