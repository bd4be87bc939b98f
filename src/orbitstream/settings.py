"""Typed settings: one model, a section per component, read from the environment (the
seeds' variable names kept), ``.env`` and a TOML file.

Every field can be set four ways, the first found winning: a command-line flag (for the
few that have one), the environment, ``.env`` in the working directory, the TOML file
named by ``ORBITSTREAM_CONFIG``. In the environment and ``.env`` a field answers to its
flat names (``PORT``, ``BATCH_SIZE``, ``CLICKHOUSE_URL``, ``ORBITSTREAM_HTTP_HEADER_TIMEOUT``
…: see each field's ``validation_alias``) and to ``ORBITSTREAM_<SECTION>__<FIELD>``; in
TOML, by section and field name::

    port = 8080
    [engine]
    batch_size = 5000
    [clickhouse]
    url = "http://clickhouse:8123"
    [postgres]
    timescale = "off"
    [pipelines.satellites]
    battery_threshold = 15

A pipeline's own settings model (its thresholds, topics, namespace…) is read the same
way by :meth:`Settings.pipeline`, from ``[pipelines.<name>]``, its flat names and
``ORBITSTREAM_<NAME>__<FIELD>``. Durations are Go-style (``1s``, ``250ms``, ``1h30m``,
``7d``). Any invalid value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orbitstream.errors import ConfigError
from orbitstream.redaction import redact_url

__all__ = [
    "AckMode",
    "ClickHouseSection",
    "EngineSettings",
    "HttpSettings",
    "KafkaSection",
    "PostgresSection",
    "QuerySettings",
    "Section",
    "Settings",
    "default_data_dir",
    "env",
    "load_settings",
    "parse_duration",
    "read_section",
]

AckMode = Literal["memory", "sink"]
M = TypeVar("M", bound=BaseModel)

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
_SECRET_WORDS = ("password", "secret", "token", "database_url", "dsn", "key")


def parse_duration(value: object) -> float:
    """Parse ``1s``, ``100ms``, ``1.5``, ``2m``, ``7d`` (Go ``time.Duration`` style) into
    seconds."""
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


def _duration_or_none(value: object) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_duration(value)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/orbitstream`` (``~/.local/share/orbitstream``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "orbitstream"


def env(*names: str) -> Any:
    """The flat environment names of a field (the first is the one errors name)."""
    return AliasChoices(*names)


def _secretish(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


Duration = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    """Base of every settings section: frozen, unknown keys refused (a TOML typo is an
    error naming it), settable by field name or any flat environment name."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )


# -- sections ---------------------------------------------------------------------------


class EngineSettings(Section):
    """Batching, buffering, retries and the accepted time window (every pipeline)."""

    batch_size: int = Field(1000, ge=1, le=1_000_000, validation_alias=env("BATCH_SIZE"))
    batch_timeout: float = Field(1.0, gt=0, le=3600, validation_alias=env("BATCH_TIMEOUT"))
    max_buffer_rows: int = Field(
        2_000_000, ge=1, validation_alias=env("ORBITSTREAM_MAX_BUFFER_ROWS")
    )
    max_buffer_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, validation_alias=env("ORBITSTREAM_MAX_BUFFER_BYTES")
    )
    retry_max_backoff_secs: float = Field(
        30.0, gt=0, validation_alias=env("ORBITSTREAM_RETRY_MAX_BACKOFF")
    )
    deployment_error_retry_secs: float = Field(
        300.0, gt=0, validation_alias=env("ORBITSTREAM_DEPLOYMENT_ERROR_RETRY")
    )
    max_merge_rows: int = Field(
        50_000,
        ge=1,
        validation_alias=env("ORBITSTREAM_MAX_MERGE_ROWS"),
        description="Batches queued for a store that falls behind are written as one insert "
        "of up to this many rows (never below BATCH_SIZE; BATCH_SIZE writes every batch "
        "as it was cut).",
    )
    health_check_secs: float = Field(
        5.0,
        gt=0,
        le=3600,
        validation_alias=env("ORBITSTREAM_HEALTH_CHECK_INTERVAL"),
        description="How often an idle store is pinged, so /health notices one that went "
        "down (or came back) while nothing was written.",
    )
    start_timeout_secs: float = Field(60.0, gt=0, validation_alias=env("ORBITSTREAM_START_TIMEOUT"))
    shutdown_timeout_secs: float = Field(
        30.0, gt=0, validation_alias=env("ORBITSTREAM_SHUTDOWN_TIMEOUT")
    )
    timestamp_max_ahead_secs: float = Field(
        3600.0,
        ge=0,
        validation_alias=env("ORBITSTREAM_TIMESTAMP_MAX_AHEAD"),
        description="How far ahead of the receive time a timestamp may be.",
    )
    timestamp_max_age_secs: float | None = Field(
        None,
        ge=0,
        validation_alias=env("ORBITSTREAM_TIMESTAMP_MAX_AGE"),
        description="How far behind the receive time a timestamp may be "
        "(default: the retention, ORBITSTREAM_RETENTION_DAYS).",
    )

    @field_validator(
        "batch_timeout",
        "retry_max_backoff_secs",
        "deployment_error_retry_secs",
        "health_check_secs",
        "start_timeout_secs",
        "shutdown_timeout_secs",
        "timestamp_max_ahead_secs",
        "timestamp_max_age_secs",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> float | None:
        return _duration_or_none(value)


class HttpSettings(Section):
    """The HTTP server (docs/security.md lists every limit) and the HTTP push source."""

    ack_mode: AckMode = Field("memory", validation_alias=env("ORBITSTREAM_ACK_MODE"))
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, validation_alias=env("ORBITSTREAM_MAX_BODY_BYTES")
    )
    ndjson_max_body_bytes: int = Field(
        1 << 30, ge=1024, validation_alias=env("ORBITSTREAM_NDJSON_MAX_BODY_BYTES")
    )
    ndjson_max_line_bytes: int = Field(
        64 * 1024, ge=256, validation_alias=env("ORBITSTREAM_NDJSON_MAX_LINE_BYTES")
    )
    header_timeout_secs: float = Field(
        10.0, gt=0, validation_alias=env("ORBITSTREAM_HTTP_HEADER_TIMEOUT")
    )
    body_timeout_secs: float = Field(
        30.0, gt=0, validation_alias=env("ORBITSTREAM_HTTP_BODY_TIMEOUT")
    )
    keepalive_timeout_secs: float = Field(
        30.0, gt=0, validation_alias=env("ORBITSTREAM_HTTP_KEEPALIVE_TIMEOUT")
    )
    send_timeout_secs: float = Field(
        60.0, gt=0, validation_alias=env("ORBITSTREAM_HTTP_SEND_TIMEOUT")
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        validation_alias=env("ORBITSTREAM_HTTP_MAX_HEADER_BYTES"),
    )
    max_url_bytes: int = Field(
        8 * 1024,
        ge=256,
        le=16 * 1024 * 1024,
        validation_alias=env("ORBITSTREAM_HTTP_MAX_URL_BYTES"),
    )
    max_connections: int = Field(
        1024, ge=1, le=1_000_000, validation_alias=env("ORBITSTREAM_HTTP_MAX_CONNECTIONS")
    )
    write_buffer_bytes: int = Field(
        256 * 1024, ge=4096, validation_alias=env("ORBITSTREAM_HTTP_WRITE_BUFFER_BYTES")
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        validation_alias=env("ORBITSTREAM_ALLOWED_HOSTS"),
        description="Host names (besides IP addresses and localhost) the query endpoint "
        "answers under; comma-separated.",
    )
    query_allow_remote: bool = Field(False, validation_alias=env("ORBITSTREAM_QUERY_ALLOW_REMOTE"))

    @field_validator(
        "header_timeout_secs",
        "body_timeout_secs",
        "keepalive_timeout_secs",
        "send_timeout_secs",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> float | None:
        return _duration_or_none(value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(h.strip().lower() for h in value.split(",") if h.strip())
        return value


class QuerySettings(Section):
    """Read queries: the dashboard's and users' (``/api/query``, ``orbitstream query``)."""

    timeout_secs: float = Field(30.0, gt=0, validation_alias=env("ORBITSTREAM_QUERY_TIMEOUT"))
    database_url: str = Field(
        "",
        validation_alias=env("ORBITSTREAM_QUERY_DATABASE_URL"),
        description="PostgreSQL: a read-only login for users' queries (default: a role "
        "the service creates).",
    )
    role: str = Field(
        "orbitstream_reader",
        min_length=1,
        max_length=63,
        validation_alias=env("ORBITSTREAM_QUERY_ROLE"),
        description="PostgreSQL: the read-only role the service creates for users' queries.",
    )

    @field_validator("timeout_secs", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float | None:
        return _duration_or_none(value)


class PostgresSection(Section):
    """The PostgreSQL / TimescaleDB store (``DATABASE_URL=postgres://…``)."""

    max_connections: int = Field(50, ge=1, le=10_000, validation_alias=env("MAX_CONNECTIONS"))
    min_connections: int = Field(
        1, ge=0, le=10_000, validation_alias=env("ORBITSTREAM_POSTGRES_MIN_CONNECTIONS")
    )
    timescale: Literal["auto", "on", "off"] = Field(
        "auto",
        validation_alias=env("ORBITSTREAM_POSTGRES_TIMESCALE"),
        description="auto: TimescaleDB when the server offers it; on: require it; off: never.",
    )
    partitions_ahead_days: int = Field(
        3, ge=0, le=366, validation_alias=env("ORBITSTREAM_POSTGRES_PARTITIONS_AHEAD")
    )
    ledger_retention_days: int = Field(
        7, ge=1, le=36500, validation_alias=env("ORBITSTREAM_POSTGRES_LEDGER_RETENTION")
    )
    connect_timeout_secs: float = Field(
        10.0, gt=0, validation_alias=env("ORBITSTREAM_POSTGRES_CONNECT_TIMEOUT")
    )
    maintenance_lock_timeout_secs: float = Field(
        5.0, gt=0, validation_alias=env("ORBITSTREAM_POSTGRES_LOCK_TIMEOUT")
    )
    write_timeout_secs: float = Field(
        60.0,
        gt=0,
        validation_alias=env("ORBITSTREAM_POSTGRES_WRITE_TIMEOUT"),
        description="The longest one batch's write may take; past it the connection is "
        "closed and the write retried (a server that stopped answering).",
    )
    rollup_refresh_secs: float = Field(
        5.0,
        gt=0,
        le=3600,
        validation_alias=env("ORBITSTREAM_POSTGRES_ROLLUP_REFRESH"),
        description="Plain layout: how often the rollups' closed buckets are materialized "
        "(until then the rollup view aggregates their raw rows when read, late rows "
        "included, so it is exact at every moment).",
    )

    @field_validator(
        "connect_timeout_secs",
        "maintenance_lock_timeout_secs",
        "write_timeout_secs",
        "rollup_refresh_secs",
        "ledger_retention_days",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object, info: Any) -> object:
        if info.field_name == "ledger_retention_days":
            if isinstance(value, str) and value.strip().endswith("d"):
                return int(parse_duration(value) // 86400)
            return value
        return _duration_or_none(value)


class ClickHouseSection(Section):
    """The ClickHouse server store: ``DATABASE_URL=clickhouse://…`` or these variables
    (parsed by :meth:`~orbitstream.sinks.clickhouse.ClickHouseSettings.from_env`)."""

    url: str = Field("", validation_alias=env("CLICKHOUSE_URL"))
    host: str = Field("", validation_alias=env("CLICKHOUSE_HOST"))
    port: str = Field("", validation_alias=env("CLICKHOUSE_PORT"))
    user: str = Field("", validation_alias=env("CLICKHOUSE_USER"))
    password: SecretStr | None = Field(None, validation_alias=env("CLICKHOUSE_PASSWORD"))
    db: str = Field("", validation_alias=env("CLICKHOUSE_DB"))
    database: str = Field("", validation_alias=env("CLICKHOUSE_DATABASE"))
    cluster: str = Field("", validation_alias=env("ORBITSTREAM_CLICKHOUSE_CLUSTER"))
    replicated: str = Field("", validation_alias=env("ORBITSTREAM_CLICKHOUSE_REPLICATED"))
    distributed: str = Field("", validation_alias=env("ORBITSTREAM_CLICKHOUSE_DISTRIBUTED"))

    @field_validator("port", "replicated", "distributed", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        return value

    def as_environ(self) -> dict[str, str]:
        """The section in the seeds' variable names (what the ClickHouse settings parse)."""
        out = {
            "CLICKHOUSE_URL": self.url,
            "CLICKHOUSE_HOST": self.host,
            "CLICKHOUSE_PORT": self.port,
            "CLICKHOUSE_USER": self.user,
            "CLICKHOUSE_DB": self.db,
            "CLICKHOUSE_DATABASE": self.database,
            "ORBITSTREAM_CLICKHOUSE_CLUSTER": self.cluster,
            "ORBITSTREAM_CLICKHOUSE_REPLICATED": self.replicated,
            "ORBITSTREAM_CLICKHOUSE_DISTRIBUTED": self.distributed,
        }
        if self.password is not None:
            out["CLICKHOUSE_PASSWORD"] = self.password.get_secret_value()
        return {k: v for k, v in out.items() if v != "" or k == "CLICKHOUSE_PASSWORD"}

    @property
    def configured(self) -> bool:
        return bool(self.url.strip() or self.host.strip())


class KafkaSection(Section):
    """The Kafka brokers and consumer tuning every Kafka source and sink of the process
    shares (topics and groups are each pipeline's settings)."""

    bootstrap_servers: str = Field(
        "", validation_alias=env("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP")
    )
    session_timeout_ms: int = Field(
        45_000, ge=1000, validation_alias=env("ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS")
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", validation_alias=env("KAFKA_AUTO_OFFSET_RESET")
    )
    chunk_messages: int = Field(
        50_000, ge=1, validation_alias=env("ORBITSTREAM_KAFKA_CHUNK_MESSAGES")
    )
    linger_secs: float = Field(0.5, gt=0, validation_alias=env("ORBITSTREAM_KAFKA_LINGER"))
    revoke_timeout_secs: float = Field(
        30.0, ge=0, validation_alias=env("ORBITSTREAM_KAFKA_REVOKE_TIMEOUT")
    )
    topic_partitions: int = Field(
        4,
        ge=1,
        validation_alias=env("ORBITSTREAM_KAFKA_TOPIC_PARTITIONS"),
        description="Partitions of the topics the service creates when missing.",
    )

    @field_validator("linger_secs", "revoke_timeout_secs", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float | None:
        return _duration_or_none(value)

    def servers(self, setting: str = "KAFKA_BOOTSTRAP_SERVERS") -> str:
        """The bootstrap servers; :raises ConfigError: none configured."""
        if not self.bootstrap_servers.strip():
            raise ConfigError(
                "Kafka needs KAFKA_BOOTSTRAP_SERVERS (or KAFKA_BOOTSTRAP) = host:port[,host:port]",
                setting=setting,
            )
        servers = self.bootstrap_servers.strip()
        for entry in servers.split(","):
            problem = _broker_problem(entry.strip())
            if problem is not None:
                raise ConfigError(
                    f"KAFKA_BOOTSTRAP_SERVERS (or KAFKA_BOOTSTRAP): {entry.strip()!r} {problem}; "
                    "expected host:port[,host:port]",
                    setting=setting,
                )
        return servers


#: librdkafka's listener schemes (security protocols) a bootstrap address may carry.
_BROKER_SCHEMES = frozenset({"plaintext", "ssl", "sasl_plaintext", "sasl_ssl"})


def _broker_problem(entry: str) -> str | None:
    """Why ``entry`` (``host``, ``host:port``, ``[v6]:port``, optionally ``scheme://``) is
    not a broker address, or None."""
    scheme, sep, address = entry.rpartition("://")
    if sep and scheme.lower() not in _BROKER_SCHEMES:
        return (
            f"has the scheme {scheme!r}: a broker is host:port, optionally with one of "
            + ", ".join(f"{s.upper()}://" for s in sorted(_BROKER_SCHEMES))
        )
    if not address:
        return "is empty"
    host, sep, port = address.rpartition(":")
    if not sep or (address.startswith("[") and not host.endswith("]")):
        return None  # a host alone: the default port
    if not host or host == "[]":
        return "has no host"
    if ":" in host and not host.startswith("["):
        return "has more than one ':' (an IPv6 address goes in brackets: [::1]:9092)"
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"has port {port!r}, not a number from 1 to 65535"
    return None


# -- the root ---------------------------------------------------------------------------


class Settings(BaseSettings):
    """Every setting of the service: the process, the stores, and a section per component."""

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, validate_by_name=True, validate_by_alias=True
    )

    port: int = Field(8080, ge=1, le=65535, validation_alias=env("PORT", "port"))
    host: str = Field("0.0.0.0", validation_alias=env("ORBITSTREAM_HOST", "host"))
    data_dir: Path = Field(
        default_factory=default_data_dir, validation_alias=env("ORBITSTREAM_DATA_DIR", "data_dir")
    )
    database_url: str = Field("", validation_alias=env("DATABASE_URL", "database_url"))
    sinks: str = Field(
        "",
        validation_alias=env("ORBITSTREAM_SINKS", "sinks"),
        description="Comma list of stores (chdb, postgres, clickhouse); default: the "
        "DATABASE_URL store, plus clickhouse when CLICKHOUSE_URL/CLICKHOUSE_HOST is set.",
    )
    retention_days: int = Field(
        30, ge=1, le=36500, validation_alias=env("ORBITSTREAM_RETENTION_DAYS", "retention_days")
    )
    rollup_retention_days: int = Field(
        365,
        ge=1,
        le=36500,
        validation_alias=env("ORBITSTREAM_ROLLUP_RETENTION_DAYS", "rollup_retention_days"),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=env("ORBITSTREAM_LOG_LEVEL", "log_level")
    )
    log_format: Literal["json", "text"] = Field(
        "json", validation_alias=env("ORBITSTREAM_LOG_FORMAT", "log_format")
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)  # type: ignore[arg-type]
    http: HttpSettings = Field(default_factory=HttpSettings)  # type: ignore[arg-type]
    query: QuerySettings = Field(default_factory=QuerySettings)  # type: ignore[arg-type]
    postgres: PostgresSection = Field(default_factory=PostgresSection)  # type: ignore[arg-type]
    clickhouse: ClickHouseSection = Field(default_factory=ClickHouseSection)  # type: ignore[arg-type]
    kafka: KafkaSection = Field(default_factory=KafkaSection)  # type: ignore[arg-type]
    pipelines: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="[pipelines.<name>] tables of the TOML file."
    )

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return default_data_dir()
            return Path(value).expanduser()
        return value

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        if len(set(names)) != len(names):
            raise ValueError("a sink is listed twice")
        return ",".join(names)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            _FlatSource(settings_cls, _environ()),
            _FlatSource(settings_cls, _dotenv()),
        ]
        toml = os.environ.get("ORBITSTREAM_CONFIG")
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    # -- derived -----------------------------------------------------------------------
    @property
    def timestamp_max_age(self) -> float:
        """Seconds a timestamp may lie behind the receive time (default: the retention)."""
        if self.engine.timestamp_max_age_secs is not None:
            return self.engine.timestamp_max_age_secs
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

    def pipeline(self, name: str, model: type[M]) -> M:
        """The settings of pipeline ``name`` in its own ``model``, from ``[pipelines.<name>]``
        in the TOML file, ``.env`` and the environment (its flat names and
        ``ORBITSTREAM_<NAME>__<FIELD>``).

        :raises ConfigError: a value is invalid; names the variable.
        """
        return read_section(model, name, self.pipelines.get(name, {}))


# -- sources of values ------------------------------------------------------------------


def _environ() -> dict[str, str]:
    return dict(os.environ)


def _dotenv(path: str = ".env") -> dict[str, str]:
    if not Path(path).is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _aliases(field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str) and c.upper() == c]
    if isinstance(alias, str) and alias.upper() == alias:
        return [alias]
    return []


def _lookup(environ: Mapping[str, str], names: list[str]) -> str | None:
    for name in names:
        value = environ.get(name)
        if value is not None:
            return value
    return None


def _flat_values(model: type[BaseModel], prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The values of ``model``'s fields found in ``environ`` (flat names, then
    ``ORBITSTREAM_<PREFIX>__<FIELD>``), keyed by field name."""
    out: dict[str, Any] = {}
    nested = f"ORBITSTREAM_{prefix.upper()}__"
    for name, field in model.model_fields.items():
        value = _lookup(environ, [*_aliases(field), nested + name.upper()])
        if value is not None:
            out[name] = value
    return out


class _FlatSource(PydanticBaseSettingsSource):
    """Environment-like values (``os.environ`` or ``.env``) by every field's flat names,
    nested into the sections."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Section):
                values = _flat_values(ann, name, self.environ)
                if values:
                    out[name] = values
            elif name != "pipelines":
                value = _lookup(self.environ, _aliases(field))
                if value is not None:
                    out[name] = value
        return out


def read_section(model: type[M], prefix: str, toml: Mapping[str, Any] | None = None) -> M:
    """``model`` from the environment, ``.env`` and a TOML table, in that order of
    precedence (see the module docstring).

    :raises ConfigError: a value is invalid; names the variable.
    """
    values: dict[str, Any] = dict(toml or {})
    values.update(_flat_values(model, prefix, _dotenv()))
    values.update(_flat_values(model, prefix, _environ()))
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _config_error(exc, model, prefix) from exc


def _field_setting(model: type[BaseModel], key: str, prefix: str | None) -> str:
    field = model.model_fields.get(key)
    if field is not None:
        names = _aliases(field)
        if names:
            return names[0]
        if prefix:
            return f"ORBITSTREAM_{prefix.upper()}__{key.upper()}"
    return key


def _setting_name(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    key = str(loc[0])
    field = Settings.model_fields.get(key)
    if field is None:
        return key
    ann = field.annotation
    if len(loc) > 1 and isinstance(ann, type) and issubclass(ann, Section):
        return _field_setting(ann, str(loc[1]), key)
    names = _aliases(field)
    return names[0] if names else key


def _shown(name: str, value: object) -> str:
    """A value for an error message (secrets masked)."""
    if isinstance(value, str) and _secretish(name):
        return repr(redact_url(value)) if "://" in value else "'***'"
    return repr(value)


def error_text(msg: str) -> str:
    """pydantic's message without its "Value error, " prefix (what a validator raised);
    an empty string is "must not be empty" whichever check found it."""
    if msg == "String should have at least 1 character":
        return "must not be empty"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def config_error(
    exc: ValidationError, describe: Callable[[Mapping[str, Any]], tuple[str, str]]
) -> ConfigError:
    """One :class:`ConfigError` naming every bad setting of ``exc``: ``describe(err)``
    gives each error's setting name and its value as shown (secrets masked)."""
    messages = []
    first: str | None = None
    for err in exc.errors():
        name, shown = describe(err)
        first = first or name
        messages.append(f"{name}={shown}: {error_text(err['msg'])}")
    return ConfigError("invalid setting " + "; ".join(messages), setting=first)


def _config_error(
    exc: ValidationError, model: type[BaseModel] | None, prefix: str | None
) -> ConfigError:
    def describe(err: Mapping[str, Any]) -> tuple[str, str]:
        loc = tuple(err["loc"])
        if model is None:
            name = _setting_name(loc)
        else:
            name = _field_setting(model, str(loc[0]), prefix) if loc else prefix or "settings"
        return name, _shown(name, err.get("input"))

    return config_error(exc, describe)


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings`; a bad value raises :class:`ConfigError` naming the variable.

    :param overrides: field values that win over every source (command-line flags); a
        section's fields as a dict (``engine={"batch_size": 10}``).
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**clean)
    except ValidationError as exc:
        raise _config_error(exc, None, None) from exc
    _ = settings.store_kind
    return settings
