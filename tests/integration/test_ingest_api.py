"""The seed API against a real `orbitstream serve` process and the embedded store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import ServiceProcess, free_port, http, post_json, rfc3339

pytestmark = pytest.mark.integration

GOOD = {
    "satellite_id": "TEST-01",
    "battery_charge_percent": 85.5,
    "storage_usage_mb": 45000.0,
    "signal_strength_dbm": -55.0,
}


def test_single_point_health_and_store(service: ServiceProcess) -> None:
    status, doc = post_json(service.url + "/telemetry", GOOD)
    assert status == 202
    assert doc == {"status": "accepted", "satellite_id": "TEST-01", "ack": "memory"}
    status, _, body = http("GET", service.url + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "healthy" and "timestamp" in health
    assert health["sinks"]["chdb"]["status"] == "up"
    assert service.wait_count(1) == 1
    row = service.query(
        "SELECT satellite_id, battery_charge_percent, storage_usage_mb, "
        "signal_strength_dbm, is_anomaly, anomaly_reasons FROM telemetry"
    )[0]
    assert row == ["TEST-01", 85.5, 45000, -55, False, []]


def test_batch_accepts_valid_and_reports_invalid_by_index(service: ServiceProcess) -> None:
    an_hour_ago = int(time.time()) - 3600
    batch: list[Any] = [
        {**GOOD, "satellite_id": "B-0", "battery_charge_percent": 5.0},
        {**GOOD, "satellite_id": "B-1", "signal_strength_dbm": 12},
        "not an object",
        {**GOOD, "satellite_id": "B-3", "timestamp": rfc3339(an_hour_ago)},
        {"satellite_id": "B-4"},
    ]
    status, doc = post_json(service.url + "/telemetry/batch", batch)
    assert status == 202
    assert doc["status"] == "partial" and doc["accepted"] == 2 and doc["rejected"] == 3
    by_index = {e["index"]: e["errors"] for e in doc["errors"]}
    assert set(by_index) == {1, 2, 4}
    assert [e["field"] for e in by_index[1]] == ["signal_strength_dbm"]
    assert by_index[2][0]["field"] == "$"
    assert {e["field"] for e in by_index[4]} == {
        "battery_charge_percent",
        "storage_usage_mb",
        "signal_strength_dbm",
    }
    assert service.wait_count(2) == 2
    ids = sorted(r[0] for r in service.query("SELECT satellite_id FROM telemetry"))
    assert ids == ["B-0", "B-3"]
    t = service.query("SELECT toString(time) FROM telemetry WHERE satellite_id = 'B-3'")[0][0]
    assert t.startswith(rfc3339(an_hour_ago).replace("T", " ").removesuffix("Z"))
    # B-0 is an anomaly: flagged, with an alert row
    time.sleep(0.3)
    assert service.query(
        "SELECT is_anomaly, anomaly_reasons FROM telemetry WHERE satellite_id='B-0'"
    ) == [[True, ["battery_low"]]]
    assert service.query("SELECT entity_id, rule, state FROM alerts") == [
        ["B-0", "battery_low", "firing"]
    ]


@pytest.mark.parametrize(
    ("path", "body", "ctype", "status", "needle"),
    [
        ("/telemetry", b"{", "application/json", 400, "malformed JSON"),
        ("/telemetry", b"", "application/json", 400, "empty body"),
        ("/telemetry", json.dumps(GOOD).encode(), "text/csv", 415, "content type"),
        (
            "/telemetry",
            b'{"satellite_id": "x y", "battery_charge_percent": 101}',
            "application/json",
            422,
            "satellite_id",
        ),
        ("/telemetry/batch", b"[1,", "application/json", 400, "malformed JSON"),
        ("/telemetry/batch", b"[]", "application/json", 400, "empty batch"),
        ("/telemetry/batch", b'{"a": 1}', "application/json", 422, "array"),
        ("/telemetry/batch", b'[{"satellite_id": 1}]', "application/json", 422, "no valid point"),
        ("/nowhere", b"{}", "application/json", 404, "no route"),
    ],
)
def test_bad_input_is_refused_clearly(
    service: ServiceProcess, path: str, body: bytes, ctype: str, status: int, needle: str
) -> None:
    got, _, raw = http("POST", service.url + path, body, {"Content-Type": ctype})
    assert got == status, raw
    assert needle in raw.decode()
    time.sleep(0.25)
    assert service.count() == 0
    assert http("GET", service.url + "/health")[0] == 200


def test_422_names_every_field(service: ServiceProcess) -> None:
    status, doc = post_json(
        service.url + "/telemetry",
        {
            "satellite_id": "",
            "battery_charge_percent": "x",
            "storage_usage_mb": -1,
            "timestamp": 12,
        },
    )
    assert status == 422
    assert [e["field"] for e in doc["errors"]] == [
        "satellite_id",
        "battery_charge_percent",
        "storage_usage_mb",
        "signal_strength_dbm",
        "timestamp",
    ]


def test_wrong_method_is_405(service: ServiceProcess) -> None:
    status, headers, _ = http("GET", service.url + "/telemetry")
    assert status == 405 and headers["Allow"] == "POST"


def test_body_over_limit_is_413_and_service_survives(service_factory: Any) -> None:
    svc: ServiceProcess = service_factory({"ORBITSTREAM_MAX_BODY_BYTES": "4096"})
    big = json.dumps([GOOD] * 100).encode()
    assert len(big) > 4096
    status, _, body = http(
        "POST", svc.url + "/telemetry/batch", big, {"Content-Type": "application/json"}
    )
    assert status == 413 and b"limit" in body
    # chunked body without Content-Length, over the limit, also refused
    with socket.create_connection(("127.0.0.1", svc.port)) as s:
        s.sendall(
            b"POST /telemetry/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
        assert s.recv(100).startswith(b"HTTP/1.1 413")
    assert post_json(svc.url + "/telemetry", GOOD)[0] == 202


def test_ndjson_streams_and_reports_lines(service: ServiceProcess) -> None:
    start_ns = time.time_ns() - 60 * 10**9
    lines = [
        json.dumps({**GOOD, "satellite_id": f"N-{i}", "timestamp": start_ns + i})
        for i in range(12_000)
    ]
    lines.insert(5, "{oops")
    lines.insert(9000, json.dumps({**GOOD, "battery_charge_percent": 300}))
    body = ("\n".join(lines) + "\n").encode()
    status, _, raw = http(
        "POST", service.url + "/telemetry/ndjson", body, {"Content-Type": "application/x-ndjson"}
    )
    doc = json.loads(raw)
    assert status == 202, doc
    assert doc["accepted"] == 12_000 and doc["rejected"] == 2
    assert [e["line"] for e in doc["errors"]] == [6, 9001]
    assert service.wait_count(12_000) == 12_000


def test_expect_100_continue_and_pipelining(service: ServiceProcess) -> None:
    body = json.dumps(GOOD).encode()
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        s.sendall(
            b"POST /telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        req = (
            b"POST /telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        s.sendall(body + req * 3)
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"HTTP/1.1 202") < 4 and time.monotonic() < deadline:
            data += s.recv(65536)
    assert data.count(b"HTTP/1.1 202") == 4
    assert service.wait_count(4) == 4


def test_ack_mode_sink_means_committed(service_factory: Any) -> None:
    svc: ServiceProcess = service_factory(
        {"ORBITSTREAM_ACK_MODE": "sink", "BATCH_TIMEOUT": "200ms"}
    )
    for i in range(3):
        status, doc = post_json(svc.url + "/telemetry", {**GOOD, "satellite_id": f"S-{i}"})
        assert status == 202 and doc["ack"] == "sink"
        assert svc.count() == i + 1  # visible as soon as acknowledged
    status, doc = post_json(
        svc.url + "/telemetry/batch", [{**GOOD, "satellite_id": f"T-{i}"} for i in range(50)]
    )
    assert status == 202 and doc["ack"] == "sink" and svc.count() == 53


def test_backpressure_answers_503_with_retry_after(service_factory: Any) -> None:
    svc: ServiceProcess = service_factory(
        {"ORBITSTREAM_MAX_BUFFER_ROWS": "200", "BATCH_SIZE": "100000", "BATCH_TIMEOUT": "3s"}
    )
    batch = [{**GOOD, "satellite_id": f"P-{i}"} for i in range(80)]  # needs 2x room (alerts)
    assert post_json(svc.url + "/telemetry/batch", batch)[0] == 202
    status, headers, body = http(
        "POST",
        svc.url + "/telemetry/batch",
        json.dumps(batch).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 503 and int(headers["Retry-After"]) >= 1 and b"retry" in body
    assert svc.wait_count(80) == 80  # the first batch is written after the linger
    time.sleep(0.5)
    assert svc.count() == 80
    assert post_json(svc.url + "/telemetry/batch", batch)[0] == 202  # room again


def test_metrics_and_openapi(service: ServiceProcess) -> None:
    post_json(service.url + "/telemetry", GOOD)
    post_json(service.url + "/telemetry", {"x": 1})
    service.wait_count(1)
    deadline = time.monotonic() + 10  # the counter moves just after the store commit returns
    while True:
        status, headers, body = http("GET", service.url + "/metrics")
        text = body.decode()
        if (
            'orbitstream_written_rows_total{pipeline="satellites",sink="chdb",table="telemetry"} 1.0'
            in text
        ):
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for needle in (
        'orbitstream_received_total{pipeline="satellites"} 2.0',
        'orbitstream_accepted_total{pipeline="satellites"} 1.0',
        'orbitstream_rejected_total{pipeline="satellites"} 1.0',
        'orbitstream_written_rows_total{pipeline="satellites",sink="chdb",table="telemetry"} 1.0',
        "orbitstream_flush_seconds_bucket",
        "orbitstream_buffer_rows",
        "orbitstream_batches_total",
    ):
        assert needle in text, needle
    for path in ("/no/such/path/1", "/no/such/path/2", "/static/missing.js"):
        assert http("GET", service.url + path)[0] == 404
    text = http("GET", service.url + "/metrics")[2].decode()
    assert "/no/such/path" not in text  # unknown paths share one label: bounded cardinality
    assert 'orbitstream_http_requests_total{route="unmatched",status="404"} 2.0' in text
    assert 'orbitstream_http_requests_total{route="/static/*",status="404"} 1.0' in text
    assert 'orbitstream_http_requests_total{route="/telemetry",status="202"} 1.0' in text
    status, _, body = http("GET", service.url + "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/telemetry", "/telemetry/batch", "/telemetry/ndjson", "/health", "/metrics"} <= set(
        spec["paths"]
    )


def test_malformed_http_gets_400_and_service_lives(service: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", service.port)) as s:
        body = json.dumps(GOOD).encode()
        s.sendall(
            b"POST /telemetry HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        data = b""
        while chunk := s.recv(4096):  # HTTP/1.0 without keep-alive: the server closes
            data += chunk
    assert data.startswith(b"HTTP/1.1 202") and b"Connection: close" in data
    assert http("GET", service.url + "/health")[0] == 200


def test_query_cli_goes_through_the_running_service_then_direct(service: ServiceProcess) -> None:
    import subprocess
    import sys

    assert (
        post_json(
            service.url + "/telemetry/batch", [{**GOOD, "satellite_id": f"Q-{i}"} for i in range(7)]
        )[0]
        == 202
    )
    service.wait_count(7)
    env = {**service.env}
    cmd = [
        sys.executable,
        "-m",
        "orbitstream",
        "query",
        "SELECT count() AS n FROM telemetry",
        "--format",
        "json",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 7}]
    bad = subprocess.run(
        [*cmd[:4], "INSERT INTO telemetry SELECT * FROM telemetry"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "read-only" in bad.stderr.lower()
    assert service.stop() == 0
    out = subprocess.run(
        [*cmd[:4], "SELECT satellite_id FROM telemetry ORDER BY 1 LIMIT 2", "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["satellite_id", "Q-0", "Q-1"]
    dl = subprocess.run(
        [sys.executable, "-m", "orbitstream", "deadletters"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dl.returncode == 0 and "no dead letters" in dl.stderr + dl.stdout


def test_bad_setting_stops_startup_naming_the_variable(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "ORBITSTREAM_DATA_DIR": str(tmp_path), "BATCH_TIMEOUT": "soon"}
    out = subprocess.run(
        [sys.executable, "-m", "orbitstream", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "BATCH_TIMEOUT" in out.stderr


def test_dashboard_rate_is_not_diluted_by_an_unfilled_window(service: ServiceProcess) -> None:
    assert (
        post_json(
            service.url + "/telemetry/batch",
            [{**GOOD, "satellite_id": f"R-{i}"} for i in range(300)],
        )[0]
        == 202
    )
    sent = time.monotonic()
    service.wait_count(300)
    status, _, body = http("GET", service.url + "/api/dashboard/summary")
    summary = json.loads(body)
    elapsed = time.monotonic() - sent
    assert status == 200 and summary["total_points"] == 300
    # all 300 arrived within the last second or so: the rate is ~300/s, not 300/60
    assert 300 / (elapsed + 1.5) <= summary["ingest_rate"] <= 300


def test_a_password_with_any_characters_never_shows_in_errors(tmp_path: Any) -> None:
    secret = "pa/ss@w?rd#1"
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"postgres://alice:{secret}@127.0.0.1:1/orbit",
        "ORBITSTREAM_START_TIMEOUT": "1s",
        "PORT": str(free_port()),
    }
    out = subprocess.run(
        [sys.executable, "-m", "orbitstream", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "DATABASE_URL" in out.stderr
    assert secret not in out.stderr + out.stdout
    assert "pa/ss" not in out.stderr + out.stdout


@pytest.mark.parametrize("minutes", ["-5", "0", "abc", "100000"])
def test_dashboard_minutes_out_of_range_is_422_naming_it(
    service: ServiceProcess, minutes: str
) -> None:
    status, _, body = http(
        "GET", service.url + f"/api/dashboard/series?satellite_id=S-1&minutes={minutes}"
    )
    assert status == 422, body
    doc = json.loads(body)
    assert doc["errors"][0]["field"] == "minutes" and repr(minutes) in doc["errors"][0]["message"]
    assert http("GET", service.url + "/api/dashboard/series?satellite_id=S-1&minutes=5")[0] == 200
