"""A batch's whole write as one simple query, ``COPY … FROM STDIN`` inside it.

PostgreSQL runs the statements of one simple query message as one implicit transaction
(committed when the last one ends, rolled back when one fails), and a ``COPY FROM STDIN``
among them switches the connection to the copy sub-protocol and carries on with the rest
after ``CopyDone``. So ``claim; [stage;] COPY …; [merge]`` commits the ledger row, the
rollup buckets and the rows together in one round trip, where ``BEGIN``, ``COPY`` and
``COMMIT`` take three (psycopg's ``Cursor.copy()`` refuses a query of more than one
statement, hence this generator on the connection's own libpq handle). Measured on the
service's 1000-point PostgreSQL scenario: decisions §45.

:func:`copy_query` is a psycopg *generator* (it yields what the socket must be ready for
and is driven by ``AsyncConnection.wait``), built from psycopg's own steps
(``generators.execute``, ``copy_to``, ``fetch_many``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import generators, pq
from psycopg.waiting import Ready, Wait

if TYPE_CHECKING:
    from psycopg.abc import PQGen
    from psycopg.pq.abc import PGconn, PGresult

__all__ = ["CopyOutcome", "copy_query"]

# psycopg's own limits: libpq copes badly with one call of more than 128 KiB
# (psycopg ticket #255), and data is flushed to the server every MiB so libpq's output
# buffer cannot grow without bound when the server reads slower than we encode.
_PUT_BYTES = 128 * 1024
_FLUSH_BYTES = 1024 * 1024
_COPY_IN = pq.ExecStatus.COPY_IN


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    """What the server answered.

    :attr before: the results of the statements before the COPY; when the query stopped
        there (a statement failed), the last one is that error and nothing was copied.
    :attr after: the COPY's result and those of the statements after it.
    :attr nbytes: COPY data sent.
    """

    before: list[PGresult]
    after: list[PGresult]
    nbytes: int

    @property
    def copied(self) -> bool:
        return bool(self.before) and self.before[-1].status == _COPY_IN


def copy_query(pgconn: PGconn, query: bytes, pieces: Iterator[bytes]) -> PQGen[CopyOutcome]:
    """Send ``query`` (a simple query holding one ``COPY … FROM STDIN``), the COPY data
    from ``pieces``, and return every result.

    An exception from ``pieces`` (rows that cannot be encoded) aborts the COPY with
    ``CopyFail`` — the server then rolls the whole query back — and is re-raised once the
    server has answered, so the connection is idle again.
    """
    pgconn.send_query(query)
    before = yield from generators.execute(pgconn)
    if not before or before[-1].status != _COPY_IN:
        return CopyOutcome(before, [], 0)
    nbytes = unflushed = 0
    try:
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, len(view), _PUT_BYTES):
                yield from generators.copy_to(pgconn, view[start : start + _PUT_BYTES], False)
            nbytes += len(view)
            unflushed += len(view)
            if unflushed >= _FLUSH_BYTES:
                yield from _flush(pgconn)
                unflushed = 0
    except Exception as exc:
        yield from _end(pgconn, f"write aborted: {type(exc).__name__}".encode())
        yield from generators.fetch_many(pgconn)  # the abort's error: the query rolled back
        raise
    yield from _end(pgconn, None)
    after = yield from generators.fetch_many(pgconn)
    return CopyOutcome(before, after, nbytes)


def _end(pgconn: PGconn, error: bytes | None) -> PQGen[None]:
    """``CopyDone`` (or ``CopyFail`` with ``error``), flushed."""
    while pgconn.put_copy_end(error) == 0:
        while not (yield Wait.W):
            continue
    yield from _flush(pgconn)


def _flush(pgconn: PGconn) -> PQGen[None]:
    """Send what libpq holds; read meanwhile, so a server that answers mid-COPY (an
    error) cannot block us on a full socket."""
    while pgconn.flush() != 0:
        while not (ready := (yield Wait.RW)):
            continue
        if ready & Ready.R:
            pgconn.consume_input()
