"""Typed settings, read from the environment (seed names kept), ``.env`` and a TOML file.

Seed variables keep their names and meaning: ``PORT``, ``DATABASE_URL``, ``BATCH_SIZE``,
``BATCH_TIMEOUT`` (Go-style duration: ``1s``, ``100ms``), ``MAX_CONNECTIONS`` and
``ANOMALY_THRESHOLD_{BATTERY,STORAGE,SIGNAL}``. Everything new is ``ORBITSTREAM_*``.
A TOML file named by ``ORBITSTREAM_CONFIG`` may set any field by its field name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orbitstream.errors import ConfigError

__all__ = ["AckMode", "Settings", "default_data_dir", "load_settings", "parse_duration"]

AckMode = Literal["memory", "sink"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_UNIT_SECS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_duration(value: object) -> float:
    """Parse ``1s``, ``100ms``, ``1.5``, ``2m`` (Go ``time.Duration`` style) into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 1s or 100ms")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 1s or 100ms")
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)", value.strip())
    if parts and "".join(n + u for n, u in parts) == value.strip():
        for number, unit in parts:
            total += float(number) * _UNIT_SECS[unit]
        return total
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"invalid duration {value!r}: use e.g. 1s, 250ms, 1m30s")
    return float(match.group(1)) * _UNIT_SECS[match.group(2) or "s"]


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/orbitstream`` (``~/.local/share/orbitstream``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "orbitstream"


def _env(*names: str) -> Any:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every setting of the service, one typed model."""

    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    port: int = Field(8080, ge=1, le=65535, validation_alias=_env("PORT", "port"))
    host: str = Field("0.0.0.0", validation_alias=_env("ORBITSTREAM_HOST", "host"))
    database_url: str = Field("", validation_alias=_env("DATABASE_URL", "database_url"))
    data_dir: Path = Field(
        default_factory=default_data_dir,
        validation_alias=_env("ORBITSTREAM_DATA_DIR", "data_dir"),
    )
    batch_size: int = Field(
        1000, ge=1, le=1_000_000, validation_alias=_env("BATCH_SIZE", "batch_size")
    )
    batch_timeout: float = Field(
        1.0, gt=0, le=3600, validation_alias=_env("BATCH_TIMEOUT", "batch_timeout")
    )
    max_connections: int = Field(
        50, ge=1, le=10_000, validation_alias=_env("MAX_CONNECTIONS", "max_connections")
    )
    anomaly_threshold_battery: float = Field(
        10.0, validation_alias=_env("ANOMALY_THRESHOLD_BATTERY", "anomaly_threshold_battery")
    )
    anomaly_threshold_storage: float = Field(
        95000.0, validation_alias=_env("ANOMALY_THRESHOLD_STORAGE", "anomaly_threshold_storage")
    )
    anomaly_threshold_signal: float = Field(
        -100.0, validation_alias=_env("ANOMALY_THRESHOLD_SIGNAL", "anomaly_threshold_signal")
    )
    ack_mode: AckMode = Field("memory", validation_alias=_env("ORBITSTREAM_ACK_MODE", "ack_mode"))
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        validation_alias=_env("ORBITSTREAM_MAX_BODY_BYTES", "max_body_bytes"),
    )
    ndjson_max_body_bytes: int = Field(
        1 << 30,
        ge=1024,
        validation_alias=_env("ORBITSTREAM_NDJSON_MAX_BODY_BYTES", "ndjson_max_body_bytes"),
    )
    ndjson_max_line_bytes: int = Field(
        64 * 1024,
        ge=256,
        validation_alias=_env("ORBITSTREAM_NDJSON_MAX_LINE_BYTES", "ndjson_max_line_bytes"),
    )
    http_header_timeout_secs: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("ORBITSTREAM_HTTP_HEADER_TIMEOUT", "http_header_timeout_secs"),
    )
    http_body_timeout_secs: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("ORBITSTREAM_HTTP_BODY_TIMEOUT", "http_body_timeout_secs"),
    )
    http_keepalive_timeout_secs: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("ORBITSTREAM_HTTP_KEEPALIVE_TIMEOUT", "http_keepalive_timeout_secs"),
    )
    http_send_timeout_secs: float = Field(
        60.0,
        gt=0,
        validation_alias=_env("ORBITSTREAM_HTTP_SEND_TIMEOUT", "http_send_timeout_secs"),
    )
    http_max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        validation_alias=_env("ORBITSTREAM_HTTP_MAX_HEADER_BYTES", "http_max_header_bytes"),
    )
    http_max_url_bytes: int = Field(
        8 * 1024,
        ge=256,
        le=16 * 1024 * 1024,
        validation_alias=_env("ORBITSTREAM_HTTP_MAX_URL_BYTES", "http_max_url_bytes"),
    )
    http_max_connections: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        validation_alias=_env("ORBITSTREAM_HTTP_MAX_CONNECTIONS", "http_max_connections"),
    )
    http_write_buffer_bytes: int = Field(
        256 * 1024,
        ge=4096,
        validation_alias=_env("ORBITSTREAM_HTTP_WRITE_BUFFER_BYTES", "http_write_buffer_bytes"),
    )
    timestamp_max_ahead_secs: float = Field(
        3600.0,
        ge=0,
        validation_alias=_env("ORBITSTREAM_TIMESTAMP_MAX_AHEAD", "timestamp_max_ahead_secs"),
        description="How far ahead of the receive time a point's timestamp may be.",
    )
    timestamp_max_age_secs: float | None = Field(
        None,
        ge=0,
        validation_alias=_env("ORBITSTREAM_TIMESTAMP_MAX_AGE", "timestamp_max_age_secs"),
        description="How far behind the receive time a point's timestamp may be "
        "(default: the retention, ORBITSTREAM_RETENTION_DAYS).",
    )
    max_buffer_rows: int = Field(
        2_000_000, ge=1, validation_alias=_env("ORBITSTREAM_MAX_BUFFER_ROWS", "max_buffer_rows")
    )
    max_buffer_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        validation_alias=_env("ORBITSTREAM_MAX_BUFFER_BYTES", "max_buffer_bytes"),
    )
    retention_days: int = Field(
        30, ge=1, le=36500, validation_alias=_env("ORBITSTREAM_RETENTION_DAYS", "retention_days")
    )
    rollup_retention_days: int = Field(
        365,
        ge=1,
        le=36500,
        validation_alias=_env("ORBITSTREAM_ROLLUP_RETENTION_DAYS", "rollup_retention_days"),
    )
    retry_max_backoff_secs: float = Field(
        30.0, gt=0, validation_alias=_env("ORBITSTREAM_RETRY_MAX_BACKOFF", "retry_max_backoff_secs")
    )
    deployment_error_retry_secs: float = Field(
        300.0,
        gt=0,
        validation_alias=_env("ORBITSTREAM_DEPLOYMENT_ERROR_RETRY", "deployment_error_retry_secs"),
    )
    start_timeout_secs: float = Field(
        60.0, gt=0, validation_alias=_env("ORBITSTREAM_START_TIMEOUT", "start_timeout_secs")
    )
    shutdown_timeout_secs: float = Field(
        30.0, gt=0, validation_alias=_env("ORBITSTREAM_SHUTDOWN_TIMEOUT", "shutdown_timeout_secs")
    )
    query_allow_remote: bool = Field(
        False, validation_alias=_env("ORBITSTREAM_QUERY_ALLOW_REMOTE", "query_allow_remote")
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        validation_alias=_env("ORBITSTREAM_ALLOWED_HOSTS", "allowed_hosts"),
        description="Host names (besides IP addresses and localhost) the query endpoint "
        "answers under; comma-separated.",
    )
    query_timeout_secs: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("ORBITSTREAM_QUERY_TIMEOUT", "query_timeout_secs"),
    )
    query_database_url: str = Field(
        "",
        validation_alias=_env("ORBITSTREAM_QUERY_DATABASE_URL", "query_database_url"),
        description="PostgreSQL: a read-only login for users' queries (default: a role the "
        "service creates).",
    )
    sinks: str = Field(
        "",
        validation_alias=_env("ORBITSTREAM_SINKS", "sinks"),
        description="Comma list of sinks (chdb, postgres, clickhouse); default: the DATABASE_URL "
        "store, plus clickhouse when CLICKHOUSE_URL/CLICKHOUSE_HOST is set.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("ORBITSTREAM_LOG_LEVEL", "log_level")
    )
    log_format: Literal["json", "text"] = Field(
        "json", validation_alias=_env("ORBITSTREAM_LOG_FORMAT", "log_format")
    )

    @field_validator(
        "batch_timeout",
        "shutdown_timeout_secs",
        "retry_max_backoff_secs",
        "deployment_error_retry_secs",
        "start_timeout_secs",
        "http_header_timeout_secs",
        "http_body_timeout_secs",
        "http_keepalive_timeout_secs",
        "http_send_timeout_secs",
        "timestamp_max_ahead_secs",
        "timestamp_max_age_secs",
        "query_timeout_secs",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> float | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse_duration(value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(h.strip().lower() for h in value.split(",") if h.strip())
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return default_data_dir()
            return Path(value).expanduser()
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        toml = os.environ.get("ORBITSTREAM_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        bad = [n for n in names if n not in ("chdb", "postgres", "clickhouse")]
        if bad:
            raise ValueError(f"unknown sink {bad[0]!r}: use chdb, postgres or clickhouse")
        if len(set(names)) != len(names):
            raise ValueError("a sink is listed twice")
        return ",".join(names)

    @property
    def timestamp_max_age(self) -> float:
        """Seconds a timestamp may lie behind the receive time (default: the retention)."""
        if self.timestamp_max_age_secs is not None:
            return self.timestamp_max_age_secs
        return self.retention_days * 86400.0

    @property
    def store_kind(self) -> str:
        """``chdb`` (embedded, empty DATABASE_URL), ``postgres`` or ``clickhouse``."""
        url = self.database_url.strip().lower()
        if not url or url.startswith("chdb:"):
            return "chdb"
        if url.startswith(("postgres://", "postgresql://")):
            return "postgres"
        if url.startswith(("clickhouse://", "clickhouses://", "http://", "https://")):
            return "clickhouse"
        raise ConfigError(
            "DATABASE_URL must be empty (embedded store), postgres://… or clickhouse://…",
            setting="DATABASE_URL",
        )


def _setting_name(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    key = str(loc[0])
    field = Settings.model_fields.get(key)
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        first = field.validation_alias.choices[0]
        return str(first)
    return key


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings`; a bad value raises :class:`ConfigError` naming the variable."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**clean)
    except ValidationError as exc:
        messages = []
        first: str | None = None
        for err in exc.errors():
            name = _setting_name(tuple(err["loc"]))
            first = first or name
            messages.append(f"{name}={err.get('input')!r}: {err['msg']}")
        raise ConfigError("invalid setting " + "; ".join(messages), setting=first) from exc
    _ = settings.store_kind
    return settings
