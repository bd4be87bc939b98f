"""The pipeline runner: route rows by table to every sink, batch, write, retry, ack.

Per sink there is a :class:`SinkLane` with its own buffer limit, retry state and
health; per (sink, table) a :class:`Batcher` that cuts a batch at ``batch_size`` rows
or after ``linger_secs``, whichever comes first, and a writer task that delivers its
batches in order. A source's :class:`~orbitstream.core.batch.Ack` resolves only when
every sink has committed every row of that message.

All batching state lives on the event loop thread: ``submit`` is synchronous and
cheap, and raises :class:`~orbitstream.errors.BackpressureError` (before touching any
buffer) when a lane is full.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from orbitstream.core.batch import Ack, Batch, DeadLetter, Row, RowData, is_columnar, join_parts
from orbitstream.core.metrics import Metrics
from orbitstream.core.protocols import DeadLetterStore, Sink
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.tables import Table
from orbitstream.errors import (
    BackpressureError,
    ConfigError,
    SinkRejectedError,
    SinkRetryableError,
)

__all__ = ["Batcher", "Pipeline", "PipelineLimits", "SinkLane"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    """Batching and buffering limits (per sink lane)."""

    batch_size: int = 1000
    linger_secs: float = 1.0
    max_buffer_rows: int = 2_000_000
    max_buffer_bytes: int = 512 * 1024 * 1024
    max_merge_rows: int = 50_000
    deployment_retry_secs: float = 300.0
    health_check_secs: float = 5.0
    # Admission (see Pipeline.admission): the longest a source's input waits for the writers.
    admit_max_wait_secs: float = 2.0


async def start_sink(
    sink: Sink, tables: Sequence[Table], retry: RetryPolicy, timeout_secs: float
) -> None:
    """``sink.start(tables)``; an unreachable sink (a retryable error) is retried with
    backoff for up to ``timeout_secs``, anything else fails at once.

    :raises ConfigError: the backend answers but refuses the deployment (a missing bucket
        or database, bad credentials: ``deployment=True``); waiting cannot fix that, so the
        error names the settings at fault (``sink.configured_by``) at once.
    :raises SinkRetryableError: still unreachable after ``timeout_secs``.
    """
    deadline = time.monotonic() + timeout_secs
    # a plug-in sink that predates the attribute still gets a message
    settings = getattr(sink, "configured_by", None) or "the sink's settings"
    attempt = 0
    while True:
        attempt += 1
        try:
            await sink.start(tables)
            return
        except SinkRetryableError as exc:
            if exc.deployment:
                raise ConfigError(
                    f"the {sink.name} sink cannot be used: {exc} (check {settings})",
                    setting=settings,
                ) from exc
            if time.monotonic() >= deadline:
                raise SinkRetryableError(
                    f"{exc} (still failing after {timeout_secs:g} s, ORBITSTREAM_START_TIMEOUT; "
                    f"check {settings})",
                    sink=sink.name,
                    status_code=exc.status_code,
                ) from exc
            delay = retry.delay(attempt)
            logger.warning(
                "Sink not reachable at start; retrying.",
                extra={
                    "component": sink.name,
                    "settings": settings,
                    "gives_up_in_secs": round(max(0.0, deadline - time.monotonic()), 1),
                    "attempt": attempt,
                    "retry_in_secs": round(delay, 3),
                    "error": str(exc),
                },
            )
            await asyncio.sleep(delay)


async def close_sink(sink: Sink) -> None:
    """``sink.close()``; a failure is logged (closing must not fail a shutdown)."""
    try:
        await sink.close()
    except Exception as exc:
        logger.warning("Sink close failed.", extra={"component": sink.name, "error": repr(exc)})


class Batcher:
    """Collects rows for one (sink, table) and hands full or aged batches to its writer.

    Tuple rows are appended to :attr:`rows`; a record batch (the columnar path) is kept
    as a part of its own, sliced where a batch boundary falls (no copy). A cut batch
    holds one form: see :func:`~orbitstream.core.batch.join_parts`.
    """

    def __init__(self, lane: SinkLane, table: Table) -> None:
        self.lane = lane
        self.table = table
        self.rows: list[Row] = []  # the open run of tuple rows
        self.parts: list[RowData] = []  # earlier parts of the open batch
        self.held = 0  # rows in ``parts``
        self.acks: list[Ack] = []
        self.ack_ends: list[int] = []
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        # what the queue holds (Sink.concurrent_writes_need_backlog): rows, batches that
        # are never merged, and whether that is more than one write takes
        self.queued_rows = 0
        self.queued_keyed = 0
        self._backlog = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._seq = itertools.count(1)
        self.task: asyncio.Task[None] | None = None
        self._last_write = -1e9  # monotonic time the previous write began (see _pace)
        self._stopping = False

    @property
    def size(self) -> int:
        """Rows in the open batch."""
        return self.held + len(self.rows)

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.lane.limits.linger_secs, self.cut)

    def add(self, rows: RowData, ack: Ack | None) -> int:
        """Append rows (tuples or a record batch), cutting a batch each time
        ``batch_size`` is reached.

        Returns how many batches the ack (if any) now waits for.
        """
        size = self.lane.limits.batch_size
        parts = 0
        start = 0
        total = len(rows)
        while start < total:
            filled = self.size
            if not filled:
                self._arm()
            room = size - filled
            take = min(room, total - start)
            if is_columnar(rows):
                if self.rows:
                    self.parts.append(self.rows)
                    self.held += len(self.rows)
                    self.rows = []
                self.parts.append(rows if take == total else rows.slice(start, take))
                self.held += take
            elif start == 0 and take == total:
                self.rows.extend(rows)
            else:
                self.rows.extend(rows[start : start + take])
            start += take
            if ack is not None:
                self.acks.append(ack)
                self.ack_ends.append(filled + take)
                parts += 1
            if filled + take >= size:
                self.cut()
        return parts

    def add_one(self, row: Row, ack: Ack | None) -> None:
        """:meth:`add` for one row (one part for the ack)."""
        rows = self.rows
        if not rows and not self.held:
            self._arm()
        rows.append(row)
        filled = self.held + len(rows)
        if ack is not None:
            self.acks.append(ack)
            self.ack_ends.append(filled)
        if filled >= self.lane.limits.batch_size:
            self.cut()

    def cut(self) -> None:
        """Close the current batch and queue it for writing (no-op when empty)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.rows and not self.held:
            return
        if self.held:
            if self.rows:
                self.parts.append(self.rows)
            data = join_parts(self.table, self.parts)
        else:
            data = self.rows
        batch = Batch(
            self.table,
            data,
            f"{self.lane.pipeline}:{self.table.name}:{self.lane.sink.name}:"
            f"{self.lane.epoch}:{next(self._seq)}",
            self.acks,
            ack_ends=self.ack_ends,
        )
        self.rows = []
        self.parts = []
        self.held = 0
        self.acks = []
        self.ack_ends = []
        self.enqueue(batch)

    def enqueue(self, batch: Batch) -> None:
        """Queue a batch for the writers (a cut batch, or a keyed one)."""
        self.queue.put_nowait(batch)
        self._queued(batch, 1)

    def _merge_limit(self) -> int:
        return max(self.lane.limits.batch_size, self.lane.limits.max_merge_rows)

    def _queued(self, batch: Batch, sign: int) -> None:
        """Count ``batch`` into (``sign`` 1) or out of (-1) the queue's backlog."""
        self.queued_rows += sign * batch.size
        if batch.keyed:
            self.queued_keyed += sign
        if self._stopping or self.queued_keyed or self.queued_rows >= self._merge_limit():
            self._backlog.set()
        else:
            self._backlog.clear()

    async def run(self) -> None:
        """Run ``concurrency`` writers on this table's queue (a sink may allow several);
        for a sink whose extra writes need a backlog, those wait for one."""
        extra = self.lane.concurrent_writes_need_backlog
        await asyncio.gather(*(self._work(extra and k > 0) for k in range(self.lane.concurrency)))

    def stop(self) -> None:
        self._stopping = True
        self._backlog.set()
        for _ in range(self.lane.concurrency):
            self.queue.put_nowait(None)

    async def _pace(self, batch: Batch, limit: int) -> None:
        """For a sink with a minimum write interval: when batches come faster than that,
        wait until the interval since the previous write has passed, so the batches cut
        meanwhile are merged into this write (never for keyed batches, nor when nothing
        could be merged, nor at shutdown)."""
        due = self._last_write + self.lane.min_write_interval
        now = time.monotonic()
        if due > now and not (batch.keyed or batch.size >= limit or self._stopping):
            await asyncio.sleep(due - now)
        self._last_write = time.monotonic()

    async def _work(self, needs_backlog: bool = False) -> None:
        """One writer of this table's queue. ``needs_backlog``: take a batch only while
        the queue holds more than one write takes (:meth:`_queued`)."""
        stop = False
        while not stop:
            if needs_backlog:
                await self._backlog.wait()
                if self.queue.empty():
                    await asyncio.sleep(0)  # another writer took it: wait for the next
                    continue
                batch = self.queue.get_nowait()
            else:
                batch = await self.queue.get()
            if batch is None:
                return
            self._queued(batch, -1)
            # When the sink falls behind, several batches wait here: write them as one
            # (a store pays a fixed cost per insert). The merged batch keeps one id for
            # its retries, so dedup still holds.
            limit = self._merge_limit()
            await self._pace(batch, limit)
            follow: Batch | None = None
            while not batch.keyed and not self.queue.empty() and batch.size < limit:
                nxt = self.queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                self._queued(nxt, -1)
                if nxt.keyed:  # its id must stay its own (replays are deduplicated by it)
                    follow = nxt
                    break
                batch = batch.merge(nxt)
            await self.lane.deliver_until_done(batch)
            if follow is not None:
                await self.lane.deliver_until_done(follow)


class SinkLane:
    """One sink's buffers, writers, retry state and health."""

    def __init__(
        self,
        pipeline: str,
        sink: Sink,
        tables: Sequence[Table],
        limits: PipelineLimits,
        retry: RetryPolicy,
        metrics: Metrics,
        dead_letters: DeadLetterStore,
    ) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.limits = limits
        self.retry = retry
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.epoch = f"{os.getpid()}-{time.time_ns()}"
        # Concurrent writes per table: PostgreSQL commits on several connections at once;
        # chDB inserts on two, the second only for a backlog one insert cannot take
        # (Sink.concurrent_writes_need_backlog).
        self.concurrency = max(1, int(sink.max_concurrent_writes))
        self.concurrent_writes_need_backlog = bool(
            getattr(sink, "concurrent_writes_need_backlog", False)
        )
        self.min_write_interval = float(sink.min_write_interval_secs)
        # the tables this sink writes (Sink.only_tables): it is handed no other rows
        only: frozenset[str] | None = getattr(sink, "only_tables", None)
        self.batchers = {t.name: Batcher(self, t) for t in tables if only is None or t.name in only}
        self.rows = 0  # buffered + in flight
        self.bytes = 0
        self.up = True
        self.down_reason: str | None = None  # "write", "ping" or "dead_letters"
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.last_contact = time.monotonic()
        self.in_flight = 0
        self.deployment_since: float | None = None  # the lane's deployment-error window
        self.give_up_at: float | None = None  # set during shutdown
        self.closing = asyncio.Event()  # set with give_up_at
        # a write still going at the shutdown deadline is cancelled and its rows spilled
        self.cancel_at_deadline = bool(getattr(sink, "cancel_writes_at_deadline", False))
        # a write going a check period without success: ping anyway (Sink.ping_while_writing)
        self.ping_while_writing = bool(getattr(sink, "ping_while_writing", False))
        self.on_drain: Callable[[], None] | None = None  # rows left the buffer
        # Backlog above which new input waits (Pipeline.admission): enough queued rows to keep
        # every writer busy, and to merge a write, a few times over.
        # For sinks whose writes need the interpreter (Sink.contends_with_input: the
        # event loop, or the GIL for a writer thread), which input being decoded slows down.
        # (A sink whose extra writes need a backlog is counted as one writer: its mark is
        # what it was before it had a second one.)
        writers = 1 if self.concurrent_writes_need_backlog else self.concurrency
        self.admit_rows = (
            max(4 * limits.batch_size * writers, limits.max_merge_rows)
            if sink.contends_with_input
            else None
        )

    def congested(self, rows: int, reserved: int = 0) -> bool:
        """Whether ``rows`` more would put a sink that is writing (up) over its mark,
        counting ``reserved`` rows admitted but not yet submitted. With no backlog at all
        it is not: input larger than the mark would otherwise wait out
        ``admit_max_wait_secs`` for a backlog that is not there."""
        mark = self.admit_rows
        backlog = self.rows + reserved
        return mark is not None and self.up and backlog > 0 and backlog + rows > mark

    def has_room(self, rows: int, nbytes: int) -> bool:
        """Whether ``rows`` more (``nbytes``) fit the buffer. An empty buffer takes any
        submit, however large: one larger than the whole buffer (a Starlink part, an
        HTTP batch, a Kafka chunk over ``ORBITSTREAM_MAX_BUFFER_ROWS``) would otherwise
        never get in, and its source would wait forever."""
        return self.rows == 0 or (
            self.rows + rows <= self.limits.max_buffer_rows
            and self.bytes + nbytes <= self.limits.max_buffer_bytes
        )

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.task = asyncio.create_task(
                batcher.run(), name=f"writer:{self.sink.name}:{batcher.table.name}"
            )

    async def deliver_until_done(self, batch: Batch) -> None:
        """:meth:`deliver`, and should anything unforeseen escape it, say so loudly, mark
        the sink down and try again: a writer never ends silently, rows never vanish."""
        attempt = 0
        while True:
            try:
                await self.deliver(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self._mark_down("write", f"{type(exc).__name__}: {exc}")
                delay = self.retry.delay(attempt)
                logger.exception(
                    "Writer failed unexpectedly; retrying the batch.",
                    extra={
                        "component": self.sink.name,
                        "table": batch.table.name,
                        "batch_id": batch.batch_id,
                        "records": batch.size,
                        "retry_in_secs": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)

    async def deliver(self, batch: Batch) -> None:
        """Write ``batch`` until it is committed (or isolated into dead letters)."""
        self.in_flight += 1
        try:
            await self._write_with_retry(batch)
        finally:
            self.in_flight -= 1
        self.rows -= batch.size
        self.bytes -= batch.nbytes
        for ack in batch.acks:
            ack.part_done()
        if self.on_drain is not None:
            self.on_drain()

    def _mark_down(self, reason: str, error: str) -> None:
        self.up = False
        self.down_reason = reason
        self.last_error = error

    def _mark_up(self) -> None:
        self.up = True
        self.down_reason = None
        self.last_error = None

    async def _write_until_deadline(self, batch: Batch) -> None:
        """``sink.write(batch)``, cancelled once the shutdown deadline passes (a Kafka
        delivery to a broker that went away waits out its message timeout: twice that
        for two batches in flight, far past ORBITSTREAM_SHUTDOWN_TIMEOUT).

        :raises TimeoutError: cancelled at the deadline (the caller spills the batch).
        """
        write = asyncio.ensure_future(self.sink.write(batch))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({write, closing}, return_when=asyncio.FIRST_COMPLETED)
            if not write.done() and self.give_up_at is not None:
                left = max(0.0, self.give_up_at - time.monotonic())
                await asyncio.wait({write}, timeout=left)
            if not write.done():
                write.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await write
                raise TimeoutError("write still in progress at the shutdown deadline")
            write.result()
        finally:
            closing.cancel()

    async def _write_with_retry(self, batch: Batch) -> None:
        labels = (self.pipeline, self.sink.name, batch.table.name)
        attempt = 0
        while True:
            attempt += 1
            if not self.up and self._past_deadline():
                # shutting down, the sink still down: another attempt (which may wait out
                # the SDK's own retries and timeouts) would only delay the spill
                await self._spill(batch, TimeoutError(self.last_error or "sink down"))
                return
            started = time.perf_counter()
            try:
                if self.cancel_at_deadline:
                    await self._write_until_deadline(batch)
                else:
                    await self.sink.write(batch)
            except SinkRejectedError as exc:
                self.metrics.inc("sink_errors", (self.pipeline, self.sink.name, "rejected"))
                self.deployment_since = None
                await self._isolate(batch, exc, exc.bad_rows)
                return
            except (SinkRetryableError, OSError, TimeoutError) as exc:
                self.metrics.inc("sink_errors", (self.pipeline, self.sink.name, "retryable"))
                self._mark_down("write", f"{type(exc).__name__}: {exc}")
                if getattr(exc, "deployment", False):
                    # The window is the lane's: once it has run out, later batches are not
                    # held again (until a write succeeds and the deployment is fixed).
                    now = time.monotonic()
                    if self.deployment_since is None:
                        self.deployment_since = now
                    waited = now - self.deployment_since
                    if waited >= self.limits.deployment_retry_secs:
                        await self._give_up_deployment(batch, exc, waited)
                        return
                else:
                    self.deployment_since = None
                if self._must_give_up(attempt):
                    await self._spill(batch, exc)
                    return
                delay = self.retry.delay(attempt)
                logger.warning(
                    "Sink write failed; retrying.",
                    extra={
                        "component": self.sink.name,
                        "component_kind": "sink",
                        "table": batch.table.name,
                        "batch_id": batch.batch_id,
                        "records": batch.size,
                        "attempt": attempt,
                        "retry_in_secs": round(delay, 3),
                        "error": self.last_error,
                    },
                )
                await self._back_off(delay)
                continue
            except Exception as exc:
                # Not a transport or server failure the sink recognised: most likely the
                # rows could not be encoded for this store. Retrying would stall every
                # row behind them, so the rows are treated as refused.
                self.metrics.inc("sink_errors", (self.pipeline, self.sink.name, "rejected"))
                logger.exception(
                    "Sink raised an unclassified error; treating the rows as refused.",
                    extra={
                        "component": self.sink.name,
                        "table": batch.table.name,
                        "batch_id": batch.batch_id,
                        "records": batch.size,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
                await self._isolate(batch, exc, None)
                return
            elapsed = time.perf_counter() - started
            self._mark_up()
            self.deployment_since = None
            self.last_success = time.time()
            self.last_contact = time.monotonic()
            self.metrics.flush_seconds.labels(*labels).observe(elapsed)
            self.metrics.inc("written_rows", labels, batch.size)
            self.metrics.inc("batches", (*labels, "delivered"))
            logger.debug(
                "Batch written.",
                extra={
                    "component": self.sink.name,
                    "table": batch.table.name,
                    "batch_id": batch.batch_id,
                    "records": batch.size,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            return

    async def _give_up_deployment(self, batch: Batch, exc: BaseException, waited: float) -> None:
        """A deployment error outlived its retry window: dead-letter the whole batch at once
        (bisecting would fail for every row) and go on with the next."""
        error = f"{type(exc).__name__}: {exc} (gave up after {waited:.0f} s)"
        await self._dead_letter(batch, range(batch.size), error)

    def _must_give_up(self, attempt: int) -> bool:
        return self.retry.exhausted(attempt) or self._past_deadline()

    def _past_deadline(self) -> bool:
        return self.give_up_at is not None and time.monotonic() >= self.give_up_at

    async def _back_off(self, delay: float) -> None:
        """Sleep ``delay`` before the next attempt, but no later than the shutdown
        deadline: a shutdown that begins during a long back-off (minutes, after many
        failures) must not wait it out."""
        began = time.monotonic()
        if self.give_up_at is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), delay)
        if self.give_up_at is not None:
            now = time.monotonic()
            rest = delay - (now - began)  # what is left of the back-off
            await asyncio.sleep(max(0.0, min(rest, self.give_up_at - now)))

    async def _isolate(
        self, batch: Batch, exc: BaseException, bad_rows: tuple[int, ...] | None
    ) -> None:
        """Only the offending rows become dead letters: the ones the sink named, or else
        found by bisecting the batch; their neighbours are written."""
        error = str(exc) or type(exc).__name__
        if bad_rows is not None and 0 < len(bad_rows) < batch.size:
            bad = sorted(set(i for i in bad_rows if 0 <= i < batch.size))
            await self._dead_letter(batch, bad, error)
            start = 0
            for part, index in enumerate([*bad, batch.size]):
                if index > start:  # the rows between two refused ones
                    await self._write_with_retry(batch.slice(start, index, f".ok{part}"))
                start = index + 1
            return
        if batch.size <= 1:
            await self._dead_letter(batch, range(batch.size), error)
            return
        for half in batch.split():
            if half.rows:
                await self._write_with_retry(half)

    async def _dead_letter(self, batch: Batch, indices: Sequence[int], error: str) -> None:
        """Keep rows ``indices`` of ``batch`` with the error: in the sink's own dead-letter
        table, else in the dead-letter file. Until one of them takes them the rows stay
        here (the sink shows as down): dead letters are data too."""
        if not indices:
            return
        rows = batch.rows_at(indices)
        letters = [
            DeadLetter(self.pipeline, batch.table.name, batch.batch_id, row, error)
            for row in batch.table.row_dicts(rows)
        ]
        labels = (self.pipeline, self.sink.name, batch.table.name)
        self.metrics.inc("dead_letters", labels, len(letters))
        self.metrics.inc("batches", (*labels, "rejected"))
        logger.error(
            "Rows refused by sink; sent to dead letters.",
            extra={
                "component": self.sink.name,
                "table": batch.table.name,
                "batch_id": batch.batch_id,
                "records": len(letters),
                "error": error,
            },
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.sink.write_dead_letters(letters)
                break
            except Exception as store_exc:
                logger.warning(
                    "Sink could not store dead letters; using the dead-letter file.",
                    extra={"component": self.sink.name, "error": repr(store_exc)},
                )
            try:
                await asyncio.to_thread(self.dead_letters.write, letters)
                break
            except Exception as file_exc:
                delay = self.retry.delay(attempt)
                self._mark_down("dead_letters", f"cannot store dead letters: {file_exc!r}")
                logger.error(
                    "Dead letters could not be stored anywhere; holding the rows.",
                    extra={
                        "component": self.sink.name,
                        "table": batch.table.name,
                        "records": len(letters),
                        "retry_in_secs": round(delay, 3),
                        "error": repr(file_exc),
                    },
                )
                if self._must_give_up(attempt):
                    logger.critical(
                        "Shutdown deadline passed with dead letters unstored; rows lost.",
                        extra={"component": self.sink.name, "records": len(letters)},
                    )
                    break
                await asyncio.sleep(delay)
        if self.down_reason == "dead_letters":
            self._mark_up()
        for pos, count in batch.acks_of(indices).items():
            batch.acks[pos].rows_dead_lettered(self.sink.name, count, error)

    async def _spill(self, batch: Batch, exc: BaseException) -> None:
        """Last resort at shutdown: keep the rows in the dead-letter file, never drop them."""
        error = f"sink unavailable at shutdown: {type(exc).__name__}: {exc}"
        letters = [
            DeadLetter(self.pipeline, batch.table.name, batch.batch_id, row, error)
            for row in batch.table.row_dicts(batch.rows)
        ]
        labels = (self.pipeline, self.sink.name, batch.table.name)
        self.metrics.inc("batches", (*labels, "errored"))
        self.metrics.inc("dead_letters", labels, len(letters))
        logger.error(
            "Sink still down at shutdown; batch spilled to the dead-letter file.",
            extra={
                "component": self.sink.name,
                "table": batch.table.name,
                "batch_id": batch.batch_id,
                "records": batch.size,
            },
        )
        try:
            await asyncio.to_thread(self.dead_letters.write, letters)
        except Exception as file_exc:
            logger.critical(
                "Rows could not be spilled at shutdown; they are lost.",
                extra={
                    "component": self.sink.name,
                    "records": batch.size,
                    "error": repr(file_exc),
                },
            )
        for pos, count in batch.acks_of(range(batch.size)).items():
            batch.acks[pos].rows_spilled(self.sink.name, count)

    async def check(self, timeout_secs: float) -> None:
        """Ping the store when nothing has been written lately, so ``/health`` notices a
        store that went away while idle (and comes back). A sink whose ping does not queue
        behind its writes (``ping_while_writing``: Kafka, whose deliveries only fail after
        the message timeout) is also pinged while a write has gone on longer than a check
        period without success."""
        if (self.in_flight or self.rows) and (
            not self.ping_while_writing or time.monotonic() - self.last_contact < timeout_secs
        ):
            return  # writes are going on: they tell the state
        try:
            await asyncio.wait_for(self.sink.ping(), timeout_secs)
        except Exception as exc:
            if self.up or self.down_reason == "ping":
                self._mark_down("ping", f"{type(exc).__name__}: {exc}")
                logger.warning(
                    "Store unreachable.",
                    extra={"component": self.sink.name, "error": self.last_error},
                )
            return
        self.last_contact = time.monotonic()
        if self.down_reason == "ping":
            self._mark_up()
            logger.info("Store reachable again.", extra={"component": self.sink.name})

    def health(self) -> dict[str, object]:
        return {
            "status": "up" if self.up else "down",
            "buffered_rows": self.rows,
            "buffered_bytes": self.bytes,
            "last_error": self.last_error,
            "last_success": self.last_success,
        }


class Pipeline:
    """A named pipeline: its tables, its sinks (one lane each) and its limits.

    :param name: pipeline name (``satellites``), part of every batch id.
    :param tables: the tables its mapper produces rows for.
    :param sinks: every sink gets every table's rows (fan-out).
    """

    def __init__(
        self,
        name: str,
        tables: Sequence[Table],
        sinks: Sequence[Sink],
        *,
        limits: PipelineLimits,
        retry: RetryPolicy,
        metrics: Metrics,
        dead_letters: DeadLetterStore,
    ) -> None:
        if not sinks:
            raise ValueError("a pipeline needs at least one sink")
        self.name = name
        self.tables = {t.name: t for t in tables}
        self.metrics = metrics
        self.limits = limits
        self.lanes = [
            SinkLane(name, s, tables, limits, retry, metrics, dead_letters) for s in sinks
        ]
        self._started = False
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._admitting: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        self._reserved = 0  # rows of inputs admitted but not yet submitted
        self._admits = any(lane.admit_rows is not None for lane in self.lanes)
        self._every_table = all(len(lane.batchers) == len(self.tables) for lane in self.lanes)
        for lane in self.lanes:
            lane.on_drain = self._drained
        metrics.add_gauge(
            "buffer_rows",
            lambda: {(name, lane.sink.name): float(lane.rows) for lane in self.lanes},
        )
        metrics.add_gauge(
            "buffer_bytes",
            lambda: {(name, lane.sink.name): float(lane.bytes) for lane in self.lanes},
        )
        metrics.add_gauge(
            "sink_up", lambda: {(name, lane.sink.name): float(lane.up) for lane in self.lanes}
        )

    async def start(self, timeout_secs: float = 60.0, *, start_sinks: bool = True) -> None:
        """Create tables in every sink (unless the runtime started them) and start writers.

        A sink that is unreachable (a retryable error) is retried with backoff for up to
        ``timeout_secs``; a configuration or schema error fails at once.
        """
        if start_sinks:
            for lane in self.lanes:
                await start_sink(lane.sink, list(self.tables.values()), lane.retry, timeout_secs)
        for lane in self.lanes:
            lane.start()
        self._started = True
        self._watcher = asyncio.create_task(self._watch(), name=f"health:{self.name}")

    async def _watch(self) -> None:
        """Ping idle stores every ``health_check_secs`` (see :meth:`SinkLane.check`)."""
        every = self.limits.health_check_secs
        while True:
            await asyncio.sleep(every)
            await asyncio.gather(
                *(lane.check(every) for lane in self.lanes), return_exceptions=True
            )

    @property
    def accepting(self) -> bool:
        return self._started and not self._closed

    def submit(self, rows: Mapping[str, RowData], ack: Ack | None = None) -> None:
        """Route rows (by table name) to every sink; all or nothing.

        :raises BackpressureError: a sink's buffer would overflow; nothing was added.
        """
        parts = 0
        for lane in self._reserve(rows):
            batchers = lane.batchers
            for table_name, table_rows in rows.items():
                if table_rows and table_name in batchers:
                    parts += batchers[table_name].add(table_rows, ack)
        if ack is not None:
            ack.add_parts(parts)

    def _reserve(self, rows: Mapping[str, RowData]) -> list[SinkLane]:
        """The lanes that take some of ``rows`` (``Sink.only_tables``), their buffers
        charged with their share (none when ``rows`` is empty). All or nothing.

        :raises BackpressureError: not accepting, or a lane's buffer would overflow.
        """
        if not self.accepting:
            raise BackpressureError("pipeline is not accepting", retry_after_secs=1.0)
        if self._every_table:  # the common case: one total for every lane
            total = total_bytes = 0
            for name, table_rows in rows.items():
                total += len(table_rows)
                total_bytes += len(table_rows) * self.tables[name].row_bytes
            if not total:
                return []
            for lane in self.lanes:
                if not lane.has_room(total, total_bytes):
                    raise self._buffer_full(lane)
            for lane in self.lanes:
                lane.rows += total
                lane.bytes += total_bytes
            return self.lanes
        sizes = {name: (len(r), len(r) * self.tables[name].row_bytes) for name, r in rows.items()}
        if not any(k for k, _ in sizes.values()):
            return []
        shares: list[tuple[SinkLane, int, int]] = []
        for lane in self.lanes:
            k = kbytes = 0
            for name, (rows_of, bytes_of) in sizes.items():
                if name in lane.batchers:
                    k += rows_of
                    kbytes += bytes_of
            if k:
                if not lane.has_room(k, kbytes):
                    raise self._buffer_full(lane)
                shares.append((lane, k, kbytes))
        for lane, k, kbytes in shares:
            lane.rows += k
            lane.bytes += kbytes
        return [lane for lane, _, _ in shares]

    def _buffer_full(self, lane: SinkLane) -> BackpressureError:
        return BackpressureError(
            f"buffer full for sink {lane.sink.name}",
            retry_after_secs=max(1.0, self.limits.linger_secs),
        )

    def has_room(self, rows: int, nbytes: int | None = None) -> bool:
        """Whether every lane could take ``rows`` more rows now."""
        size = nbytes if nbytes is not None else rows * 256
        return self.accepting and all(lane.has_room(rows, size) for lane in self.lanes)

    async def wait_for_room(self, rows: int = 1) -> None:
        """Return once every lane could take ``rows`` more rows (woken as batches drain)."""
        while not self.has_room(rows):
            if self._closed:
                raise BackpressureError("pipeline is closed", retry_after_secs=1.0)
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), 1.0)

    def _drained(self) -> None:
        self._room.set()
        if self._admitting:
            self._admit_waiting()

    def admission(self, rows: int) -> Awaitable[None] | None:
        """Flow control for sources that take input faster than the sinks write it (an HTTP
        server reading requests): ``None`` when input of about ``rows`` rows may be
        processed now; else an awaitable to wait on first, done once the sinks' backlog is
        back under its mark (``SinkLane.admit_rows``), in arrival order, or after
        ``admit_max_wait_secs`` at the latest. While the source waits, the event loop is
        free for the writers (PostgreSQL's round trips run on it; chDB's writer thread
        gets the GIL back at once after each call into the store), so under overload the
        sinks keep writing at their rate instead of the source filling the buffers and
        answering 503. A sink that is down is not waited for: its buffer takes the input,
        and refuses it when full, as before."""
        if not self._admits or (
            not self._admitting
            and not any(lane.congested(rows, self._reserved) for lane in self.lanes)
        ):
            return None
        if not self.accepting or not any(lane.up for lane in self.lanes):
            return None
        return self._admit(rows)

    async def _admit(self, rows: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._admitting.append((future, rows))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, self.limits.admit_max_wait_secs)
        finally:
            if future.done() and not future.cancelled():
                self._reserved -= rows  # admitted: the caller submits now
            else:
                future.cancel()
            if self._admitting:
                self._admit_waiting()

    def _admit_waiting(self) -> None:
        """Admit the waiting inputs, oldest first, while the backlog stays under the mark
        (counting the rows of inputs admitted but not yet submitted)."""
        queue = self._admitting
        while queue:
            future, rows = queue[0]
            if future.done():
                queue.popleft()
                continue
            if self.accepting and any(lane.congested(rows, self._reserved) for lane in self.lanes):
                return
            queue.popleft()
            self._reserved += rows
            future.set_result(None)

    def submit_keyed(self, rows: Mapping[str, RowData], key: str, ack: Ack | None = None) -> None:
        """Each table's rows as one batch of their own, with the id
        ``<pipeline>:<table>:<key>``: the same input submitted again (a replay after a
        crash) gets the same ids, and the stores drop it (dedup token / ledger). Keyed
        batches are never merged with others. All or nothing, like :meth:`submit`.

        :raises BackpressureError: a sink's buffer would overflow; nothing was added.
        """
        parts = 0
        for lane in self._reserve(rows):
            for table_name, table_rows in rows.items():
                if table_rows and table_name in lane.batchers:
                    batch = Batch(
                        self.tables[table_name],
                        table_rows if is_columnar(table_rows) else list(table_rows),
                        f"{self.name}:{table_name}:{key}",
                        [ack] if ack is not None else [],
                        ack_ends=[len(table_rows)] if ack is not None else [],
                        keyed=True,
                    )
                    lane.batchers[table_name].enqueue(batch)
                    parts += 1
        if ack is not None:
            ack.add_parts(parts)

    def submit_one(self, table: str, row: Row, ack: Ack | None = None) -> None:
        """One row for one table: :meth:`submit` without the loops (the single-point
        HTTP path).

        :raises BackpressureError: a sink's buffer would overflow; nothing was added.
        """
        if not self._started or self._closed:
            raise BackpressureError("pipeline is not accepting", retry_after_secs=1.0)
        nbytes = self.tables[table].row_bytes
        lanes = self.lanes
        if not self._every_table:
            lanes = [lane for lane in lanes if table in lane.batchers]
        for lane in lanes:
            if lane.rows and (
                lane.rows >= lane.limits.max_buffer_rows
                or lane.bytes + nbytes > lane.limits.max_buffer_bytes
            ):
                raise self._buffer_full(lane)
        for lane in lanes:
            lane.rows += 1
            lane.bytes += nbytes
            lane.batchers[table].add_one(row, ack)
        if ack is not None:
            ack.add_parts(len(lanes))

    def flush(self) -> None:
        """Cut every open batch now."""
        for lane in self.lanes:
            for batcher in lane.batchers.values():
                batcher.cut()

    def health(self) -> dict[str, dict[str, object]]:
        return {lane.sink.name: lane.health() for lane in self.lanes}

    @property
    def healthy(self) -> bool:
        return all(lane.up for lane in self.lanes)

    async def close(self, timeout_secs: float = 30.0, *, close_sinks: bool = True) -> None:
        """Stop accepting, flush every batch, wait for the writers, close the sinks (unless
        the runtime closes them: a store shared by pipelines closes after the last).

        A sink still failing after ``timeout_secs`` has its remaining batches spilled to
        the dead-letter file rather than dropped.
        """
        if self._closed:
            return
        self._closed = True
        self._admit_waiting()  # not accepting: the waiting inputs are refused now
        if self._watcher is not None:
            self._watcher.cancel()
        deadline = time.monotonic() + timeout_secs
        for lane in self.lanes:
            lane.give_up_at = deadline
            lane.closing.set()
            for batcher in lane.batchers.values():
                batcher.cut()
                batcher.stop()
        tasks = [b.task for lane in self.lanes for b in lane.batchers.values() if b.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if close_sinks:
            for lane in self.lanes:
                await close_sink(lane.sink)
        logger.info("Pipeline closed.", extra={"pipeline": self.name})
