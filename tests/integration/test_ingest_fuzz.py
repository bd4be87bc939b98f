"""Property test against the real service: any JSON body gets 202/400/422 (never 5xx, never a
crash), the verdict matches the validation rules, and only accepted points are stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbitstream.pipelines.satellites import field_errors
from tests.conftest import ServiceProcess, http

pytestmark = pytest.mark.integration

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_fields = {
    "satellite_id": st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True), _values),
    "battery_charge_percent": st.one_of(st.floats(-10, 110), _values),
    "storage_usage_mb": st.one_of(st.floats(-10, 1e12), _values),
    "signal_strength_dbm": st.one_of(st.floats(-250, 10), _values),
    "timestamp": st.one_of(
        st.integers(946_684_800_000_000_000, 2**63 - 1),
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        _values,
    ),
}
points = st.fixed_dictionaries({}, optional=_fields)
bodies = st.one_of(points, st.lists(points, min_size=1, max_size=5), _values)


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(
        tmp_path_factory.mktemp("fuzz") / "data", {"BATCH_TIMEOUT": "50ms"}
    ).start()
    try:
        yield svc
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()


_accepted: list[int] = []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_any_json_gets_a_clear_verdict(fuzz_service: ServiceProcess, body: Any) -> None:
    path = "/telemetry/batch" if isinstance(body, list) else "/telemetry"
    status, _, raw = http(
        "POST",
        fuzz_service.url + path,
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert status in (202, 400, 422), raw
    doc = json.loads(raw)
    if body == []:
        assert status == 400 and "empty batch" in doc["error"]
        return
    if isinstance(body, list):
        valid = [not field_errors(p) for p in body]
        if any(valid):
            assert status == 202 and doc["accepted"] == sum(valid), doc
            assert sorted(e["index"] for e in doc.get("errors", [])) == [
                i for i, v in enumerate(valid) if not v
            ]
        else:
            assert status == 422
        _accepted.append(sum(valid) if status == 202 else 0)
    else:
        expected = 202 if not field_errors(body) else 422
        assert status == expected, (body, doc)
        if status == 422:
            assert {e["field"] for e in doc["errors"]} == {e.field for e in field_errors(body)}
        _accepted.append(1 if status == 202 else 0)


def test_only_accepted_points_were_stored(fuzz_service: ServiceProcess) -> None:
    expected = sum(_accepted)
    assert fuzz_service.wait_count(expected) == expected
    assert http("GET", fuzz_service.url + "/health")[0] == 200
