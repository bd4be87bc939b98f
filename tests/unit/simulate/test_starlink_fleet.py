"""The fake Starlink fleet: deterministic, realistic, quirky (no network)."""

from __future__ import annotations

from collections import Counter

import pytest

from orbitstream.simulate.starlink import (
    COLUMNS,
    TICK_NS,
    Fault,
    Fleet,
    FleetConfig,
    parse_fault_rates,
)

START = 1_767_225_600_000_000_000


def run(ticks: int, **kw: object) -> tuple[Fleet, list[list[object]]]:
    fleet = Fleet(FleetConfig(start_ns=START, **kw))  # type: ignore[arg-type]
    rows: list[list[object]] = []
    for _ in range(ticks):
        rows += fleet.tick()
    return fleet, rows


def test_the_same_seed_gives_the_same_stream() -> None:
    assert run(5, seed=4)[1] == run(5, seed=4)[1]
    assert run(5, seed=4)[1] != run(5, seed=5)[1]


def test_rows_match_their_column_lists_and_look_real() -> None:
    fleet, rows = run(60, terminals=30, routers_per_terminal=1.2, seed=2)
    terminals = {t.device_id for t in fleet.terminals}
    kinds = Counter(str(r[0]) for r in rows)
    assert set(kinds) == {"u", "r", "i"} and kinds["u"] >= 60 * 30
    for row in rows:
        code = str(row[0])
        assert len(row) == len(COLUMNS[code])
        named = dict(zip(COLUMNS[code], row, strict=True))
        ts = named["UtcTimestampNs"]
        assert isinstance(ts, int)
        if code == "u":
            assert (ts - START) % TICK_NS == 0  # whole 15-s boundaries
            h3 = named["H3CellId"]
            assert isinstance(h3, int) and h3 > 2**53 and (h3 >> 52) & 0xF == 5  # resolution 5
            assert named["DeviceId"] in terminals
        elif code == "r":
            assert named["DishId"] in terminals and str(named["DeviceId"]).startswith("Router-")
        else:
            assert str(named["DeviceId"]).startswith("ip-")
            assert str(named["DeviceId"])[3:] in terminals
            assert ts % 1_000_000 == 0  # millisecond precision
    # quirks that must show up
    keys = Counter((r[0], r[2], r[1]) for r in rows)
    assert any(n > 1 for n in keys.values())  # exact duplicates
    assert any(r[0] == "i" and r[3] == r[4] == r[5] == [] for r in rows)  # tombstones
    assert any(r[0] == "u" and r[-1] for r in rows)  # active alerts
    assert any(r[0] == "u" and 64 in r[-1] for r in rows)  # type: ignore[operator]  # unnamed code
    assert any(r[0] == "r" and r[-1] for r in rows)
    assert any(r[0] == "r" and None in r for r in rows)  # null client stats
    first_types = [str(r[0]) for r in rows[:50]]
    assert first_types != sorted(first_types)  # interleaved, not grouped


def test_parse_fault_rates() -> None:
    assert parse_fault_rates("429=0.05, stream_500=0.01,token_503=1") == {
        Fault.STREAM_429: 0.05,
        Fault.STREAM_500: 0.01,
        Fault.TOKEN_503: 1.0,
    }
    assert parse_fault_rates("") == {}
    for bad in ("429", "teapot=0.1", "500=2"):
        with pytest.raises(ValueError, match=r"NAME=RATE|unknown fault|within 0..1"):
            parse_fault_rates(bad)


def test_a_fake_backlog_ends_now_when_no_start_is_given() -> None:
    import time

    from orbitstream.simulate.starlink import FakeStarlink, FakeStarlinkConfig

    before = time.time_ns()
    fake = FakeStarlink(FakeStarlinkConfig(fleet=FleetConfig(terminals=2), backlog_ticks=8))
    newest = max(int(str(r[1])) for r in fake.stream)
    assert before - 9 * TICK_NS <= min(int(str(r[1])) for r in fake.stream)
    assert newest <= time.time_ns() + TICK_NS
