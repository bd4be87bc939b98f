"""Settings of the ClickHouse server sink, and how they are read from the environment.

``CLICKHOUSE_URL`` may be ``http(s)://[user[:password]@]host[:port][/database]`` or
``clickhouse(s)://user:password@host:port/database`` (``clickhouse://`` speaks HTTP,
``clickhouses://`` HTTPS; both default to port 8123, or 8443 for TLS). Without a URL,
``CLICKHOUSE_HOST`` (+ ``CLICKHOUSE_PORT``, default 8123) names the server.
``CLICKHOUSE_USER``, ``CLICKHOUSE_PASSWORD`` and ``CLICKHOUSE_DB`` (or
``CLICKHOUSE_DATABASE``) override what the URL carries.

The password is a :class:`pydantic.SecretStr`: it never shows in ``repr()``, in logs or
in error messages (a URL quoted in an error has its password replaced by ``***``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from orbitstream.errors import ConfigError
from orbitstream.redaction import redact_url

__all__ = ["DEFAULT_HTTPS_PORT", "DEFAULT_HTTP_PORT", "ClickHouseSettings", "Compression"]

DEFAULT_HTTP_PORT = 8123
DEFAULT_HTTPS_PORT = 8443
DEFAULT_CONNECT_TIMEOUT_SECS = 10.0
DEFAULT_SEND_RECEIVE_TIMEOUT_SECS = 60.0

Compression = Literal["lz4", "zstd", "gzip", "none"]
_COMPRESSIONS = ("lz4", "zstd", "gzip", "none")
_SCHEMES = {"http": "http", "https": "https", "clickhouse": "http", "clickhouses": "https"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_HOST = re.compile(r"^[A-Za-z0-9_.\-:\[\]]+$")


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to put in an error message)."""
    return redact_url(url.strip())


def _port(value: str, setting: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(
            f"{setting}: port must be an integer from 1 to 65535, got {value!r}", setting=setting
        ) from None
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"{setting}: port must be an integer from 1 to 65535, got {value!r}", setting=setting
        )
    return port


def _bool(value: str, setting: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{setting}: expected true or false, got {value!r}", setting=setting)


@dataclass(frozen=True, slots=True)
class ClickHouseSettings:
    """Where and how to reach a ClickHouse server over HTTP.

    :param url: ``http(s)://host:port`` of the HTTP interface, without credentials or path.
    :param user: ClickHouse user.
    :param password: its password (never logged, masked in ``repr()``).
    :param database: database for every table; created by the sink when missing.
    :param cluster: run DDL ``ON CLUSTER`` this cluster.
    :param replicated: create ``Replicated*MergeTree`` tables (with ``{shard}``/``{replica}``
        macros).
    :param connect_timeout_secs: TCP connect timeout.
    :param send_receive_timeout_secs: read timeout of one request (an insert or a query).
    :param compress: compression of inserted data and query results (``none`` to disable).
    :param query_timeout_secs: ``max_execution_time`` of users' read-only queries.
    :raises ConfigError: a value is invalid.
    """

    url: str = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"
    user: str = "default"
    password: SecretStr = field(default_factory=lambda: SecretStr(""))
    database: str = "default"
    cluster: str | None = None
    replicated: bool = False
    distributed: bool = False
    connect_timeout_secs: float = DEFAULT_CONNECT_TIMEOUT_SECS
    send_receive_timeout_secs: float = DEFAULT_SEND_RECEIVE_TIMEOUT_SECS
    compress: Compression = "lz4"
    query_timeout_secs: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.password, SecretStr):
            raise ConfigError(
                "password must be a pydantic SecretStr", setting="CLICKHOUSE_PASSWORD"
            )
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"ClickHouse url must be http(s)://host:port, got {_redact(self.url)!r}",
                setting="CLICKHOUSE_URL",
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                "ClickHouse url must not carry credentials: set user and password "
                "(or use ClickHouseSettings.from_url)",
                setting="CLICKHOUSE_URL",
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(
                "ClickHouse url must be http(s)://host:port without path or query "
                "(the database is a separate setting)",
                setting="CLICKHOUSE_URL",
            )
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ConfigError(
                f"ClickHouse url has an invalid port: {_redact(self.url)!r}",
                setting="CLICKHOUSE_URL",
            )
        if not self.user:
            raise ConfigError("ClickHouse user must not be empty", setting="CLICKHOUSE_USER")
        if not self.database:
            raise ConfigError("ClickHouse database must not be empty", setting="CLICKHOUSE_DB")
        if self.cluster is not None and not self.cluster.strip():
            raise ConfigError(
                "cluster must be a name or unset", setting="ORBITSTREAM_CLICKHOUSE_CLUSTER"
            )
        for name, value in (
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("send_receive_timeout_secs", self.send_receive_timeout_secs),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds", setting=name)
        if self.compress not in _COMPRESSIONS:
            raise ConfigError(
                f"compress must be one of {', '.join(_COMPRESSIONS)}, got {self.compress!r}",
                setting="compress",
            )

    # -- derived ---------------------------------------------------------------------
    @property
    def interface(self) -> str:
        """``http`` or ``https``."""
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None  # checked in __post_init__
        return host

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        if port is not None:
            return port
        return DEFAULT_HTTPS_PORT if self.interface == "https" else DEFAULT_HTTP_PORT

    def with_database(self, database: str) -> ClickHouseSettings:
        """The same settings for another database (tests use a random one each)."""
        return replace(self, database=database)

    # -- parsing ---------------------------------------------------------------------
    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        setting: str = "CLICKHOUSE_URL",
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        cluster: str | None = None,
        replicated: bool = False,
    ) -> ClickHouseSettings:
        """Parse ``http(s)://`` or ``clickhouse(s)://`` URLs; explicit arguments win over the
        URL's user, password and database.

        :param setting: the variable the URL came from, named in errors.
        :raises ConfigError: bad scheme, host or port.
        """
        text = url.strip()
        try:
            parts = urlsplit(text)
            raw_port = parts.port
        except ValueError:
            raise ConfigError(
                f"{setting}: invalid port in {_redact(text)!r}: use 1-65535", setting=setting
            ) from None
        scheme = _SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise ConfigError(
                f"{setting}: unsupported scheme {parts.scheme!r} in {_redact(text)!r}: use "
                "http://, https://, clickhouse:// or clickhouses:// (the HTTP interface)",
                setting=setting,
            )
        host = parts.hostname
        if not host or not _HOST.match(host):
            raise ConfigError(
                f"{setting}: missing or invalid host in {_redact(text)!r}", setting=setting
            )
        if raw_port is not None and raw_port == 0:
            raise ConfigError(
                f"{setting}: invalid port in {_redact(text)!r}: use 1-65535", setting=setting
            )
        port = raw_port or (DEFAULT_HTTPS_PORT if scheme == "https" else DEFAULT_HTTP_PORT)
        if parts.query or parts.fragment:
            raise ConfigError(
                f"{setting}: query strings are not supported in {_redact(text)!r}", setting=setting
            )
        path = unquote(parts.path.strip("/"))
        if "/" in path:
            raise ConfigError(
                f"{setting}: the path must be a database name, got {path!r}", setting=setting
            )
        host_part = f"[{host}]" if ":" in host else host
        return cls(
            url=f"{scheme}://{host_part}:{port}",
            user=user
            if user is not None
            else (unquote(parts.username) if parts.username else "default"),
            password=SecretStr(
                password
                if password is not None
                else (unquote(parts.password) if parts.password else "")
            ),
            database=database if database is not None else (path or "default"),
            cluster=cluster,
            replicated=replicated,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ClickHouseSettings | None:
        """Settings from ``CLICKHOUSE_*`` variables; ``None`` when no server is configured.

        :raises ConfigError: a variable has a bad value; ``setting`` names it.
        """

        def get(name: str) -> str | None:
            value = environ.get(name)
            return value if value is not None and value.strip() != "" else None

        url = get("CLICKHOUSE_URL")
        host = get("CLICKHOUSE_HOST")
        if url is None and host is None:
            return None
        db = get("CLICKHOUSE_DB")
        database_alt = get("CLICKHOUSE_DATABASE")
        if db is not None and database_alt is not None and db != database_alt:
            raise ConfigError(
                "CLICKHOUSE_DB and CLICKHOUSE_DATABASE disagree: set only one",
                setting="CLICKHOUSE_DATABASE",
            )
        database = db if db is not None else database_alt
        cluster = get("ORBITSTREAM_CLICKHOUSE_CLUSTER")
        replicated = _bool(
            environ.get("ORBITSTREAM_CLICKHOUSE_REPLICATED", ""),
            "ORBITSTREAM_CLICKHOUSE_REPLICATED",
        )
        distributed = _bool(
            environ.get("ORBITSTREAM_CLICKHOUSE_DISTRIBUTED", ""),
            "ORBITSTREAM_CLICKHOUSE_DISTRIBUTED",
        )
        if distributed and not cluster:
            raise ConfigError(
                "ORBITSTREAM_CLICKHOUSE_DISTRIBUTED needs ORBITSTREAM_CLICKHOUSE_CLUSTER",
                setting="ORBITSTREAM_CLICKHOUSE_DISTRIBUTED",
            )
        user = get("CLICKHOUSE_USER")
        password = environ.get("CLICKHOUSE_PASSWORD")  # an empty password is a password
        if url is not None:
            parsed = cls.from_url(
                url,
                user=user,
                password=password,
                database=database,
                cluster=cluster.strip() if cluster else None,
                replicated=replicated,
            )
            return dataclasses.replace(parsed, distributed=distributed)
        assert host is not None
        host = host.strip()
        if "://" in host or "/" in host or not _HOST.match(host):
            raise ConfigError(
                f"CLICKHOUSE_HOST must be a host name or address, got {host!r} "
                "(put URLs in CLICKHOUSE_URL)",
                setting="CLICKHOUSE_HOST",
            )
        port = _port(
            environ.get("CLICKHOUSE_PORT", str(DEFAULT_HTTP_PORT)).strip()
            or str(DEFAULT_HTTP_PORT),
            "CLICKHOUSE_PORT",
        )
        scheme = "https" if port in (DEFAULT_HTTPS_PORT, 443) else "http"
        host_part = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return cls(
            url=f"{scheme}://{host_part}:{port}",
            user=user or "default",
            password=SecretStr(password or ""),
            database=database or "default",
            cluster=cluster.strip() if cluster else None,
            replicated=replicated,
            distributed=distributed,
        )
