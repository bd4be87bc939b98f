"""Instruction counts per point of the in-process satellites path, tuples vs columnar,
under callgrind: repeatable where CPU time on the shared 2-core machine is not.

Each path (decode -> validate/map/detect -> batch of 1000 -> Arrow IPC, or binary COPY
with ``--sink pg``) runs ``--iterations`` times over three 1000-point bodies in a child
process under ``valgrind --tool=callgrind``; the same child with 0 iterations is
subtracted, so start-up and imports drop out. Hash seed and Arrow's memory pool are
fixed (``PYTHONHASHSEED=0``, ``ARROW_DEFAULT_MEMORY_POOL=system``): without them the
counts move by ~10 % from run to run.

Usage: ``.venv/bin/python bench/pipeline_callgrind.py [--iterations 30] [--form epoch|rfc3339]
[--sink chdb|pg]`` (about a minute per run; three runs per path)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
BODIES = 3
POINTS = 1000


def child(path: str, iterations: int, form: str, sink: str) -> None:
    """The measured work (run inside valgrind)."""
    import logging

    logging.disable(logging.WARNING)
    sys.path.insert(0, str(HERE))
    import asyncio
    import gc

    import msgspec

    from orbitstream.core.columns import ipc_stream
    from orbitstream.core.pipeline import Batcher
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
    from pipeline import drain, fake_lane, satellite_body

    now = 1_767_225_600.0
    received = 1_767_225_600_000_000_000
    bodies = [satellite_body(POINTS, seed, now, form) for seed in range(BODIES)]
    warm = satellite_body(POINTS, 99, now - 1, form)
    decoder = msgspec.json.Decoder(list[Point])
    mapper = SatelliteMapper(threshold_rules())

    async def run() -> None:
        if path == "tuples":
            mapper.commit(mapper.map(decoder.decode(warm), received))
            batcher = Batcher(cast(Any, fake_lane(POINTS)), TELEMETRY_TABLE)
            copy = CopyEncoder(TELEMETRY_TABLE)
            for _ in range(iterations):
                for body in bodies:
                    batcher.add(mapper.map(decoder.decode(body), received).rows["telemetry"], None)
                    for batch in drain(batcher):
                        if sink == "pg":
                            copy.encode(batch.rows)
                        else:
                            to_ipc_stream(batch)
        else:
            commit_columns(mapper, map_columns(mapper, cast(Any, decode_columns(warm)), received))
            cbatcher = Batcher(cast(Any, fake_lane(POINTS)), TELEMETRY_TABLE)
            pgpq = ArrowCopyEncoder(TELEMETRY_TABLE)
            for _ in range(iterations):
                for body in bodies:
                    cols = decode_columns(body)
                    assert cols is not None
                    cbatcher.add(map_columns(mapper, cols, received).telemetry, None)
                    for cb in drain(cbatcher):
                        if sink == "pg":
                            pgpq.encode(cb.data)
                        else:
                            ipc_stream(cb.data)

    # the service's collector settings (service.py): a high threshold, start-up objects frozen
    gc.set_threshold(50_000, 50, 100)
    gc.collect()
    gc.freeze()
    asyncio.run(run())


def instructions(path: str, iterations: int, form: str, sink: str) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/cg.out",
                sys.executable,
                __file__,
                "--child",
                path,
                "--iterations",
                str(iterations),
                "--form",
                form,
                "--sink",
                sink,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise RuntimeError("callgrind printed no instruction count")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--form", choices=["epoch", "rfc3339"], default="epoch")
    ap.add_argument("--sink", choices=["chdb", "pg"], default="chdb")
    ap.add_argument("--child", choices=["tuples", "columnar"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.iterations, args.form, args.sink)
        return 0
    points = args.iterations * BODIES * POINTS
    per = {}
    for path in ("tuples", "columnar"):
        base = instructions(path, 0, args.form, args.sink)
        per[path] = (instructions(path, args.iterations, args.form, args.sink) - base) / points
    print(f"\nsatellites, {args.form} timestamps, batches of {POINTS}, encoded for {args.sink}:")
    print("| path | instructions per point |")
    print("|---|---:|")
    for path, value in per.items():
        print(f"| {path} | {value:,.0f} |")
    print(f"| columnar / tuples | {per['columnar'] / per['tuples']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
