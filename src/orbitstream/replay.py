"""``orbitstream replay starlink PATH``: the raw archive through the same mapping into the
configured stores.

Each archived body (:class:`~orbitstream.sources.starlink_api.RawArchive`) is mapped in
poll order by one :class:`~orbitstream.pipelines.starlink.StarlinkMapper` whose state is
carried from body to body, exactly as the running source did, and submitted under the same
key (the body digest): every batch gets the id it had when it was polled, so the stores
keep one copy (chDB/ClickHouse: the insert deduplication token, within the tables' window
of the last 10,000 inserts; PostgreSQL: the batch ledger). Replaying twice adds nothing;
replaying bodies whose batches never reached a store (a crash, spilled batches) adds them.
``received_at`` is the archived poll time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orbitstream.core.context import PipelineContext
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, close_sink, start_sink
from orbitstream.core.protocols import Store
from orbitstream.core.registry import SinkRequest
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.tables import Table
from orbitstream.core.times import TimeWindow
from orbitstream.errors import ConfigError
from orbitstream.settings import Settings
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sources.http.server import Router

__all__ = ["ReplayReport", "replay_starlink"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ReplayReport:
    """What a replay did: bodies read, rows submitted per table, rows kept in dead
    letters, rows each table gained (``added``: 0 everywhere when every batch was
    already stored), and the archive files skipped as unreadable (file, reason)."""

    bodies: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dead: int = 0
    added: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    not_read: list[str] = field(default_factory=list)  # files not named like archived bodies


async def replay_starlink(
    settings: Settings,
    path: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Replay an archive directory (or one archived file) into the configured stores.

    :param progress: called with (bodies done, rows submitted) after each body.
    An unreadable file of a directory (say truncated by a full disk) is skipped, logged
    and listed in :attr:`ReplayReport.unreadable`; the other files are still replayed.

    :raises ConfigError: the path holds no archive, or the settings are invalid.
    :raises SourceError: the one archived file given is unreadable.
    """
    from orbitstream.pipelines.starlink import StarlinkMapper
    from orbitstream.runtime import pipeline_limits, plan_pipelines, registered_tables
    from orbitstream.sources.starlink import StarlinkIngest
    from orbitstream.sources.starlink_api import RawArchive
    from orbitstream.stores import build_stores

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"no Starlink archive at {path}", setting="PATH")
    (plan,) = plan_pipelines(settings, ["starlink"])
    namespaces, all_tables = registered_tables(settings)
    stores = build_stores(settings, SinkRequest(namespaces, all_tables))
    engine = settings.engine
    retry = RetryPolicy(max_secs=engine.retry_max_backoff_secs)
    metrics = Metrics()
    window = TimeWindow.of(
        engine.timestamp_max_ahead_secs,
        settings.timestamp_max_age,
        [s.time_range_ns for s in stores],
    )
    dead_file = FileDeadLetters(settings.data_dir / "dead_letters.jsonl")
    pipeline = Pipeline(
        plan.name,
        plan.tables,
        list(stores),
        limits=pipeline_limits(engine),
        retry=retry,
        metrics=metrics,
        dead_letters=dead_file,
    )
    ctx = PipelineContext(
        pipeline,
        plan.tables,
        metrics=metrics,
        store=stores[0],
        router=Router(),
        dead_letters=dead_file,
    )
    tables = {t.name: t for t in plan.tables}
    ingest = StarlinkIngest(StarlinkMapper(), tables, window, metrics, plan.name)
    report = ReplayReport()
    started: list[Store] = []
    try:
        for store in stores:
            await start_sink(store, list(plan.tables), retry, engine.start_timeout_secs)
            started.append(store)
        await pipeline.start(engine.start_timeout_secs, start_sinks=False)
        before = await _counts(stores[0], tables)
        found = False

        def unreadable(file: Path, reason: str) -> None:
            nonlocal found
            found = True
            report.unreadable.append((str(file), reason))
            logger.warning(
                "Archive file unreadable; skipped.", extra={"file": str(file), "error": reason}
            )

        for poll in RawArchive.read(path, unreadable if path.is_dir() else None):
            found = True
            out = await ingest.deliver(ctx, poll.body, poll.poll_ns)
            report.bodies += 1
            report.dead += out.dead
            for name, n in out.rows.items():
                report.rows[name] = report.rows.get(name, 0) + n
            if progress is not None:
                progress(report.bodies, sum(report.rows.values()))
        if path.is_dir():
            report.not_read = RawArchive.foreign_files(path)
        if not found:
            raise ConfigError(
                f"{path} holds no archived Starlink responses (<poll ns>-<poll>.json.gz)",
                setting="PATH",
            )
        await pipeline.close(engine.shutdown_timeout_secs, close_sinks=False)
        after = await _counts(stores[0], tables)
        report.added = {name: after[name] - before[name] for name in tables}
    finally:
        await pipeline.close(engine.shutdown_timeout_secs, close_sinks=False)
        for store in stores:
            if store in started:
                await close_sink(store)
    return report


async def _counts(store: Store, tables: Mapping[str, Table]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, table in tables.items():
        res = await store.query(f"SELECT count(*) FROM {table.qualified_name}")
        out[name] = int(str(res.rows[0][0]))
    return out
