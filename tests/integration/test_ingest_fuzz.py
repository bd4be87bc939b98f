"""Hostile input against the real service.

- Property: points built field by field from *labelled* strategies (each value known valid
  or invalid by construction, not by asking the implementation) get 202 when every field
  is valid and 422 naming exactly the invalid fields otherwise, never a 5xx; at the end
  every accepted point is in the store with exactly the values sent.
- schemathesis against ``/openapi.json``: no 5xx, status codes, content types and bodies
  as documented, schema-violating requests refused.
- A corpus of nasty bodies: deep nesting, megabyte strings, NaN/Infinity, duplicate keys,
  invalid UTF-8, a byte-order mark.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServiceProcess, http, rfc3339

pytestmark = pytest.mark.integration

HOUR_NS = 3600 * 10**9
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
MISSING = object()


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(
        tmp_path_factory.mktemp("fuzz") / "data",
        {"BATCH_TIMEOUT": "50ms", "ORBITSTREAM_TIMESTAMP_MAX_AGE": "1d"},
    ).start()
    try:
        yield svc
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()


# -- labelled values: (value, valid?) ------------------------------------------------------
def _number(lo: float, hi: float) -> st.SearchStrategy[tuple[object, bool]]:
    valid = st.one_of(st.floats(lo, hi), st.integers(int(lo), int(hi))).map(lambda v: (v, True))
    invalid = st.one_of(
        st.floats(hi, 1e300, exclude_min=True),
        st.floats(-1e300, lo, exclude_max=True),
        st.text(max_size=8),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ).map(lambda v: (v, False))
    return st.one_of(valid, invalid)


_ids = st.one_of(
    st.text(alphabet=ID_ALPHABET, min_size=1, max_size=64).map(lambda v: (v, True)),
    st.one_of(
        st.just(""),
        st.text(alphabet=ID_ALPHABET, min_size=65, max_size=80),
        st.text(alphabet=" /;é\t", min_size=1, max_size=5),
        st.integers(),
        st.none(),
    ).map(lambda v: (v, False)),
)


def _timestamps(now_ns: int) -> st.SearchStrategy[tuple[object, bool]]:
    inside = st.integers(now_ns - 23 * HOUR_NS, now_ns)  # within the 1-day window
    outside = st.one_of(
        st.integers(now_ns + 2 * HOUR_NS, 2**63 - 1),  # ahead of the window
        st.integers(946_684_800 * 10**9, now_ns - 25 * HOUR_NS),  # too old
    )
    return st.one_of(
        inside.map(lambda ns: (ns, True)),
        inside.map(lambda ns: (rfc3339(ns / 1e9), True)),
        st.none().map(lambda v: (v, True)),
        outside.map(lambda ns: (ns, False)),
        outside.map(lambda ns: (rfc3339(ns / 1e9), False)),
        st.integers(0, 2_000_000_000).map(lambda s: (s, False)),  # seconds, not nanoseconds
        st.sampled_from(["yesterday", "2026-11-23T10:00:00", "0001-01-01T00:00:00Z"]).map(
            lambda v: (v, False)
        ),
        # finite: JSON has no infinity (json.dumps writes ``Infinity``, which the service
        # rightly answers with 400, malformed JSON, not a field error)
        st.floats(allow_nan=False, allow_infinity=False).map(lambda v: (v, False)),
    )


FIELDS = {
    "satellite_id": _ids,
    "battery_charge_percent": _number(0, 100),
    "storage_usage_mb": _number(0, 1e15),
    "signal_strength_dbm": _number(-200, 0),
}


@st.composite
def labelled_points(draw: st.DrawFn, now_ns: int) -> tuple[dict[str, Any], set[str]]:
    doc: dict[str, Any] = {}
    bad: set[str] = set()
    for name, strategy in FIELDS.items():
        if draw(st.integers(0, 19)) == 0:
            bad.add(name)  # missing
            continue
        value, ok = draw(strategy)
        doc[name] = value
        if not ok:
            bad.add(name)
    if draw(st.booleans()):
        value, ok = draw(_timestamps(now_ns))
        doc["timestamp"] = value
        if not ok:
            bad.add("timestamp")
    if draw(st.booleans()):
        doc["extra_field"] = draw(st.text(max_size=10))  # unknown fields are ignored
    return doc, bad


def _post(svc: ServiceProcess, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    status, _, raw = http(
        "POST", svc.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status < 500, raw
    return status, json.loads(raw)


def test_verdicts_match_the_rules_and_accepted_points_are_stored_exactly(
    fuzz_service: ServiceProcess,
) -> None:
    now_ns = time.time_ns()
    run = uuid.uuid4().hex[:6]
    stored: dict[str, dict[str, Any]] = {}  # unique id -> the point as sent
    counter = iter(range(10**9))

    def unique(doc: dict[str, Any], bad: set[str]) -> dict[str, Any]:
        if "satellite_id" not in bad:  # a valid id of our own, to find the row again
            doc = {**doc, "satellite_id": f"F{run}-{next(counter)}"}
        return doc

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        single=labelled_points(now_ns),
        batch=st.lists(labelled_points(now_ns), min_size=1, max_size=6),
    )
    def check(
        single: tuple[dict[str, Any], set[str]], batch: list[tuple[dict[str, Any], set[str]]]
    ) -> None:
        doc, bad = single
        doc = unique(doc, bad)
        status, answer = _post(fuzz_service, "/telemetry", doc)
        if bad:
            assert status == 422, (doc, answer)
            assert {e["field"] for e in answer["errors"]} == bad, (doc, answer)
        else:
            assert status == 202, (doc, answer)
            stored[doc["satellite_id"]] = doc
        docs = [(unique(d, b), b) for d, b in batch]
        status, answer = _post(fuzz_service, "/telemetry/batch", [d for d, _ in docs])
        good = [d for d, b in docs if not b]
        if good:
            assert status == 202 and answer["accepted"] == len(good), answer
            reported = {
                e["index"]: {x["field"] for x in e["errors"]} for e in answer.get("errors", [])
            }
            assert reported == {i: b for i, (_, b) in enumerate(docs) if b}, answer
            for d in good:
                stored[d["satellite_id"]] = d
        else:
            assert status == 422 and answer["accepted"] == 0, answer

    check()
    assert fuzz_service.wait_count(len(stored), where=f"satellite_id LIKE 'F{run}-%'") == len(
        stored
    )
    rows = fuzz_service.query(
        "SELECT satellite_id, battery_charge_percent, storage_usage_mb, signal_strength_dbm, "
        f"toUnixTimestamp64Nano(time), toUnixTimestamp64Nano(received_at) FROM telemetry "
        f"WHERE satellite_id LIKE 'F{run}-%'"
    )
    assert len(rows) == len(stored)  # exactly once
    for sid, battery, storage, signal, t_ns, received_ns in rows:
        sent = stored[sid]
        assert (battery, storage, signal) == (
            float(sent["battery_charge_percent"]),
            float(sent["storage_usage_mb"]),
            float(sent["signal_strength_dbm"]),
        )
        ts = sent.get("timestamp")
        if ts is None:
            assert t_ns == received_ns
        elif isinstance(ts, int):
            assert t_ns == ts
        else:
            assert abs(t_ns / 1e9 - _parse(ts)) < 1e-6
    assert http("GET", fuzz_service.url + "/health")[0] == 200


def _parse(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_schemathesis_finds_nothing(fuzz_service: ServiceProcess, tmp_path: Any) -> None:
    cli = shutil.which("schemathesis") or str(
        __import__("pathlib").Path(__import__("sys").executable).with_name("schemathesis")
    )
    out = subprocess.run(
        [
            cli,
            "run",
            fuzz_service.url + "/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,negative_data_rejection",
            "--max-examples",
            "100",
            "--workers",
            "1",
            "--suppress-health-check",
            "all",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
    assert http("GET", fuzz_service.url + "/health")[0] == 200


POINT = {
    "satellite_id": "CORPUS",
    "battery_charge_percent": 50.0,
    "storage_usage_mb": 1.0,
    "signal_strength_dbm": -40.0,
}
_point = json.dumps(POINT).encode()
CORPUS: list[tuple[str, str, bytes, set[int]]] = [
    ("deep array", "/telemetry", b"[" * 200_000 + b"]" * 200_000, {400}),
    (
        "deep in a field",
        "/telemetry",
        _point[:-1] + b', "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        {400},
    ),
    ("deep batch", "/telemetry/batch", b"[" * 200_000 + b"]" * 200_000, {400, 422}),
    (
        "deep ndjson line",
        "/telemetry/ndjson",
        b"[" * 30_000 + b"]" * 30_000 + b"\n" + _point,
        {202},
    ),
    (
        "1 MB id",
        "/telemetry",
        json.dumps({**POINT, "satellite_id": "a" * 1_000_000}).encode(),
        {422},
    ),
    (
        "1 MB unknown field",
        "/telemetry",
        json.dumps({**POINT, "note": "n" * 1_000_000}).encode(),
        {202},
    ),
    ("NaN", "/telemetry", _point.replace(b"50.0", b"NaN"), {400}),
    ("Infinity", "/telemetry", _point.replace(b"50.0", b"Infinity"), {400}),
    ("-Infinity", "/telemetry/batch", b"[" + _point.replace(b"-40.0", b"-Infinity") + b"]", {400}),
    ("1e400", "/telemetry", _point.replace(b"50.0", b"1e400"), {422}),
    ("invalid UTF-8", "/telemetry", _point.replace(b"CORPUS", b"CO\xff\xfeRPUS"), {400}),
    ("lone surrogate", "/telemetry", _point.replace(b"CORPUS", b"CO\\ud800RPUS"), {400, 422}),
    ("byte-order mark", "/telemetry", b"\xef\xbb\xbf" + _point, {400}),
    ("nul bytes", "/telemetry", b"\x00" * 1000, {400}),
    ("a string", "/telemetry", b'"just a string"', {422}),
    (
        "100k keys",
        "/telemetry",
        json.dumps({**{f"k{i}": i for i in range(100_000)}, **POINT}).encode(),
        {202},
    ),
    ("empty array", "/telemetry/batch", b"[]", {400}),
    ("array of nulls", "/telemetry/batch", b"[null, null]", {422}),
]


@pytest.mark.parametrize(("name", "path", "body", "statuses"), CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_gets_clear_answers(
    fuzz_service: ServiceProcess, name: str, path: str, body: bytes, statuses: set[int]
) -> None:
    ctype = "application/x-ndjson" if path.endswith("ndjson") else "application/json"
    status, _, raw = http("POST", fuzz_service.url + path, body, {"Content-Type": ctype})
    assert status in statuses, (name, status, raw[:300])
    doc = json.loads(raw)
    assert doc.get("error") or doc.get("errors") or status == 202
    assert http("GET", fuzz_service.url + "/health")[0] == 200


def test_duplicate_keys_last_one_wins(fuzz_service: ServiceProcess) -> None:
    body = (
        b'{"satellite_id": "DUP-first", "battery_charge_percent": 50, "storage_usage_mb": 1,'
        b' "signal_strength_dbm": -40, "satellite_id": "DUP-last", "battery_charge_percent": 7}'
    )
    status, _, raw = http(
        "POST", fuzz_service.url + "/telemetry", body, {"Content-Type": "application/json"}
    )
    assert status == 202 and json.loads(raw)["satellite_id"] == "DUP-last"
    assert fuzz_service.wait_count(1, where="satellite_id = 'DUP-last'") == 1
    rows = fuzz_service.query(
        "SELECT battery_charge_percent FROM telemetry WHERE satellite_id LIKE 'DUP-%'"
    )
    assert rows == [[7]]
