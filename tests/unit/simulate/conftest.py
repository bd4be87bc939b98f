from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.simulate.fake_ingest import Behaviour, FakeIngest


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
def ingest(behaviour: Behaviour) -> Iterator[FakeIngest]:
    server = FakeIngest(behaviour=behaviour)
    server.start()
    try:
        yield server
    finally:
        server.stop()
