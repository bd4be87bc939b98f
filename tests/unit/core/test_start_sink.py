"""``start_sink``: a sink that is not reachable yet is retried until the start timeout; one
that answers but refuses the deployment stops the start at once, naming its settings."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from orbitstream.core.pipeline import start_sink
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.tables import Table
from orbitstream.errors import ConfigError, SinkRetryableError
from orbitstream.sinks.memory import MemorySink

FAST = RetryPolicy(base_secs=0.001, max_secs=0.002)


class Failing(MemorySink):
    configured_by = "STORE_URL"

    def __init__(self, failures: int, *, deployment: bool = False) -> None:
        super().__init__("store")
        self.failures = failures
        self.deployment = deployment
        self.calls = 0

    async def start(self, tables: Sequence[Table]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise SinkRetryableError("refused", sink=self.name, deployment=self.deployment)
        await super().start(tables)


async def test_an_unreachable_sink_is_retried_until_it_answers() -> None:
    sink = Failing(3)
    await start_sink(sink, [], FAST, timeout_secs=10.0)
    assert sink.calls == 4


async def test_still_unreachable_at_the_timeout_names_the_settings() -> None:
    sink = Failing(10**6)
    with pytest.raises(SinkRetryableError, match=r"ORBITSTREAM_START_TIMEOUT; check STORE_URL"):
        await start_sink(sink, [], FAST, timeout_secs=0.05)
    assert sink.calls > 1


async def test_a_refused_deployment_stops_at_once_naming_the_settings() -> None:
    sink = Failing(10**6, deployment=True)
    with pytest.raises(ConfigError, match=r"the store sink cannot be used: refused") as err:
        await start_sink(sink, [], FAST, timeout_secs=10.0)
    assert err.value.setting == "STORE_URL" and sink.calls == 1


async def test_a_plugin_sink_without_the_attribute_still_gets_a_message() -> None:
    class Bare:
        name = "bare"

        async def start(self, tables: Sequence[Table]) -> None:
            raise SinkRetryableError("no bucket", sink="bare", deployment=True)

    with pytest.raises(ConfigError, match=r"check the sink's settings"):
        await start_sink(Bare(), [], FAST, timeout_secs=1.0)  # type: ignore[arg-type]
