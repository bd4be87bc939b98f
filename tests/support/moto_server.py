"""moto's standalone server as the S3 and SNS (and SQS) endpoint of the tests.

It runs as a real subprocess (``python -m moto.server``) on a free loopback port; code
under test reaches it through boto3 with an endpoint URL, exactly as it would reach AWS
or any S3-compatible store. ``ORBITSTREAM_TEST_AWS_ENDPOINT_URL`` points the tests at an
already-running server instead.

The server accepts any credentials; the tests use :data:`CREDENTIALS`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port

__all__ = [
    "CREDENTIALS",
    "ENV_ENDPOINT",
    "REGION",
    "MotoServer",
    "aws_client",
    "aws_settings",
    "moto_available",
]

ENV_ENDPOINT = "ORBITSTREAM_TEST_AWS_ENDPOINT_URL"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def moto_available() -> bool:
    """Whether ``moto[server]`` (moto plus its Flask front) is installed."""
    try:
        import flask  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


class MotoServer:
    """``start()`` / ``stop()`` one moto server; ``url`` is its endpoint."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkdtemp(prefix="orbitstream-moto-")) / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> MotoServer:
        env = {
            **os.environ,
            # No real AWS is ever reached, whatever the caller's environment holds.
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": REGION,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited early: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def aws_client(service: str, endpoint: str) -> Any:
    """A plain boto3 client on the test endpoint (for setting up and reading back)."""
    import boto3

    make: Any = boto3.session.Session().client
    return make(service, endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)


def aws_settings(endpoint: str, **kwargs: Any) -> Any:
    """:class:`orbitstream.aws.AwsSettings` for the test endpoint."""
    from pydantic import SecretStr

    from orbitstream.aws import AwsSettings

    return AwsSettings(
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=CREDENTIALS["aws_access_key_id"],
        secret_access_key=SecretStr(CREDENTIALS["aws_secret_access_key"]),
        **kwargs,
    )
