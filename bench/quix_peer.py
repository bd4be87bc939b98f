"""The Quix Streams peer of the sessions pipeline (issue 9), run by ``bench/kafka.py``.

A plain Quix Streams application, as its documentation writes one: ``Application`` on the
topic with the JSON deserializer, a ``BatchingSink`` whose ``write`` maps a checkpoint's
batch with the sessions mapper's rules (``sessions_base`` for every ``started`` message,
``session_events`` for every message, ``session_movements`` for every GPS ping) and inserts
each table once per batch into its own chDB directory (Arrow IPC, ``send_insert``, the same
DDL as the pipeline's tables). Commits every ``--commit-every`` messages, as the pipeline's
chunks. Validation is only what the JSON decode and the timestamp parse do (the benchmark's
messages are all valid). Prints one JSON line: messages, seconds from the first message to
the end of the last batch's inserts (its commit follows; the shutdown is not counted),
process CPU µs per message, rows per table.

Usage: ``.venv/bin/python bench/quix_peer.py BOOTSTRAP TOPIC COUNT [--commit-every N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import chdb  # noqa: E402
import pyarrow as pa  # noqa: E402
from quixstreams import Application  # noqa: E402
from quixstreams.sinks import BatchingSink, SinkBatch  # noqa: E402

from orbitstream.pipelines.sessions import tables  # noqa: E402
from orbitstream.sinks.clickhouse.ddl import schema_statements  # noqa: E402
from orbitstream.sinks.clickhouse_sql import ClickHouseDialect  # noqa: E402

TS = pa.timestamp("ns", tz="UTC")
SCHEMAS = {
    "sessions_base": pa.schema(
        [
            ("session_id", pa.string()),
            ("vehicle_id", pa.string()),
            ("order_id", pa.string()),
            ("started_at", TS),
            ("start_lat", pa.float64()),
            ("start_lon", pa.float64()),
            ("end_lat", pa.float64()),
            ("end_lon", pa.float64()),
        ]
    ),
    "session_events": pa.schema(
        [
            ("time", TS),
            ("session_id", pa.string()),
            ("vehicle_id", pa.string()),
            ("order_id", pa.string()),
            ("status", pa.string()),
            ("current_lat", pa.float64()),
            ("current_lon", pa.float64()),
        ]
    ),
    "session_movements": pa.schema(
        [
            ("time", TS),
            ("session_id", pa.string()),
            ("vehicle_id", pa.string()),
            ("current_lat", pa.float64()),
            ("current_lon", pa.float64()),
        ]
    ),
}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
US = dt.timedelta(microseconds=1)


class ChdbSessionsSink(BatchingSink):
    """The three sessions tables, one insert per table per checkpoint batch."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.conn: Any = chdb.connect(str(path))  # type: ignore[no-untyped-call]
        peer = [t.in_namespace("peer") for t in tables()]
        for sql in schema_statements(ClickHouseDialect(), peer, 365):
            self.conn.query(sql)
        self.first: float | None = None
        self.last = 0.0  # end of the latest batch's inserts
        self.rows = dict.fromkeys(SCHEMAS, 0)

    def add(self, *args: Any, **kwargs: Any) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        super().add(*args, **kwargs)

    def write(self, batch: SinkBatch) -> None:
        base: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        moves: list[tuple[Any, ...]] = []
        for item in batch:
            m = item.value
            t = (dt.datetime.fromisoformat(m["timestamp"]) - EPOCH) // US * 1000
            sid, vid, oid, status = m["session_id"], m["vehicle_id"], m["order_id"], m["status"]
            lat, lon = m.get("current_lat"), m.get("current_lon")
            if status == "started":
                base.append(
                    (sid, vid, oid, t, m["start_lat"], m["start_lon"], m["end_lat"], m["end_lon"])
                )
            events.append((t, sid, vid, oid, status, lat, lon))
            if lat is not None:
                moves.append((t, sid, vid, lat, lon))
        for name, rows in (
            ("sessions_base", base),
            ("session_events", events),
            ("session_movements", moves),
        ):
            if rows:
                self._insert(name, rows)
        self.last = time.perf_counter()

    def _insert(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        schema = SCHEMAS[name]
        columns = [
            pa.array(list(c), type=f.type)
            for c, f in zip(zip(*rows, strict=True), schema, strict=True)
        ]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
        ins = self.conn.send_insert(f"INSERT INTO peer.{name}", "ArrowStream")
        ins.append(sink.getvalue().to_pybytes())
        ins.finish()
        self.rows[name] += len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("count", type=int)
    ap.add_argument("--commit-every", type=int, default=50_000)
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"quix-peer-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        commit_every=args.commit_every,
        commit_interval=5.0,
        consumer_extra_config={"session.timeout.ms": args.session_timeout_ms},
        state_dir=tempfile.mkdtemp(prefix="quix-peer-state-"),
        loglevel="WARNING",
        use_changelog_topics=False,
    )
    sink = ChdbSessionsSink(Path(tempfile.mkdtemp(prefix="quix-peer-chdb-")))
    sdf = app.dataframe(app.topic(args.topic, value_deserializer="json"))
    sdf.sink(sink)
    cpu0 = time.process_time()
    app.run(count=args.count, collect=False)
    cpu = time.process_time() - cpu0
    end = sink.last or time.perf_counter()  # not the shutdown (leaving the group)
    got = sink.conn.query("SELECT count() FROM peer.session_events", "CSV").bytes().decode()
    first = sink.first if sink.first is not None else end
    print(
        json.dumps(
            {
                "messages": args.count,
                "secs": end - first,
                "cpu_us": cpu / args.count * 1e6,
                "rows": sink.rows,
                "events_stored": int(got.strip()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
