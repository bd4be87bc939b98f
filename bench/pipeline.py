"""In-process hot path benchmark: rows as tuples (today's code) vs columnar (Arrow).

No HTTP, no store: CPU time of this thread (``time.thread_time``) per point for each stage
decode -> validate -> map -> detect -> batch -> encode for the sink, for

- (a) tuples: today's code, imported (``Decoder(list[Point])``, ``SatelliteMapper.map``,
  ``Batcher.add``, ``sinks.arrow.to_ipc_stream``, ``CopyEncoder``);
- (b) columnar: ``pipelines.satellites_columnar`` + ``core.columns`` + ``pgpq``;

for two shapes: satellites (1000-point batch bodies, RFC 3339 timestamps, ~2 % anomalous
points) and Starlink-shaped responses (the row shape of the Starlink mapper on
wip/starlink: device_type, device_id, ts_ns, metrics map (30 keys), info map (10 keys),
three address lists, received_at). Each stage's input is made beforehand; every figure is
the median of ``--rounds`` rounds, with the spread (max-min over median).

``--sinks`` adds the sink-level shares at batch size 1000: chDB's own ``send_insert`` of
pre-encoded Arrow bytes vs ``ChdbSink.write``; a pre-encoded binary ``COPY`` into the
satellites layout vs ``PostgresSink.write`` (wall time; PostgreSQL on ``--pg``).
``--check-pg`` copies pgpq's and our bytes of the same rows into PostgreSQL and compares
what is stored.

Usage: ``.venv/bin/python bench/pipeline.py [--rounds 7] [--sinks] [--check-pg]``
For instruction counts: ``valgrind --tool=callgrind .venv/bin/python bench/pipeline.py
--only NAME --reps N`` minus the same with ``--reps 0``.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import datetime as dt
import gc
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orbitstream.core.batch import Batch, Row
from orbitstream.core.columns import (
    MapColumnBuilder,
    arrow_schema,
    ipc_stream,
    maps_from_columns,
    reason_lists,
    reason_lists_by_code,
)
from orbitstream.core.pipeline import Batcher, PipelineLimits
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.pipelines.satellites import (
    TELEMETRY_TABLE,
    Point,
    SatelliteMapper,
    threshold_rules,
)
from orbitstream.pipelines.satellites_columnar import (
    commit_columns,
    decode_columns,
    map_columns,
)
from orbitstream.sinks.arrow import to_ipc_stream
from orbitstream.sinks.postgres.arrow_copy import ArrowCopyEncoder
from orbitstream.sinks.postgres.encoding import CopyEncoder

TARGET_POINTS_PER_SEC = 1_000_000

# -- inputs ------------------------------------------------------------------------------


def satellite_body(n: int, seed: int, now: float, form: str = "rfc3339") -> bytes:
    """A batch body of ``n`` points, round robin over 100 satellites, ~1 % anomalous in
    episodes of 5 samples (the simulator's default rate and kind: persistent faults).

    :param form: ``rfc3339`` (the seed's API form) or ``epoch`` (integer epoch ns, what
        ``orbitstream simulate`` sends).
    """
    r = random.Random(seed)
    episode = dict.fromkeys(range(100), 0)
    points = []
    for i in range(n):
        sat = i % 100
        if episode[sat] == 0 and r.random() < 0.01 / 5:
            episode[sat] = 5
        odd = episode[sat] > 0
        episode[sat] = max(0, episode[sat] - 1)
        t = now - (n - i) * 0.001
        points.append(
            {
                "satellite_id": f"SAT-{sat:04d}",
                "battery_charge_percent": r.uniform(2, 6) if odd else r.uniform(15, 100),
                "storage_usage_mb": r.uniform(1000, 90000),
                "signal_strength_dbm": r.uniform(-95, -40),
                "timestamp": dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
                if form == "rfc3339"
                else int(t * 1e9),
            }
        )
    return msgspec.json.encode(points)


METRICS = [f"Metric{i:02d}" for i in range(30)]
INFO = [f"Info{i:02d}" for i in range(10)]
SL_COLUMNS = ["DeviceType", "UtcTimestampNs", "DeviceId", *METRICS, *INFO, "ActiveAlerts"]


def starlink_body(n: int, seed: int, now_ns: int) -> bytes:
    """A stream response of ``n`` UserTerminal rows (30 numbers, 10 strings, alerts)."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        nums: list[object] = [
            (r.randint(0, 10**6) if j % 5 == 0 else round(r.uniform(0, 1000), 4))
            for j in range(len(METRICS))
        ]
        texts = [f"{name.lower()}-{r.randint(0, 9)}" for name in INFO]
        rows.append(
            ["u", now_ns - (n - i) * 1_000_000, f"ut{i % 2000:08x}-0000-0000", *nums, *texts, []]
        )
    return msgspec.json.encode(
        {
            "data": {"values": rows, "columnNamesByDeviceType": {"u": SL_COLUMNS}},
            "metadata": {"enums": {"DeviceType": {"u": "UserTerminal"}}},
        }
    )


# The Starlink telemetry table as on wip/starlink (same columns, same order).
STARLINK_TABLE = Table(
    name="telemetry",
    columns=(
        Column("device_type", ColType.STRING, low_cardinality=True),
        Column("device_id", ColType.STRING, low_cardinality=True),
        Column("ts_ns", ColType.TIMESTAMP),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR),
        Column("ipv4", ColType.STRING_LIST),
        Column("ipv6_ue", ColType.STRING_LIST),
        Column("ipv6_cpe", ColType.STRING_LIST),
        Column("received_at", ColType.TIMESTAMP),
    ),
    time_column="ts_ns",
    order_by=("device_id", "ts_ns"),
    entity_column="device_id",
)


class _Data(msgspec.Struct):
    values: list[Any] | None = None
    columnNamesByDeviceType: dict[str, list[str]] | None = None


class _Envelope(msgspec.Struct):
    data: _Data
    metadata: Any = None


_SL_DECODER = msgspec.json.Decoder(_Envelope)
_MIN_NS, _MAX_NS = 946_684_800_000_000_000, 2**63 - 1


# -- Starlink, tuples: the wip/starlink mapper's approach (per-signature dict displays) --


def _display_builder(
    metrics: list[tuple[str, int]], info: list[tuple[str, int]]
) -> Callable[[list[Any]], tuple[dict[str, Any], dict[str, Any]]]:
    def item(i: int) -> ast.expr:
        return ast.Subscript(ast.Name("row", ast.Load()), ast.Constant(i), ast.Load())

    def display(items: list[tuple[str, int]]) -> ast.Dict:
        return ast.Dict([ast.Constant(k) for k, _ in items], [item(i) for _, i in items])

    args = ast.arguments(
        posonlyargs=[], args=[ast.arg("row")], kwonlyargs=[], kw_defaults=[], defaults=[]
    )
    body = ast.Return(ast.Tuple([display(metrics), display(info)], ast.Load()))
    fn = ast.FunctionDef(name="build", args=args, body=[body], decorator_list=[], returns=None)
    module = ast.fix_missing_locations(ast.Module([fn], type_ignores=[]))
    namespace: dict[str, Any] = {}
    exec(compile(module, "<bench-shape>", "exec"), namespace)
    return cast(Callable[[list[Any]], tuple[dict[str, Any], dict[str, Any]]], namespace["build"])


class StarlinkTuples:
    """Validate + map one response into the Starlink telemetry rows, row by row."""

    def __init__(self) -> None:
        self.shapes: dict[tuple[type, ...], Callable[..., Any]] = {}

    def validate(self, env: _Envelope, lo: int, hi: int) -> list[list[Any]]:
        columns = (env.data.columnNamesByDeviceType or {})["u"]
        width = len(columns)
        ok = []
        for row in env.data.values or []:
            if type(row) is not list or len(row) != width or row[0] != "u":
                continue
            dev, ts = row[2], row[1]
            if type(dev) is not str or not dev or type(ts) is not int or not lo <= ts <= hi:
                continue
            ok.append(row)
        return ok

    def map(self, rows: list[list[Any]], columns: list[str], received: int) -> list[Row]:
        out: list[Row] = []
        shapes = self.shapes
        none = ()
        for row in rows:
            sig = tuple(map(type, row))
            build = shapes.get(sig)
            if build is None:
                metrics = [
                    (columns[i], i) for i in range(3, len(row) - 1) if sig[i] in (int, float)
                ]
                info = [(columns[i], i) for i in range(3, len(row) - 1) if sig[i] is str]
                build = shapes[sig] = _display_builder(metrics, info)
            m, inf = build(row)
            out.append(("UserTerminal", row[2], row[1], m, inf, none, none, none, received))
        return out


# -- Starlink, columnar ------------------------------------------------------------------


def starlink_validate_columns(env: _Envelope, lo: int, hi: int) -> tuple[list[list[Any]], Any]:
    """Rows of the expected width and type whose time is in the window, and their times."""
    columns = (env.data.columnNamesByDeviceType or {})["u"]
    rows = env.data.values or []
    if set(map(len, rows)) != {len(columns)} or {r[0] for r in rows} != {"u"}:
        raise ValueError("mixed response: the row path decides")
    ts = pa.array([r[1] for r in rows], type=pa.int64())
    ok = pc.and_(pc.greater_equal(ts, lo), pc.less_equal(ts, hi))
    if not pc.all(ok).as_py():
        keep = ok.to_pylist()
        rows = [r for r, k in zip(rows, keep, strict=True) if k]
        ts = ts.filter(ok)
    return rows, ts


def starlink_map_columns(rows: list[list[Any]], ts: Any, columns: list[str], received: int) -> Any:
    """The telemetry record batch, column by column (maps built from offsets)."""
    n = len(rows)
    metric_cols, metric_names, info_cols, info_names = [], [], [], []
    for i in range(3, len(columns) - 1):
        arr = pa.array([r[i] for r in rows])
        if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            metric_cols.append(arr)
            metric_names.append(columns[i])
        elif pa.types.is_string(arr.type):
            info_cols.append(arr)
            info_names.append(columns[i])
        elif not pa.types.is_null(arr.type):
            raise ValueError("a column the bench's columnar mapper does not map")
    empty = pa.array([()] * 1, type=pa.list_(pa.string()))
    no_ips = empty.take(pa.array(np.zeros(n, dtype=np.int64)))
    ns = pa.timestamp("ns", tz="UTC")
    return pa.RecordBatch.from_arrays(
        [
            pa.repeat(pa.scalar("UserTerminal"), n),
            pa.array([r[2] for r in rows], type=pa.string()),
            ts.cast(ns),
            maps_from_columns(metric_cols, metric_names, pa.float64()),
            maps_from_columns(info_cols, info_names, pa.string()),
            no_ips,
            no_ips,
            no_ips,
            pa.repeat(pa.scalar(received, ns), n),
        ],
        schema=arrow_schema(STARLINK_TABLE),
    )


def starlink_map_rowwise_builder(
    rows: list[list[Any]], ts: Any, columns: list[str], received: int
) -> tuple[Any, Any]:
    """The two maps with :class:`MapColumnBuilder` (one append per row)."""
    mb = MapColumnBuilder(pa.float64())
    ib = MapColumnBuilder(pa.string())
    sig_cache: dict[tuple[type, ...], tuple[Any, tuple[int, ...], Any, tuple[int, ...]]] = {}
    for row in rows:
        sig = tuple(map(type, row))
        plan = sig_cache.get(sig)
        if plan is None:
            mi = [i for i in range(3, len(row) - 1) if sig[i] in (int, float)]
            ii = [i for i in range(3, len(row) - 1) if sig[i] is str]
            plan = sig_cache[sig] = (
                itemgetter(*mi),
                mb.key_ids(columns[i] for i in mi),
                itemgetter(*ii),
                ib.key_ids(columns[i] for i in ii),
            )
        mg, mk, ig, ik = plan
        mb.append(mk, mg(row))
        ib.append(ik, ig(row))
    return mb.finish(), ib.finish()


# -- measurement -------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    tuples: float | None = None  # seconds of CPU per point (median)
    columnar: float | None = None
    spread_t: float = 0.0
    spread_c: float = 0.0
    note: str = ""
    in_total: bool = True
    extra: list[tuple[str, float, float]] = field(default_factory=list)


def cpu_per_point(
    fn: Callable[[], object], points: int, reps: int, rounds: int
) -> tuple[float, float]:
    """Median thread CPU seconds per point over ``rounds`` rounds of ``reps`` calls, and
    the spread (max-min)/median."""
    fn()  # warm-up
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = time.thread_time()
        for _ in range(reps):
            fn()
        samples.append((time.thread_time() - start) / max(1, reps) / points)
    med = statistics.median(samples)
    return med, (max(samples) - min(samples)) / med if med else 0.0


def fmt_us(v: float | None) -> str:
    return "—" if v is None else f"{v * 1e6:.3f}"


def fmt_rate(v: float | None) -> str:
    return "—" if not v else f"{1 / v:,.0f}"


def print_table(title: str, stages: list[Stage], batch: int) -> tuple[float, float, float, float]:
    print(f"\n### {title} — batches of {batch:,} points\n")
    print(
        "| stage | tuples µs/pt | columnar µs/pt | tuples pts/s | columnar pts/s | columnar/tuples | spread t / c | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for s in stages:
        ratio = f"{s.columnar / s.tuples:.2f}" if s.tuples and s.columnar else "—"
        print(
            f"| {s.name} | {fmt_us(s.tuples)} | {fmt_us(s.columnar)} | {fmt_rate(s.tuples)} | "
            f"{fmt_rate(s.columnar)} | {ratio} | ±{s.spread_t / 2:.0%} / ±{s.spread_c / 2:.0%} | {s.note} |"
        )
    tot: dict[tuple[str, str], float] = {}
    for sink in ("ipc", "pg"):
        for side in ("t", "c"):
            total = 0.0
            for s in stages:
                if (
                    not s.in_total
                    or (sink == "ipc" and "COPY" in s.name)
                    or (sink == "pg" and "IPC" in s.name)
                ):
                    continue
                v = s.tuples if side == "t" else s.columnar
                total += v or 0.0
            tot[(sink, side)] = total
    for sink, label in (
        ("ipc", "total → chDB/ClickHouse (Arrow IPC)"),
        ("pg", "total → PostgreSQL (binary COPY)"),
    ):
        t, c = tot[(sink, "t")], tot[(sink, "c")]
        print(
            f"| **{label}** | **{fmt_us(t)}** | **{fmt_us(c)}** | **{fmt_rate(t)}** | "
            f"**{fmt_rate(c)}** | **{c / t:.2f}** | | |"
        )
    return tot[("ipc", "t")], tot[("ipc", "c")], tot[("pg", "t")], tot[("pg", "c")]


def fake_lane(batch_size: int) -> Any:
    """What :class:`Batcher` reads of its lane (no sink, no writer task)."""
    return SimpleNamespace(
        limits=PipelineLimits(batch_size=batch_size, linger_secs=3600.0),
        pipeline="satellites",
        sink=SimpleNamespace(name="bench"),
        epoch="0",
        concurrency=1,
    )


def drain(batcher: Batcher) -> list[Batch]:
    out = []
    while not batcher.queue.empty():
        item = batcher.queue.get_nowait()
        if item is not None:
            out.append(item)
    return out


# -- satellites ---------------------------------------------------------------------------


async def bench_satellites(
    batch: int, rounds: int, reps: int, numpy_detect: bool, form: str
) -> list[Stage]:
    now = time.time()
    received = time.time_ns()
    per_body = 1000
    bodies = [
        satellite_body(per_body, seed, now, form) for seed in range(max(1, batch // per_body))
    ]
    n_total = per_body * len(bodies)
    decoder = msgspec.json.Decoder(list[Point])
    mapper = SatelliteMapper(threshold_rules())
    cmapper = SatelliteMapper(threshold_rules())
    # some alerts already open: the realistic steady state
    warm = satellite_body(per_body, 99, now - 1, form)
    mapper.commit(mapper.map(decoder.decode(warm), received))
    commit_columns(cmapper, map_columns(cmapper, cast(Any, decode_columns(warm)), received))
    points = [decoder.decode(b) for b in bodies]
    cols = [decode_columns(b) for b in bodies]
    assert all(c is not None for c in cols)
    mapped = [mapper.map(p, received) for p in points]
    cmapped = [map_columns(cmapper, cast(Any, c), received) for c in cols]
    stages: list[Stage] = []

    def run(
        fn_t: Callable[[], object] | None,
        fn_c: Callable[[], object] | None,
        name: str,
        note: str = "",
        in_total: bool = True,
    ) -> Stage:
        s = Stage(name, note=note, in_total=in_total)
        if fn_t is not None:
            s.tuples, s.spread_t = cpu_per_point(fn_t, n_total, reps, rounds)
        if fn_c is not None:
            s.columnar, s.spread_c = cpu_per_point(fn_c, n_total, reps, rounds)
        stages.append(s)
        return s

    run(
        lambda: [decoder.decode(b) for b in bodies],
        lambda: [_LOOSE_DECODE(b) for b in bodies],
        "decode (msgspec)",
        "tuples: every constraint; columnar: all but id pattern and RFC 3339 parse",
    )
    loose = [_LOOSE_DECODE(b) for b in bodies]
    run(
        None,
        lambda: [_validate_columns(p) for p in loose],
        "validate: id pattern, RFC 3339",
        "per distinct id; Arrow parse of the time column",
    )
    run(
        lambda: [mapper.map(p, received) for p in points],
        lambda: [map_columns(cmapper, cast(Any, c), received) for c in cols],
        "validate window + map + detect",
        "tuples: SatelliteMapper.map (one loop); columnar: map_columns (alerts included)",
    )
    # columnar sub-stages (inside map_columns above; shown for where the time goes)
    c0 = cast(Any, cols[0])
    arrs = [
        pa.array(c0.battery_charge_percent),
        pa.array(c0.storage_usage_mb),
        pa.array(c0.signal_strength_dbm),
    ]
    rules = threshold_rules().rules
    ops = {"<": pc.less, ">": pc.greater}
    scale = len(bodies)
    sub: list[tuple[str, Callable[[], object]]] = [
        (
            "  · arrays from lists",
            lambda: [
                pa.array(c.satellite_id, pa.string())
                and [
                    pa.array(v, pa.float64())
                    for v in (c.battery_charge_percent, c.storage_usage_mb, c.signal_strength_dbm)
                ]
                for c in cast(Any, cols)
            ],
        ),
        (
            "  · detect: flags + reasons by lookup (pyarrow.compute)",
            lambda: [
                reason_lists_by_code(
                    [ops[r.op](a, r.threshold) for r, a in zip(rules, arrs, strict=True)],
                    [r.rule for r in rules],
                )
                for _ in range(scale)
            ],
        ),
        (
            "  · detect: flags + reasons from offsets (pyarrow.compute)",
            lambda: [
                reason_lists(
                    [ops[r.op](a, r.threshold) for r, a in zip(rules, arrs, strict=True)],
                    [r.rule for r in rules],
                )
                for _ in range(scale)
            ],
        ),
    ]
    if numpy_detect:
        npa = [a.to_numpy() for a in arrs]

        def numpy_detect_fn() -> object:
            out = []
            for _ in range(scale):
                flags = [
                    (npa[k] < r.threshold) if r.op == "<" else (npa[k] > r.threshold)
                    for k, r in enumerate(rules)
                ]
                code = flags[0].astype(np.int16) + 2 * flags[1] + 4 * flags[2]
                out.append(
                    reason_lists_by_code(
                        [pa.array(f) for f in flags],
                        [r.rule for r in rules],
                        pa.array(code.astype(np.int16)),
                    )
                )
            return out

        sub.append(("  · detect: flags + reasons by lookup (numpy)", numpy_detect_fn))
    for name, fn in sub:
        run(None, fn, name, "part of the row above", in_total=False)

    # batch: today's Batcher vs the columnar accumulator
    batcher = Batcher(cast(Any, fake_lane(batch)), TELEMETRY_TABLE)
    cbatcher = Batcher(cast(Any, fake_lane(batch)), TELEMETRY_TABLE)
    tel_rows = [m.rows["telemetry"] for m in mapped]
    tel_cols = [m.telemetry for m in cmapped]

    def batch_tuples() -> object:
        for rows in tel_rows:
            batcher.add(rows, None)
        return drain(batcher)

    def batch_columns() -> object:
        for data in tel_cols:
            cbatcher.add(data, None)
        return drain(cbatcher)

    run(
        batch_tuples,
        batch_columns,
        f"batch (to {batch:,})",
        "Batcher.add of tuples vs of record batches (+ concat)",
    )
    tb = cast(list[Batch], batch_tuples())[0]
    cb = cast(list[Batch], batch_columns())[0]
    assert tb.rows == cb.rows, "columnar rows differ from tuple rows"
    copy_ours = CopyEncoder(TELEMETRY_TABLE)
    copy_pgpq = ArrowCopyEncoder(TELEMETRY_TABLE)
    k = n_total // batch
    run(
        lambda: [to_ipc_stream(tb) for _ in range(k)],
        lambda: [ipc_stream(cb.data) for _ in range(k)],
        "encode Arrow IPC (chDB / ClickHouse)",
        "to_ipc_stream(Batch) vs ipc_stream(RecordBatch)",
    )
    run(
        lambda: [copy_ours.encode(tb.rows) for _ in range(k)],
        lambda: [copy_pgpq.encode(cb.data) for _ in range(k)],
        "encode binary COPY (PostgreSQL)",
        "CopyEncoder (ours) vs pgpq",
    )
    return stages


def _LOOSE_DECODE(body: bytes) -> Any:
    from orbitstream.pipelines.satellites_columnar import _LOOSE

    return _LOOSE.decode(body)


def _validate_columns(points: Any) -> object:
    from orbitstream.pipelines.satellites_columnar import _ID_SEARCH, PointColumns, _times

    cols = PointColumns.from_points(points)
    assert all(map(_ID_SEARCH, set(cols.satellite_id)))
    return _times(cols.timestamps)


# -- Starlink -----------------------------------------------------------------------------


async def bench_starlink(batch: int, rounds: int, reps: int) -> list[Stage]:
    now_ns = time.time_ns()
    n = max(batch, 10_000)
    body = starlink_body(n, 7, now_ns)
    lo, hi = now_ns - 86_400 * 10**9, now_ns + 3600 * 10**9
    env = _SL_DECODER.decode(body)
    columns = (env.data.columnNamesByDeviceType or {})["u"]
    tup = StarlinkTuples()
    rows_ok = tup.validate(env, lo, hi)
    crow, cts = starlink_validate_columns(env, lo, hi)
    stages: list[Stage] = []

    def run(
        fn_t: Callable[[], object] | None,
        fn_c: Callable[[], object] | None,
        name: str,
        note: str = "",
        in_total: bool = True,
    ) -> Stage:
        s = Stage(name, note=note, in_total=in_total)
        if fn_t is not None:
            s.tuples, s.spread_t = cpu_per_point(fn_t, n, reps, rounds)
        if fn_c is not None:
            s.columnar, s.spread_c = cpu_per_point(fn_c, n, reps, rounds)
        stages.append(s)
        return s

    run(
        lambda: _SL_DECODER.decode(body),
        lambda: _SL_DECODER.decode(body),
        "decode (msgspec envelope)",
        "same for both",
    )
    run(
        lambda: tup.validate(env, lo, hi),
        lambda: starlink_validate_columns(env, lo, hi),
        "validate (width, ids, time window)",
        "row loop vs one column pass",
    )
    run(
        lambda: tup.map(rows_ok, columns, now_ns),
        lambda: starlink_map_columns(crow, cts, columns, now_ns),
        "map (rows with dicts vs record batch)",
        "tuples: per-shape dict displays; columnar: maps_from_columns",
    )
    run(
        None,
        lambda: starlink_map_rowwise_builder(crow, cts, columns, now_ns),
        "  · maps by MapColumnBuilder (row-wise appends)",
        "alternative to the row above",
        in_total=False,
    )
    stages.append(
        Stage(
            "detect",
            note="n/a: Starlink alerts are the rows' alert codes (map stage)",
            in_total=False,
        )
    )
    trows = tup.map(rows_ok, columns, now_ns)
    crb = starlink_map_columns(crow, cts, columns, now_ns)
    batcher = Batcher(cast(Any, fake_lane(batch)), STARLINK_TABLE)
    cbatcher = Batcher(cast(Any, fake_lane(batch)), STARLINK_TABLE)
    per = 1000
    tparts = [trows[i : i + per] for i in range(0, n, per)]
    cparts = [crb.slice(i, per) for i in range(0, n, per)]

    def batch_tuples() -> object:
        for rows in tparts:
            batcher.add(rows, None)
        return drain(batcher)

    def batch_columns() -> object:
        for data in cparts:
            cbatcher.add(data, None)
        return drain(cbatcher)

    run(batch_tuples, batch_columns, f"batch (1000-row pieces to {batch:,})", "")
    tbs = cast(list[Batch], batch_tuples())
    cbs = cast(list[Batch], batch_columns())
    assert [r[:3] for r in tbs[0].rows] == [r[:3] for r in cbs[0].rows]
    assert tbs[0].rows[0][3] == cbs[0].rows[0][3] and tbs[0].rows[0][4] == cbs[0].rows[0][4]
    dict_rows = [b.rows for b in tbs]

    def ipc_dicts_as_is() -> object:
        out = []
        for rows in dict_rows:
            arrays = [
                pa.array(list(col), type=cast(Any, arrow_schema(STARLINK_TABLE)).field(i).type)
                for i, col in enumerate(zip(*rows, strict=True))
            ]
            out.append(
                ipc_stream(pa.RecordBatch.from_arrays(arrays, schema=arrow_schema(STARLINK_TABLE)))
            )
        return out

    run(
        lambda: [to_ipc_stream(b) for b in tbs],
        lambda: [ipc_stream(b.data) for b in cbs],
        "encode Arrow IPC (chDB / ClickHouse)",
        "tuples: to_ipc_stream (maps as item lists)",
    )
    run(
        ipc_dicts_as_is,
        None,
        "  · IPC with pa.array(list of dicts)",
        "tuples, dicts handed to pyarrow as they are",
        in_total=False,
    )
    ours = CopyEncoder(STARLINK_TABLE)
    pq = ArrowCopyEncoder(STARLINK_TABLE)
    run(
        lambda: [ours.encode(b.rows) for b in tbs],
        lambda: [pq.encode(b.data) for b in cbs],
        "encode binary COPY (PostgreSQL)",
        "maps as jsonb: msgspec per dict vs vectorized JSON text + pgpq",
    )
    return stages


# -- PostgreSQL: are pgpq's bytes stored as ours? ----------------------------------------


def check_pg(url: str) -> list[str]:
    import psycopg

    from orbitstream.sinks.postgres.ddl import column_type

    out = []
    now = time.time()
    rec = time.time_ns()
    cols = decode_columns(satellite_body(1000, 3, now))
    m = SatelliteMapper(threshold_rules())
    sat = map_columns(m, cast(Any, cols), rec).telemetry
    sl = starlink_map_columns(
        *starlink_validate_columns(_SL_DECODER.decode(starlink_body(1000, 4, rec)), 0, 2**63 - 1),
        SL_COLUMNS,
        rec,
    )
    with psycopg.connect(url, autocommit=True) as conn:
        for table, data in ((TELEMETRY_TABLE, sat), (STARLINK_TABLE, sl)):
            rows = Batch(table, data, "x").rows
            defs = ", ".join(f'"{c.name}" {column_type(c)} NOT NULL' for c in table.columns)
            stored = []
            for name, payload in (
                ("ours", CopyEncoder(table).encode(rows)),
                ("pgpq", ArrowCopyEncoder(table).encode(data)),
            ):
                tmp = f"bench_check_{name}_{os.getpid()}"
                conn.execute(f"CREATE TEMP TABLE {tmp} ({defs})")
                with (
                    conn.cursor() as cur,
                    cur.copy(f"COPY {tmp} FROM STDIN (FORMAT BINARY)") as copy,
                ):
                    copy.write(payload)
                order = ", ".join(f'"{c}"' for c in table.order_by)
                stored.append(conn.execute(f"SELECT * FROM {tmp} ORDER BY {order}").fetchall())
                conn.execute(f"DROP TABLE {tmp}")
            same = stored[0] == stored[1]
            equal_bytes = CopyEncoder(table).encode(rows) == ArrowCopyEncoder(table).encode(data)
            out.append(
                f"{table.name} ({'satellites' if table is TELEMETRY_TABLE else 'starlink'}): both accepted by PostgreSQL; "
                f"{len(stored[0])} rows; stored values {'identical' if same else 'DIFFERENT'}; bytes "
                f"{'equal' if equal_bytes else 'differ (empty text[] as ndim 1 / JSON number text)'}"
            )
    return out


# -- sinks at batch size 1000 -------------------------------------------------------------


async def bench_sinks(url: str, rounds: int, inserts: int) -> list[str]:
    import shutil
    import tempfile
    import uuid
    from pathlib import Path

    import psycopg

    from orbitstream.sinks.chdb import ChdbSink
    from orbitstream.sinks.postgres.settings import PostgresSettings
    from orbitstream.sinks.postgres.sink import PostgresSink

    lines: list[str] = []
    rec = time.time_ns()
    cols = decode_columns(satellite_body(1000, 5, time.time()))
    data = map_columns(SatelliteMapper(threshold_rules()), cast(Any, cols), rec).telemetry
    cb = Batch(TELEMETRY_TABLE, data, "x")
    rows = cb.rows
    seq = iter(range(10**9))

    async def timed(fn: Callable[[], Any]) -> float:
        await fn()
        start = time.perf_counter()
        for _ in range(inserts):
            await fn()
        return 1000 * inserts / (time.perf_counter() - start)

    # chDB
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-chdb-"))
    sink = ChdbSink(tmp)
    try:
        await sink.start([TELEMETRY_TABLE])
        pre = ipc_stream(data)

        async def ours() -> None:
            await sink.write(Batch(TELEMETRY_TABLE, rows, f"bench-{next(seq)}"))

        async def columnar() -> None:
            bid = f"bench-{next(seq)}"
            await sink._writer.run(
                lambda: sink._insert(
                    TELEMETRY_TABLE.name, sink.dialect.insert_settings(bid), ipc_stream(data)
                )
            )

        def raw_insert() -> None:
            ins = sink._writer.conn.send_insert(
                f"INSERT INTO {TELEMETRY_TABLE.name}", "ArrowStream"
            )
            ins.append(pre)
            ins.finish()

        async def raw() -> None:
            await sink._writer.run(raw_insert)

        res: dict[str, list[float]] = {"ours": [], "col": [], "raw": []}
        for _ in range(rounds):
            res["raw"].append(await timed(raw))
            res["ours"].append(await timed(ours))
            res["col"].append(await timed(columnar))
        med = {k: statistics.median(v) for k, v in res.items()}
        spread = {k: (max(v) - min(v)) / 2 / statistics.median(v) for k, v in res.items()}
        lines.append(
            f"| chDB | send_insert of pre-encoded Arrow (no settings) | {med['raw']:,.0f} ±{spread['raw']:.0%} | 100 % | |"
        )
        lines.append(
            f"| chDB | ChdbSink.write(Batch) (tuples → Arrow, dedup token) | {med['ours']:,.0f} ±{spread['ours']:.0%} | {med['ours'] / med['raw']:.0%} | ≥ 80 % {'PASS' if med['ours'] / med['raw'] >= 0.8 else 'FAIL'} |"
        )
        lines.append(
            f"| chDB | columnar: ipc_stream(RecordBatch) + the sink's insert (dedup token) | {med['col']:,.0f} ±{spread['col']:.0%} | {med['col'] / med['raw']:.0%} | ≥ 80 % {'PASS' if med['col'] / med['raw'] >= 0.8 else 'FAIL'} |"
        )
    finally:
        await sink.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # PostgreSQL
    name = f"os_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    db_url = url.rpartition("/")[0] + "/" + name
    pg = PostgresSink(PostgresSettings(dsn=db_url, max_connections=4))
    try:
        await pg.start([TELEMETRY_TABLE])
        encoded = CopyEncoder(TELEMETRY_TABLE).encode(rows)
        aconn = await psycopg.AsyncConnection.connect(db_url)
        copy_sql = f'COPY "{TELEMETRY_TABLE.name}" ({", ".join(chr(34) + c + chr(34) for c in TELEMETRY_TABLE.column_names)}) FROM STDIN (FORMAT BINARY)'

        async def pg_ours() -> None:
            await pg.write(Batch(TELEMETRY_TABLE, rows, f"bench-{next(seq)}"))

        async def pg_raw() -> None:
            async with aconn.cursor() as cur, cur.copy(copy_sql) as copy:
                await copy.write(encoded)
            await aconn.commit()

        pq = ArrowCopyEncoder(TELEMETRY_TABLE)

        async def pg_raw_pgpq() -> None:
            async with aconn.cursor() as cur, cur.copy(copy_sql) as copy:
                await copy.write(pq.encode(data))
            await aconn.commit()

        async def pg_columnar() -> None:
            """PostgresSink.write of the same rows as one record batch (pgpq COPY, Arrow
            rollup aggregates appended by COPY)."""
            await pg.write(Batch(TELEMETRY_TABLE, data, f"bench-{next(seq)}"))

        res = {"ours": [], "raw": [], "pgpq": [], "col": []}
        for _ in range(rounds):
            res["raw"].append(await timed(pg_raw))
            res["ours"].append(await timed(pg_ours))
            res["pgpq"].append(await timed(pg_raw_pgpq))
            res["col"].append(await timed(pg_columnar))
        await aconn.close()
        med = {k: statistics.median(v) for k, v in res.items()}
        spread = {k: (max(v) - min(v)) / 2 / statistics.median(v) for k, v in res.items()}
        lines.append(
            f"| PostgreSQL | pre-encoded binary COPY into the satellites layout (one transaction) | {med['raw']:,.0f} ±{spread['raw']:.0%} | 100 % | |"
        )
        lines.append(
            f"| PostgreSQL | PostgresSink.write(Batch of tuples) (ledger + COPY + rollup deltas) | {med['ours']:,.0f} ±{spread['ours']:.0%} | {med['ours'] / med['raw']:.0%} | ≥ 70 % {'PASS' if med['ours'] / med['raw'] >= 0.7 else 'FAIL'} |"
        )
        lines.append(
            f"| PostgreSQL | COPY with pgpq encoding inline (no ledger, no rollup) | {med['pgpq']:,.0f} ±{spread['pgpq']:.0%} | {med['pgpq'] / med['raw']:.0%} | |"
        )
        lines.append(
            f"| PostgreSQL | PostgresSink.write(columnar Batch) (ledger + pgpq COPY + rollup deltas) | {med['col']:,.0f} ±{spread['col']:.0%} | {med['col'] / med['raw']:.0%} | ≥ 70 % {'PASS' if med['col'] / med['raw'] >= 0.7 else 'FAIL'} |"
        )
    finally:
        await pg.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return lines


async def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=0, help="calls per round (default: by size)")
    ap.add_argument("--only", choices=["satellites", "starlink", "none"], default=None)
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 1000, 10000)")
    ap.add_argument("--numpy", action="store_true", help="also the numpy variant of detect")
    ap.add_argument("--sinks", action="store_true", help="sink-level shares at batch 1000")
    ap.add_argument("--sink-rounds", type=int, default=5)
    ap.add_argument("--check-pg", action="store_true", help="pgpq vs ours stored in PostgreSQL")
    ap.add_argument(
        "--pg",
        default=os.environ.get(
            "ORBITSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # alert log lines of the mappers' set-up
    sizes = args.batch or [1000, 10_000]
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, pyarrow {pa.__version__}, msgspec {msgspec.__version__}"
    )
    print(
        f"CPU time of this thread; median of {args.rounds} rounds; spread = ±(max-min)/2 over the median"
    )
    gc.set_threshold(50_000, 50, 100)  # the service's collector settings (service.py)
    gc.collect()
    gc.freeze()
    for size in sizes:
        for form in ("epoch", "rfc3339") if args.only in (None, "satellites") else ():
            reps = args.reps or max(2, 20_000 // size)
            stages = await bench_satellites(size, args.rounds, reps, args.numpy, form)
            label = "epoch-ns timestamps" if form == "epoch" else "RFC 3339 timestamps"
            t, c, _, _ = print_table(f"satellites, {label}", stages, size)
            if size == 1000:
                print(
                    f"\nsatellites ({label}) total to chDB, batches of 1000: tuples {1 / t:,.0f} points/s, columnar "
                    f"{1 / c:,.0f} points/s; target {TARGET_POINTS_PER_SEC:,} on one core: tuples "
                    f"{'PASS' if 1 / t >= TARGET_POINTS_PER_SEC else 'FAIL'} ({1 / t / TARGET_POINTS_PER_SEC:.0%}), "
                    f"columnar {'PASS' if 1 / c >= TARGET_POINTS_PER_SEC else 'FAIL'} ({1 / c / TARGET_POINTS_PER_SEC:.0%})"
                )
        if args.only in (None, "starlink"):
            reps = args.reps or 2
            stages = await bench_starlink(size, args.rounds, reps)
            print_table("Starlink-shaped (10,000-row responses)", stages, size)
    if args.check_pg:
        print("\n### pgpq vs CopyEncoder in PostgreSQL\n")
        for line in check_pg(args.pg):
            print(f"- {line}")
    if args.sinks:
        print("\n### Sink level, satellites, batches of 1000 rows (wall time, committed rows/s)\n")
        print("| store | what | rows/s | share of the pre-encoded insert | target |")
        print("|---|---|---:|---:|---|")
        for line in await bench_sinks(args.pg, args.sink_rounds, 30):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
