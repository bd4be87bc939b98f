"""Starlink fixtures: the fake Starlink API on a real loopback port, and client settings
pointing at it (the fake is part of the package: nothing to skip)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from orbitstream.simulate.starlink import FakeStarlink, FakeStarlinkConfig, FleetConfig
from orbitstream.sources.starlink_api import StarlinkSettings

FakeFactory = Callable[..., Awaitable[FakeStarlink]]


def fleet(terminals: int = 6, **kw: Any) -> FleetConfig:
    """A small fleet with recent timestamps (inside any table TTL) and lively quirks."""
    kw.setdefault("seed", 3)
    kw.setdefault("start_ns", time.time_ns() - 3_600_000_000_000)
    kw.setdefault("alert_open_probability", 0.2)
    kw.setdefault("duplicate_probability", 0.05)
    kw.setdefault("tombstone_probability", 0.02)
    return FleetConfig(terminals=terminals, **kw)


@pytest.fixture
async def fake_factory() -> AsyncIterator[FakeFactory]:
    fakes: list[FakeStarlink] = []

    async def make(**kw: Any) -> FakeStarlink:
        kw.setdefault("fleet", fleet())
        fake = FakeStarlink(FakeStarlinkConfig(**kw))
        await fake.start("127.0.0.1", 0)
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        await fake.stop()


def settings_for(fake: FakeStarlink, **kw: Any) -> StarlinkSettings:
    kw.setdefault("batch_size", 50)
    kw.setdefault("max_linger_ms", 200)
    kw.setdefault("timeout_margin_secs", 5.0)
    kw.setdefault("backoff_base_secs", 0.01)
    kw.setdefault("backoff_max_secs", 0.05)
    return StarlinkSettings(
        client_id=fake.client_id,
        client_secret=SecretStr(fake.client_secret),
        token_url=fake.token_url,
        stream_url=fake.stream_url,
        **kw,
    )
