"""Ingest handlers in-process: what a 503 leaves behind (nothing), and what a 202 means."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

import msgspec

from orbitstream.core.context import PipelineContext
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.pipelines import satellites
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sinks.memory import MemorySink
from orbitstream.sources.http.ingest import IngestHandlers
from orbitstream.sources.http.server import Request, Response, Router

POINT = {
    "satellite_id": "A-1",
    "battery_charge_percent": 3.0,  # below the battery rule: fires an alert
    "storage_usage_mb": 1.0,
    "signal_strength_dbm": -40.0,
}


def context(pipeline: Pipeline, sink: MemorySink) -> PipelineContext:
    return PipelineContext(
        pipeline,
        satellites.tables(),
        metrics=pipeline.metrics,
        store=sink,  # type: ignore[arg-type]
        router=Router(),
        dead_letters=FileDeadLetters(Path("/nonexistent/dl.jsonl")),
    )


async def started(
    tmp_path: Path, sink: MemorySink, limits: PipelineLimits, ack_mode: Literal["memory", "sink"]
) -> tuple[Pipeline, satellites.SatelliteMapper, IngestHandlers]:
    """A started satellites pipeline on ``sink``, its mapper and its HTTP handlers."""
    pipeline = Pipeline(
        "satellites",
        satellites.tables(),
        [sink],
        limits=limits,
        retry=RetryPolicy(base_secs=0.01, max_secs=0.02),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )
    await pipeline.start()
    mapper = satellites.SatelliteMapper(satellites.threshold_rules(), pipeline.metrics)
    handlers = IngestHandlers(
        context(pipeline, sink), satellites.SatelliteIngest(mapper), pipeline.metrics, ack_mode
    )
    return pipeline, mapper, handlers


def request(path: str, doc: object) -> Request:
    return Request(
        "POST", path, "", {"content-type": "application/json"}, msgspec.json.encode(doc), "::1"
    )


async def answer(result: Response | object) -> Response:
    if isinstance(result, Response):
        return result
    assert asyncio.iscoroutine(result)
    out = await result
    assert isinstance(out, Response)
    return out


async def test_an_alert_refused_with_503_fires_when_the_point_is_accepted(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    pipeline, mapper, handlers = await started(
        tmp_path, sink, PipelineLimits(batch_size=10, linger_secs=0.01, max_buffer_rows=3), "memory"
    )
    filler = msgspec.convert(
        {**POINT, "satellite_id": "F-1", "battery_charge_percent": 50.0}, satellites.Point
    )
    pipeline.submit(mapper.map([filler, filler]).rows)  # 2 of 3 rows: no room for a point
    refused = await answer(handlers.telemetry(request("/telemetry", POINT)))
    assert refused.status == 503
    assert mapper.alerts.active == {}  # the 503 changed nothing
    sink.down = False
    deadline = asyncio.get_running_loop().time() + 5
    while pipeline.lanes[0].rows and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    accepted = await answer(handlers.telemetry(request("/telemetry", POINT)))  # the retry
    assert accepted.status == 202, accepted.body
    await pipeline.close()
    firing = [r for r in sink.rows("alerts") if r[2] == "A-1"]
    assert [(r[3], r[4]) for r in firing] == [("battery_low", "firing")]  # not lost
    assert mapper.alerts.active == {"A-1": ("battery_low",)}


async def test_sink_mode_202_counts_only_committed_rows(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.reject = lambda r: r[1] == "BAD"  # the store refuses one satellite's rows
    pipeline, _, handlers = await started(
        tmp_path, sink, PipelineLimits(batch_size=100, linger_secs=0.01), "sink"
    )
    ok = {**POINT, "battery_charge_percent": 50.0}
    batch = [{**ok, "satellite_id": f"G-{i}"} for i in range(5)] + [{**ok, "satellite_id": "BAD"}]
    response = await answer(handlers.batch(request("/telemetry/batch", batch)))
    doc = json.loads(response.body)
    assert response.status == 202 and doc["status"] == "partial", doc
    assert doc["accepted"] == 6 and doc["dead_lettered"] == {"memory": 1}
    single = await answer(handlers.telemetry(request("/telemetry", {**ok, "satellite_id": "BAD"})))
    assert single.status == 422 and json.loads(single.body)["dead_lettered"] == {"memory": 1}
    await pipeline.close()
    assert len(sink.rows("telemetry")) == 5


async def test_requests_wait_undecoded_while_the_writers_are_behind(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.write_delay_secs = 0.05
    pipeline, mapper, handlers = await started(
        tmp_path, sink, PipelineLimits(batch_size=10, linger_secs=60, max_merge_rows=10), "memory"
    )
    ok = {**POINT, "battery_charge_percent": 50.0}
    filler = msgspec.convert({**ok, "satellite_id": "F-1"}, satellites.Point)
    pipeline.submit(mapper.map([filler] * 40).rows)  # the mark: 4 batches of 10
    batch = [{**ok, "satellite_id": f"W-{i}"} for i in range(20)]
    waiting = handlers.batch(request("/telemetry/batch", batch))
    single = handlers.telemetry(request("/telemetry", {**ok, "satellite_id": "S-1"}))
    assert not isinstance(waiting, Response) and not isinstance(single, Response)
    received = pipeline.metrics.counters["received"][("satellites",)]
    assert received == 0  # neither was read yet: the writers have the loop
    answers = await asyncio.gather(answer(waiting), answer(single))
    assert [a.status for a in answers] == [202, 202], [a.body for a in answers]
    await pipeline.close()
    ids = {r[1] for r in sink.rows("telemetry")}
    assert len(sink.rows("telemetry")) == 61 and {"W-0", "W-19", "S-1"} <= ids


async def test_a_batch_larger_than_the_whole_buffer_is_taken_when_the_buffer_is_empty(
    tmp_path: Path,
) -> None:
    """ORBITSTREAM_MAX_BUFFER_ROWS below a batch: 202 once the buffer is empty (it was
    503 for ever: the batch could never fit); 503 while the buffer holds rows."""
    sink = MemorySink()
    sink.down = True
    pipeline, _, handlers = await started(
        tmp_path, sink, PipelineLimits(batch_size=10, linger_secs=0.01, max_buffer_rows=5), "memory"
    )
    ok = {**POINT, "battery_charge_percent": 50.0}
    batch = [{**ok, "satellite_id": f"B-{i}"} for i in range(20)]
    first = await answer(handlers.batch(request("/telemetry/batch", batch)))
    assert first.status == 202, first.body
    second = await answer(handlers.batch(request("/telemetry/batch", batch)))
    assert second.status == 503 and ("Retry-After", "1") in second.headers, second.body
    sink.down = False
    deadline = asyncio.get_running_loop().time() + 5
    while pipeline.lanes[0].rows and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    third = await answer(handlers.batch(request("/telemetry/batch", batch)))
    assert third.status == 202, third.body
    await pipeline.close()
    assert len(sink.rows("telemetry")) == 40
