"""How OrbitStream reaches AWS, or any S3/SNS-compatible service: one settings object read
from the standard AWS variables, and the boto3 clients built from it.

Variables (the AWS SDKs' own names): ``AWS_ENDPOINT_URL`` (or the per-service
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL_SNS``, which win) points at an
S3-compatible store or a local stand-in; ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``);
``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``). When no key
is given, boto3's default credential chain applies (profiles, instance or task roles).

Secrets are :class:`pydantic.SecretStr`: never in ``repr()``, logs or error messages.
boto3 is imported lazily; without it a :class:`~orbitstream.errors.ConfigError` names the
extra to install (``orbitstream[s3]``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from orbitstream.errors import ConfigError

__all__ = ["DEFAULT_CONNECT_TIMEOUT_SECS", "DEFAULT_READ_TIMEOUT_SECS", "AwsSettings"]

DEFAULT_CONNECT_TIMEOUT_SECS = 5.0
DEFAULT_READ_TIMEOUT_SECS = 30.0
DEFAULT_MAX_ATTEMPTS = 3
_REGION = re.compile(r"^[a-z0-9-]{2,32}$")


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value.strip() if value is not None and value.strip() else None


@dataclass(frozen=True, slots=True)
class AwsSettings:
    """Endpoint, region and credentials for one AWS service client.

    :param endpoint_url: ``http(s)://host[:port]`` of an S3/SNS-compatible service;
        ``None`` for AWS itself.
    :param region: signing region; ``None`` lets boto3 decide (S3 defaults to us-east-1).
    :param access_key_id: static key id; ``None`` uses boto3's default credential chain.
    :param secret_access_key: its secret (required with ``access_key_id``).
    :param session_token: temporary-credential token, if any.
    :param connect_timeout_secs: TCP connect timeout of one request.
    :param read_timeout_secs: read timeout of one request.
    :param max_attempts: attempts per call inside the SDK (``standard`` retry mode:
        throttling and 5xx with backoff); the pipeline retries the batch after that.
    :raises ConfigError: a value is invalid; ``setting`` names the variable.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    connect_timeout_secs: float = DEFAULT_CONNECT_TIMEOUT_SECS
    read_timeout_secs: float = DEFAULT_READ_TIMEOUT_SECS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"AWS_ENDPOINT_URL must be http(s)://host[:port], got {self.endpoint_url!r}",
                    setting="AWS_ENDPOINT_URL",
                )
            if parts.username is not None or parts.password is not None:
                raise ConfigError(
                    "AWS_ENDPOINT_URL must not carry credentials: use AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY",
                    setting="AWS_ENDPOINT_URL",
                )
        if self.region is not None and not _REGION.match(self.region):
            raise ConfigError(
                f"AWS_REGION must look like us-east-1, got {self.region!r}", setting="AWS_REGION"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            missing = (
                "AWS_SECRET_ACCESS_KEY" if self.secret_access_key is None else ("AWS_ACCESS_KEY_ID")
            )
            raise ConfigError(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together: set both or neither",
                setting=missing,
            )
        for name, value in (
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("read_timeout_secs", self.read_timeout_secs),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds", setting=name)
        if not (isinstance(self.max_attempts, int) and 1 <= self.max_attempts <= 20):
            raise ConfigError("max_attempts must be 1 to 20", setting="max_attempts")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], service: str | None = None) -> AwsSettings:
        """Read the standard AWS variables.

        :param service: ``s3`` or ``sns``: ``AWS_ENDPOINT_URL_<SERVICE>`` wins over
            ``AWS_ENDPOINT_URL``, as in the AWS SDKs.
        :raises ConfigError: a variable has a bad value.
        """
        endpoint = None
        if service:
            endpoint = _get(environ, f"AWS_ENDPOINT_URL_{service.upper()}")
        endpoint = endpoint or _get(environ, "AWS_ENDPOINT_URL")
        key_id = _get(environ, "AWS_ACCESS_KEY_ID")
        secret = _get(environ, "AWS_SECRET_ACCESS_KEY")
        token = _get(environ, "AWS_SESSION_TOKEN")
        return cls(
            endpoint_url=endpoint,
            region=_get(environ, "AWS_REGION") or _get(environ, "AWS_DEFAULT_REGION"),
            access_key_id=key_id,
            secret_access_key=SecretStr(secret) if secret is not None else None,
            session_token=SecretStr(token) if token is not None else None,
        )

    def client(
        self,
        service: str,
        *,
        region: str | None = None,
        quick: bool = False,
        **config: Any,
    ) -> Any:
        """A new boto3 client for ``service`` (its own session: safe to use from threads).

        :param region: overrides :attr:`region` (SNS takes it from the topic ARN).
        :param quick: one attempt with short timeouts (3 s connect, 5 s read), for a
            check at start that must not hold the start up.
        :param config: extra ``botocore.config.Config`` options (``s3={...}``).
        :raises ConfigError: boto3 is not installed.
        """
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "S3 and SNS need the s3 extra: pip install 'orbitstream[s3]'",
                setting="AWS_S3_BUCKET" if service == "s3" else "AWS_SNS_TOPIC_ARN",
            ) from exc
        make: Any = boto3.session.Session().client  # typed per service in boto3-stubs
        return make(
            service,
            endpoint_url=self.endpoint_url,
            region_name=region or self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=(
                self.secret_access_key.get_secret_value() if self.secret_access_key else None
            ),
            aws_session_token=(
                self.session_token.get_secret_value() if self.session_token else None
            ),
            config=Config(
                connect_timeout=min(self.connect_timeout_secs, 3.0)
                if quick
                else self.connect_timeout_secs,
                read_timeout=min(self.read_timeout_secs, 5.0) if quick else self.read_timeout_secs,
                retries={
                    "mode": "standard",
                    "total_max_attempts": 1 if quick else self.max_attempts,
                },
                **config,
            ),
        )
