"""Parquet archive benchmark: compression codecs for the files ``ParquetSink`` writes.

For each row shape (satellite telemetry; Starlink-shaped rows with a numeric and a text
map per device; network-interface counters) and each codec, one run measures: encode
time of one batch through :func:`orbitstream.sinks.parquet.encode_parquet` (rows ->
Arrow -> Parquet bytes, the sink's whole CPU cost), file size, and the time pyarrow takes
to read the file back. Everything is printed relative to uncompressed Parquet measured
in the same run (the baseline), so the table holds on any machine.

Usage: ``.venv/bin/python bench/parquet.py [--rows N] [--repeat K]``
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import time
from collections.abc import Callable
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from orbitstream.core.batch import Batch, Row
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.pipelines.satellites import tables as satellite_tables
from orbitstream.sinks.parquet import encode_parquet

SAT, _ALERTS = satellite_tables()
BASE_NS = 1_800_000_000_000_000_000
STARLINK = Table(
    "starlink_bench",
    (
        Column("time", ColType.TIMESTAMP),
        Column("device_id", ColType.STRING),
        Column("device_type", ColType.STRING, low_cardinality=True),
        Column("metrics", ColType.MAP_STR_FLOAT),
        Column("info", ColType.MAP_STR_STR),
    ),
    time_column="time",
    order_by=("device_id", "time"),
)
INTERFACES = Table(
    "interfaces_bench",
    (
        Column("time", ColType.TIMESTAMP),
        Column("node", ColType.STRING, low_cardinality=True),
        Column("interface", ColType.STRING),
        Column("oper_state", ColType.STRING, low_cardinality=True),
        Column("in_octets", ColType.UINT64),
        Column("out_octets", ColType.UINT64),
        Column("in_errors", ColType.UINT64),
        Column("in_bps", ColType.FLOAT64),
        Column("out_bps", ColType.FLOAT64),
    ),
    time_column="time",
    order_by=("node", "interface", "time"),
)
_METRICS = [f"metric_{k}" for k in range(20)]


def satellite_rows(n: int, rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    for i in range(n):
        low = rng.random() < 0.05
        rows.append(
            (
                BASE_NS + i * 10_000_000,
                f"SAT-{i % 200:03d}",
                round(rng.uniform(5, 100), 2),
                round(rng.uniform(1000, 99000), 1),
                round(rng.uniform(-110, -40), 1),
                low,
                ("battery_low",) if low else (),
                BASE_NS + i * 10_000_000 + rng.randrange(1_000_000),
            )
        )
    return rows


def starlink_rows(n: int, rng: random.Random) -> list[Row]:
    return [
        (
            BASE_NS + i * 1_000_000_000,
            f"ut{i % 50:04d}",
            "dish",
            {m: round(rng.uniform(0, 1000), 3) for m in _METRICS},
            {"hardware": "rev4_prod1", "software": "2024.05.0.mr123", "state": "CONNECTED"},
        )
        for i in range(n)
    ]


def interface_rows(n: int, rng: random.Random) -> list[Row]:
    counters = [0] * 256
    rows: list[Row] = []
    for i in range(n):
        k = i % 256
        counters[k] += rng.randrange(10_000, 10_000_000)
        rows.append(
            (
                BASE_NS + i * 100_000_000,
                f"leaf{k // 32}",
                f"ethernet-1/{k % 32 + 1}",
                "up" if rng.random() > 0.01 else "down",
                counters[k],
                counters[k] // 2,
                rng.randrange(3),
                rng.uniform(0, 1e10),
                rng.uniform(0, 1e10),
            )
        )
    return rows


def _read(data: bytes) -> object:
    return pq.read_table(pa.BufferReader(data))


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows per batch")
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement (median)")
    args = parser.parse_args()
    rng = random.Random(42)
    shapes = {
        "telemetry": Batch(SAT, satellite_rows(args.rows, rng), "bench"),
        "starlink (maps)": Batch(STARLINK, starlink_rows(args.rows // 5, rng), "bench"),
        "interfaces": Batch(INTERFACES, interface_rows(args.rows, rng), "bench"),
    }
    codecs: list[tuple[str, Literal["none", "zstd", "snappy"], int | None]] = [
        ("none (baseline)", "none", None),
        ("snappy", "snappy", None),
        ("zstd (default level)", "zstd", None),
        ("zstd level 3", "zstd", 3),
        ("zstd level 9", "zstd", 9),
    ]
    print(f"rows per batch: {args.rows} (starlink: {args.rows // 5}), median of {args.repeat}")
    header = (
        f"{'shape':<16} {'codec':<21} {'encode ms':>9} {'rows/s':>11} {'bytes':>10} "
        f"{'size/none':>9} {'enc/none':>8} {'read ms':>8} {'read/none':>9}"
    )
    print(header)
    print("-" * len(header))
    for shape, batch in shapes.items():
        baseline: tuple[float, int, float] | None = None
        for label, codec, level in codecs:
            data = encode_parquet(batch, codec, level)
            enc = best(functools.partial(encode_parquet, batch, codec, level), args.repeat)
            read = best(functools.partial(_read, data), args.repeat)
            if baseline is None:
                baseline = (enc, len(data), read)
            print(
                f"{shape:<16} {label:<21} {enc * 1000:9.1f} {batch.size / enc:11,.0f} "
                f"{len(data):10,} {len(data) / baseline[1]:9.3f} {enc / baseline[0]:8.2f} "
                f"{read * 1000:8.1f} {read / baseline[2]:9.2f}"
            )
        print()


if __name__ == "__main__":
    main()
