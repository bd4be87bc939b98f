"""The ``starlink`` source: polls the Starlink Enterprise telemetry stream into a pipeline.

One poll at a time (:class:`~orbitstream.sources.starlink_api.StarlinkPoller`): the
response body is archived (when ``STARLINK_RAW_ARCHIVE`` is set), mapped by the
pipeline's :class:`~orbitstream.pipelines.starlink.StarlinkMapper`, and every table's
rows are submitted with one :class:`~orbitstream.core.batch.Ack` under a key derived from
the body (:func:`~orbitstream.pipelines.starlink.body_digest`): batch ids
``starlink:<table>:<digest>``, so the same body retried or replayed is stored once.
The next poll starts only after the ack resolved — every row committed in every store, or
kept in dead letters — because the stream never re-delivers. While a store is down the
ack does not resolve, so polling halts; ``/health`` says so (``source.state`` is
``delivering`` and ``halted_secs`` grows) and the poller logs it.

The mapper's state (open alerts, each terminal's latest addresses) is read back from the
store at start (:meth:`StarlinkIngest.restore`) and changes only after a batch is durable
(:meth:`~orbitstream.pipelines.starlink.StarlinkMapper.commit`). Rows that cannot be
mapped, a body that is not a stream envelope and rows outside the accepted time window go
to dead letters with their reason.

:class:`StarlinkIngest` is shared with ``orbitstream replay starlink`` (the same mapping
and batch ids, from the raw archive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orbitstream.core.batch import Ack, DeadLetter, Row, RowData, is_columnar
from orbitstream.core.columns import rows_of
from orbitstream.core.metrics import Metrics
from orbitstream.core.protocols import SourceContext, Store
from orbitstream.core.registry import SourceType
from orbitstream.core.spec import PipelineBuild
from orbitstream.core.tables import Table
from orbitstream.core.times import TimeWindow
from orbitstream.errors import BackpressureError, SourceError
from orbitstream.pipelines.starlink import (
    IP_ALLOCATIONS_TABLE,
    IP_KEY,
    PIPELINE,
    StarlinkEnvelopeError,
    StarlinkJob,
    StarlinkMapper,
    StarlinkMapping,
    StarlinkPipelineSettings,
    body_digest,
    paused_gc,
    resumed_gc,
)
from orbitstream.sources.starlink_api import (
    DURABLE_MARK,
    HALTED_AFTER_SECS,
    ArchivedPoll,
    RawArchive,
    StarlinkClient,
    StarlinkPoller,
    StarlinkSettings,
)

__all__ = ["SOURCE", "Delivered", "StarlinkIngest", "StarlinkSource"]

logger = logging.getLogger(__name__)

_BODY_LETTER_BYTES = 1 << 20
_HANDOFF_TURNS = 8
"""Event-loop turns given to the sink lanes after a part is submitted, so the part reaches
the store's writer thread before the next part is mapped (a lane needs ~5 turns from its
queue to the thread; with one turn the parts' inserts were measured to start only after
the body was mapped)."""
PART_ROWS = 24_000
"""Body rows per part of a delivery: a 65,000-row body goes to the stores in 3 parts of
~20,300 rows and a last one of :data:`TAIL_ROWS`. Measured on that body (bench/starlink.py,
runs alternated): 24,000 took 0.85-0.9x the time of 16,384 and about as long as 32,768;
8,192 took 1.3x (each insert pays a fixed cost, mostly the dedup log, and makes a part the
store merges later on the same two cores)."""
TAIL_ROWS = 4_096
"""Rows of the last part of a longer body: its insert is the one no mapping overlaps
(2,048 measured no different)."""
RECENT_WINDOW_SECS = 3600.0
"""At start, near-duplicate keys are read back for rows this close to the newest one."""
UNHEALTHY_AFTER_ERRORS = 5
"""Polls failed in a row after which /health reports the source unhealthy (503)."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one body became.

    :param rows: rows submitted, by table.
    :param dead: rows (or the whole body) kept in dead letters.
    :param duplicates: near-duplicate rows skipped.
    :param committed: every submitted row is committed in every store.
    :param spilled: rows only in the dead-letter file: a store was still down at the
        shutdown deadline (the body is then not durable: a restart writes it again).
    """

    digest: str
    values: int
    rows: dict[str, int]
    dead: int
    duplicates: int
    committed: bool
    spilled: int = 0


def _ts_index(table: Table) -> int:
    return next(i for i, c in enumerate(table.columns) if c.name == table.time_column)


class StarlinkIngest:
    """Body -> rows -> the pipeline, durably; the state restored from the store.

    :param mapper: the pipeline's mapper (its state is this ingest's).
    :param tables: the pipeline's tables by name, in their namespace.
    :param window: the accepted timestamps (rows outside go to dead letters).
    :param recent_window_secs: at start, the rows stamped this close to each table's
        newest row give the near-duplicate keys read back (:meth:`restore`).
    :param part_rows: body rows mapped and handed to the sinks at a time (:meth:`deliver`).
    :param tail_rows: the last part of a longer body has this many rows (its insert is the
        one that nothing overlaps).
    """

    def __init__(
        self,
        mapper: StarlinkMapper,
        tables: Mapping[str, Table],
        window: TimeWindow,
        metrics: Metrics,
        pipeline: str = PIPELINE,
        recent_window_secs: float = RECENT_WINDOW_SECS,
        part_rows: int = PART_ROWS,
        tail_rows: int = TAIL_ROWS,
    ) -> None:
        self.mapper = mapper
        self.part_rows = part_rows
        self.tail_rows = tail_rows
        self.recent_window_secs = recent_window_secs
        self.restored_keys = 0
        self.tables = dict(tables)
        self.window = window
        self.metrics = metrics
        self.pipeline = pipeline
        self._ts = {name: _ts_index(t) for name, t in self.tables.items()}
        self.bodies = 0
        self.rows = 0
        self.dead_rows = 0
        self._dead_logged_at: float | None = None  # monotonic time of the last warning
        self._dead_unlogged = 0  # dead rows since that warning

    # -- state -----------------------------------------------------------------------
    async def restore(self, store: Store) -> tuple[int, int]:
        """Open alerts (last event ``opened``), each terminal's latest addresses and the
        most recent rows' near-duplicate keys, from the store; returns how many open
        alerts and terminals with addresses.

        Recent keys: per table (``telemetry``, ``ip_allocations``) the rows stamped within
        :attr:`recent_window_secs` of the table's newest row, newest first, at most the
        mapper's ``recent_limit`` (decisions §25)."""
        events = self.tables["alert_events"].qualified_name
        ips = self.tables["ip_allocations"].qualified_name
        telemetry = self.tables["telemetry"].qualified_name
        limit = self.mapper.recent_limit
        window = int(self.recent_window_secs)
        postgres = store.query_dialect == "postgres"
        if postgres:
            ns = "(EXTRACT(EPOCH FROM {c}) * 1000000)::bigint * 1000"
            alerts_sql = (
                "SELECT device_type, device_id, alert_code, alert_name, "
                f"{ns.format(c='ts_ns')} FROM (SELECT DISTINCT ON (device_id, alert_code) "
                f"device_type, device_id, alert_code, alert_name, ts_ns, event FROM {events} "
                "ORDER BY device_id, alert_code, ts_ns DESC) AS latest WHERE event = 'opened'"
            )
            ips_sql = (
                f"SELECT device_id, {ns.format(c='ts_ns')}, ipv4, ipv6_ue, ipv6_cpe FROM "
                f"(SELECT DISTINCT ON (device_id) * FROM {ips} ORDER BY device_id, ts_ns DESC) "
                "AS latest"
            )
        else:
            alerts_sql = (
                "SELECT argMax(device_type, ts_ns), device_id, alert_code, "
                "argMax(alert_name, ts_ns), toUnixTimestamp64Nano(max(ts_ns)) "
                f"FROM {events} GROUP BY device_id, alert_code "
                "HAVING argMax(event, ts_ns) = 'opened'"
            )
            ips_sql = (
                "SELECT device_id, toUnixTimestamp64Nano(max(ts_ns)), argMax(ipv4, ts_ns), "
                f"argMax(ipv6_ue, ts_ns), argMax(ipv6_cpe, ts_ns) FROM {ips} GROUP BY device_id"
            )
        if postgres:
            keys_sql = [
                f"SELECT {kind}, device_id, {ns.format(c='ts_ns')} FROM {t} "
                f"WHERE ts_ns >= (SELECT max(ts_ns) FROM {t}) - make_interval(secs => {window}) "
                f"ORDER BY ts_ns DESC LIMIT {limit}"
                for kind, t in (("device_type", telemetry), (f"'{IP_KEY}'", ips))
            ]
        else:
            keys_sql = [
                f"SELECT {kind}, device_id, toUnixTimestamp64Nano(ts_ns) FROM {t} "
                f"WHERE ts_ns >= (SELECT max(ts_ns) FROM {t}) - toIntervalSecond({window}) "
                f"ORDER BY ts_ns DESC LIMIT {limit}"
                for kind, t in (("toString(device_type)", telemetry), (f"'{IP_KEY}'", ips))
            ]
        keys: list[tuple[str, str, int]] = []
        if limit:
            for sql in keys_sql:
                key_rows: list[tuple[Any, ...]] = (await store.query(sql)).rows
                keys += [(str(k), str(d), int(t)) for k, d, t in key_rows]
        alert_rows: list[tuple[Any, ...]] = (await store.query(alerts_sql)).rows
        ip_rows: list[tuple[Any, ...]] = (await store.query(ips_sql)).rows
        open_alerts = [(str(t), str(d), int(c), str(n), int(o)) for t, d, c, n, o in alert_rows]
        latest = [
            (str(d), int(ts), list(v4 or ()), list(ue or ()), list(cpe or ()))
            for d, ts, v4, ue, cpe in ip_rows
        ]
        self.mapper.restore(
            open_alerts=open_alerts,
            ips=latest,
            recent_keys=keys,
            key_unit_ns=1000 if postgres else 1,  # timestamptz holds microseconds
        )
        self.restored_keys = len(keys)
        return len(open_alerts), len(latest)

    # -- one body ------------------------------------------------------------------------
    def _split_window(
        self, rows: Mapping[str, RowData], now_ns: int, batch_id: str
    ) -> tuple[dict[str, RowData], list[DeadLetter]]:
        """The rows inside the time window, and dead letters for the others."""
        lo, hi = self.window.bounds(now_ns)
        kept: dict[str, RowData] = {}
        letters: list[DeadLetter] = []
        for name, data in rows.items():
            i = self._ts[name]
            if is_columnar(data):
                ts = pc.cast(data.column(i), pa.int64())
                bounds = pc.min_max(ts).as_py()
                if not len(data) or (lo <= bounds["min"] and bounds["max"] <= hi):
                    kept[name] = data
                    continue
                inside = pc.and_(pc.greater_equal(ts, lo), pc.less_equal(ts, hi))
                kept[name] = data.filter(inside)
                outside = rows_of(self.tables[name], data.filter(pc.invert(inside)))
            else:
                table_rows: list[Row] = data
                times: list[int] = [r[i] for r in table_rows]  # type: ignore[misc]
                if not times or (lo <= min(times) and max(times) <= hi):
                    kept[name] = table_rows
                    continue
                kept[name] = [r for r, t in zip(table_rows, times, strict=True) if lo <= t <= hi]
                outside = [r for r, t in zip(table_rows, times, strict=True) if not lo <= t <= hi]
            for r in outside:
                t = int(r[i])  # type: ignore[call-overload]
                letters.append(
                    DeadLetter(
                        pipeline=self.pipeline,
                        table=name,
                        batch_id=batch_id,
                        row={"row": [v if isinstance(v, int | float | str) else str(v) for v in r]},
                        error=self.window.problem(t, now_ns) or "outside the time window",
                    )
                )
        return kept, letters

    def body_letter(self, body: bytes, error: str, digest: str | None = None) -> DeadLetter:
        """A whole response body (up to 1 MiB of it) as one dead letter."""
        return DeadLetter(
            pipeline=self.pipeline,
            table="telemetry",
            batch_id=f"{self.pipeline}:{digest or body_digest(body)}",
            row={
                "body": body[:_BODY_LETTER_BYTES].decode("utf-8", "replace"),
                "bytes": len(body),
            },
            error=error,
        )

    async def _submit(
        self, ctx: SourceContext, rows: Mapping[str, RowData], ack: Ack, key: str
    ) -> int:
        n = sum(len(r) for r in rows.values())
        while True:
            try:
                ctx.submit(rows, ack, key=key)
                return n
            except BackpressureError:
                # the collector is paused while a body is mapped (deliver): not while
                # waiting on a full buffer, which can last as long as a store outage
                with resumed_gc():
                    await ctx.wait_for_room(n)

    def _warn_dead(self, letters: Sequence[DeadLetter], every_secs: float = 30.0) -> None:
        """A warning for rows kept in dead letters: the first at once, then at most one per
        ``every_secs`` with the count since (``orbitstream deadletters`` lists them)."""
        self.dead_rows += len(letters)
        self._dead_unlogged += len(letters)
        now = time.monotonic()
        if self._dead_logged_at is not None and now - self._dead_logged_at < every_secs:
            return
        logger.warning(
            "Starlink rows kept in dead letters (orbitstream deadletters lists them).",
            extra={
                "pipeline": self.pipeline,
                "rows": self._dead_unlogged,
                "total": self.dead_rows,
                "table": letters[0].table,
                "error": letters[0].error,
            },
        )
        self._dead_logged_at = now
        self._dead_unlogged = 0

    async def _submit_parts(
        self, ctx: SourceContext, job: StarlinkJob, digest: str, ack: Ack
    ) -> tuple[StarlinkMapping, dict[str, int], list[DeadLetter]]:
        """Map ``job`` a part at a time, each part submitted as soon as it is mapped, then
        the rest; ``ack`` completes once every submitted row is durable."""
        batch_id = f"{self.pipeline}:{digest}"
        now = time.time_ns()
        counts: dict[str, int] = {}
        letters: list[DeadLetter] = []

        async def submit(rows: Mapping[str, RowData], key: str) -> None:
            nonlocal letters
            kept, out = self._split_window(rows, now, batch_id)
            letters += out
            await self._submit(ctx, kept, ack, key)
            for name, r in kept.items():
                counts[name] = counts.get(name, 0) + len(r)
            for _ in range(_HANDOFF_TURNS):  # the lanes pass the rows to the stores
                await asyncio.sleep(0)

        ack.add_parts(1)  # held until the last part is submitted
        try:
            # the IP rows are mapped first (pass 1): inserted while the parts are mapped
            await submit({IP_ALLOCATIONS_TABLE.name: job.ip_rows}, digest)
            for k, part in enumerate(job.parts(self.part_rows, self.tail_rows)):
                await submit(part, f"{digest}.{k}")
            mapping = job.finish()  # frees the decoded body while the stores insert
            letters = mapping.dead_letters(batch_id, self.pipeline) + letters
            # the rest: the alert events of the whole body (and the rows no part covered:
            # none). Its handoff turns come before the caller's collector pause ends, so
            # the collector walks what survived while the stores insert.
            await submit(
                {k: v for k, v in mapping.rows.items() if k != IP_ALLOCATIONS_TABLE.name}, digest
            )
        finally:
            ack.part_done()
        return mapping, counts, letters

    async def deliver(self, ctx: SourceContext, body: bytes, received_ns: int) -> Delivered:
        """Map one body and make it durable: returns once every row is committed in every
        store (or in dead letters), then commits the mapper's state.

        The body is mapped :attr:`part_rows` rows at a time (:meth:`StarlinkMapper.begin`)
        and each part is handed to the sinks as soon as it is mapped, so a store inserts
        one part on its own thread while the next one is mapped (chDB and the HTTP
        clients release the GIL). Part ``k`` has the key ``<digest>.<k>`` (batch id
        ``starlink:<table>:<digest>.<k>``), the rows derived from the whole body
        (``ip_allocations``, ``alert_events``) the key ``<digest>``: a replayed body is
        cut the same way, so each batch de-duplicates in the store."""
        labels = (self.pipeline,)
        # hashlib releases the GIL on large inputs: the digest is made while the body is
        # decoded
        hashing = asyncio.get_running_loop().run_in_executor(None, body_digest, body)
        ack = Ack()
        try:
            # One pause for the decode, every part and the finish: re-enabled in between,
            # the collector walks the whole decoded body at once (measured: ~0.13 s for a
            # 65,000-row body).
            with paused_gc():
                job = self.mapper.begin(body, received_ns)
                digest = await hashing
                mapping, counts, letters = await self._submit_parts(ctx, job, digest, ack)
                del job  # its per-row state goes while the stores insert
        except StarlinkEnvelopeError as exc:
            digest = await hashing
            self.metrics.inc("source_errors", (self.pipeline, "envelope"))
            logger.error(
                "Starlink response is not a stream envelope; kept in dead letters.",
                extra={
                    "pipeline": self.pipeline,
                    "batch_id": f"{self.pipeline}:{digest}",
                    "error": exc.reason,
                },
            )
            await ctx.dead_letter([self.body_letter(body, str(exc), digest)])
            return Delivered(digest, 0, {}, 1, 0, True)
        self.metrics.inc("received", labels, mapping.values)
        await ack.wait()
        if letters:
            self.metrics.inc("source_errors", (self.pipeline, "dead_row"), len(letters))
            await ctx.dead_letter(letters)
            self._warn_dead(letters)
        self.mapper.commit(mapping)
        n = sum(counts.values())
        # stream rows, as "received" counts them (the derived alert, event and address
        # rows are in written_rows): taken, dead (malformed, or outside the time window:
        # the letters of the tables stream rows go to; letters for derived rows do not
        # count again), or dropped as copies
        window_letters = letters[len(mapping.dead) :]
        dead = len(mapping.dead) + sum(1 for d in window_letters if d.table in _STREAM_TABLES)
        self.metrics.inc("accepted", labels, mapping.values - dead - mapping.duplicates)
        if dead:
            self.metrics.inc("rejected", labels, dead)
        if mapping.duplicates:
            self.metrics.inc("duplicates", labels, mapping.duplicates)
        for event in mapping.rows["alert_events"]:
            self.metrics.inc("alerts", (self.pipeline, str(event[4]), str(event[5])))
        self.bodies += 1
        self.rows += n
        return Delivered(
            digest,
            mapping.values,
            counts,
            len(letters),
            mapping.duplicates,
            ack.committed,
            sum(ack.spilled.values()),
        )


#: the tables a stream row itself lands in (the others hold rows derived from it)
_STREAM_TABLES = frozenset({"telemetry", IP_ALLOCATIONS_TABLE.name})


class StarlinkSource:
    """Polls the stream (one request at a time) and hands each body to a
    :class:`StarlinkIngest`; ``stop`` lets the batch in hand become durable first."""

    name = "starlink"

    def __init__(
        self,
        settings: StarlinkPipelineSettings,
        client_settings: StarlinkSettings,
        ingest: StarlinkIngest,
    ) -> None:
        self.settings = settings
        self.client_settings = client_settings
        self.ingest = ingest
        self.archive = RawArchive(Path(settings.raw_archive)) if settings.raw_archive else None
        self.client: StarlinkClient | None = None
        self.poller: StarlinkPoller | None = None
        self._ctx: SourceContext | None = None
        self._done = asyncio.Event()
        self._last_durable: float | None = None
        self._restored = (0, 0)

    async def start(self, ctx: SourceContext) -> None:
        self._ctx = ctx
        self._restored = await self.ingest.restore(ctx.store)
        self.client = StarlinkClient(self.client_settings)
        self.poller = StarlinkPoller(
            self.client,
            self._deliver,
            archive=self.archive,
            halted_log_secs=self.settings.halted_log_secs,
            reject=self._reject,
        )
        ctx.on_health(self.health)
        ctx.metrics.add_gauge("source_lag", self._lag)
        logger.info(
            "Starlink source started.",
            extra={
                "pipeline": ctx.pipeline,
                "stream_url": self.client_settings.stream_url,
                "batch_size": self.client_settings.batch_size,
                "max_linger_ms": self.client_settings.max_linger_ms,
                "open_alerts": self._restored[0],
                "terminals_with_ips": self._restored[1],
                "recent_keys": self.ingest.restored_keys,
                "raw_archive": self.settings.raw_archive,
            },
        )

    async def _deliver(self, body: bytes, number: int) -> bool:
        """:returns: whether the body is durable (the archive may mark it so)."""
        assert self._ctx is not None
        out = await self.ingest.deliver(self._ctx, body, time.time_ns())
        if out.spilled:
            return False
        self._last_durable = time.monotonic()
        logger.debug(
            "Starlink batch durable.",
            extra={"poll_number": number, "batch_id": out.digest, "records": out.values},
        )
        return True

    async def _reject(self, raw: bytes, error: str) -> None:
        """A 200 whose body is not JSON: into the dead letters (up to 1 MiB of it), since
        the API may have advanced past its rows and will not send them again."""
        assert self._ctx is not None
        self.ingest.metrics.inc("source_errors", (self._ctx.pipeline, "invalid_body"))
        await self._ctx.dead_letter([self.ingest.body_letter(raw, error)])

    def _lag(self) -> dict[tuple[str, ...], float]:
        if self._last_durable is None or self._ctx is None:
            return {}
        return {(self._ctx.pipeline, "seconds"): time.monotonic() - self._last_durable}

    def health(self) -> dict[str, object]:
        """The poller's state for ``/health``: ``halted`` while a batch waits to be durable
        (a store is down) for longer than a poll normally takes."""
        if self.poller is None:
            return {"state": "starting"}
        st = self.poller.status
        in_state = time.monotonic() - st.since
        halted = st.state == "delivering" and in_state >= HALTED_AFTER_SECS
        out: dict[str, object] = {
            "state": st.state,
            "halted": halted,
            "polls": st.polls,
            "rows": st.rows,
            "errors": st.errors,
            "consecutive_errors": st.consecutive_errors,
            "last_error": st.last_error,
            "last_poll_ns": st.last_poll_ns,
            "stream_url": self.client_settings.stream_url,
            "dead_rows": self.ingest.dead_rows,
        }
        if st.consecutive_errors >= UNHEALTHY_AFTER_ERRORS:
            # The API has failed several polls in a row (unreachable, refusing the token,
            # 5xx): nothing is being read. /health says so (503), as it does for Kafka.
            out["healthy"] = False
            limited = "answered 429" in (st.last_error or "")
            hint = (
                "the API is limiting the request rate; polling waits as it asks (Retry-After)"
                if limited
                else "check STARLINK_TOKEN_URL, STARLINK_STREAM_URL, CLIENT_ID and CLIENT_SECRET"
            )
            out["problem"] = (
                f"the Starlink API failed {st.consecutive_errors} polls in a row "
                f"({st.last_error}); {hint}"
            )
        if halted:
            out["halted_secs"] = round(in_state, 1)
            out["halted_reason"] = "the last batch is not durable in every store yet"
        if self.client is not None:
            out["token_requests"] = self.client.token_requests
        return out

    async def run(self) -> None:
        assert self.poller is not None
        try:
            if self.archive is not None:
                await self._recover(self.archive)
            if not self.poller.stopping:
                await self.poller.run()
        finally:
            self._done.set()

    async def _recover(self, archive: RawArchive) -> None:
        """Before the first poll: write the archived bodies not known to be in every
        store (the process was killed while a store was down, or while writing). The API
        will not send them again; the archive has them. Written once, whatever was
        stored of them before: batch ids come from each body's digest."""
        assert self._ctx is not None and self.poller is not None
        loop = asyncio.get_running_loop()
        pending = await loop.run_in_executor(None, archive.pending)
        problem = await loop.run_in_executor(None, archive.mark_problem) if pending else None
        if problem == "missing":
            logger.warning(
                "Raw archive has no durable mark (a new mark file, or one deleted): every "
                "archived body is written again; the stores drop what they hold already.",
                extra={"pipeline": self._ctx.pipeline, "bodies": len(pending)},
            )
        elif problem == "unusable":
            logger.error(
                "Raw archive: the durable mark is unreadable or names no archived body; "
                "every archived body is written again (what is stored already is dropped "
                "by batch id).",
                extra={"file": str(archive.directory / DURABLE_MARK)},
            )
        if not pending:
            return
        logger.warning(
            "Raw archive: writing the bodies read before the last stop but not known to be stored.",
            extra={"pipeline": self._ctx.pipeline, "bodies": len(pending)},
        )
        rows = 0
        for path in pending:
            if self.poller.stopping:
                return
            try:
                (poll,) = await loop.run_in_executor(None, _read_one, path)
            except SourceError as exc:
                logger.error(
                    "Raw archive: a pending body is unreadable; skipped (replay it by hand "
                    "if it can be repaired: orbitstream replay starlink FILE).",
                    extra={"file": str(path), "error": str(exc)},
                )
                archive.mark_durable(path)
                continue
            out = await self.poller.deliver_earlier(
                self.ingest.deliver(self._ctx, poll.body, poll.poll_ns), poll.poll_number
            )
            if out.spilled:  # a store still down at the shutdown: pending for next time
                return
            self._last_durable = time.monotonic()
            rows += out.values
            archive.mark_durable(path)
        logger.info(
            "Raw archive: pending bodies written.",
            extra={"pipeline": self._ctx.pipeline, "bodies": len(pending), "records": rows},
        )

    def stop_need(self) -> float:
        """How long the stop must be allowed now: while a poll is in flight, what is
        left of its request's timeout plus 10 s to write its answer (abandoned, the
        answer would be lost: the API moves on when it answers); else nothing."""
        if self.poller is None:
            return 0.0
        st = self.poller.status
        if st.state != "polling":
            return 0.0
        left = self.client_settings.stream_timeout_secs - (time.monotonic() - st.since)
        return max(0.0, left) + 10.0

    async def stop(self, timeout_secs: float) -> None:
        if self.poller is not None:
            self.poller.stop()
            # the request in flight completes and its batch becomes durable
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout_secs)
        if self.client is not None:
            await self.client.close()


def _read_one(path: Path) -> list[ArchivedPoll]:
    return list(RawArchive.read(path))


def _create(build: PipelineBuild, handler: Any) -> StarlinkSource:
    if not isinstance(handler, StarlinkMapper):
        raise TypeError(f"the starlink source needs a StarlinkMapper, got {type(handler).__name__}")
    own = build.own
    if not isinstance(own, StarlinkPipelineSettings):
        raise TypeError("the starlink source runs the starlink pipeline's settings")
    client_settings = own.client_settings()
    ingest = StarlinkIngest(handler, build.tables, build.window, build.metrics, build.spec.name)
    return StarlinkSource(own, client_settings, ingest)


SOURCE = SourceType(
    name="starlink",
    description="the Starlink Enterprise telemetry stream, polled (CLIENT_ID, CLIENT_SECRET)",
    handler="orbitstream.pipelines.starlink.StarlinkMapper",
    create=_create,
)
