"""Starlink mapping: the documented example, every quirk, state and commit semantics,
and a property test over generated responses (JSON in, rows out)."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbitstream.core.batch import is_columnar
from orbitstream.core.columns import rows_of
from orbitstream.core.tables import ColType
from orbitstream.pipelines.starlink import (
    ALERT_COLUMNS,
    IP_KEY,
    TABLES_BY_NAME,
    StaleMappingError,
    StarlinkEnvelopeError,
    StarlinkMapper,
    StarlinkMapping,
    body_digest,
    tables,
)
from orbitstream.simulate.starlink import (
    DEVICE_TYPES,
    IP_COLUMNS,
    ROUTER_ALERTS,
    ROUTER_COLUMNS,
    UT_ALERTS,
    UT_COLUMNS,
    Fleet,
    FleetConfig,
)

# shared/docs/starlink-example-response.json (the composed example of starlink-api.md §4)
EXAMPLE = Path(__file__).parent / "data" / "starlink-example-response.json"
RECEIVED = 1_767_225_630_000_000_000
UT_A = "ut10000000-20000000-3000000a"
UT_B = "ut10000000-20000000-3000000b"
ROUTER = "Router-0A0000000000000000000001"
T0 = 1_767_225_615_000_000_000
STEP = 15_000_000_000


def example_body() -> bytes:
    return EXAMPLE.read_bytes()


def example_doc() -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.json.decode(example_body())
    return doc


def envelope(
    values: list[Any],
    columns: dict[str, list[str]] | None = None,
    alerts: dict[str, dict[str, str]] | None = None,
    device_types: dict[str, str] | None = None,
) -> bytes:
    """A stream response (exact 64-bit integers, as the API sends them)."""
    return msgspec.json.encode(
        {
            "data": {
                "values": values,
                "columnNamesByDeviceType": columns
                if columns is not None
                else {"u": list(UT_COLUMNS), "r": list(ROUTER_COLUMNS), "i": list(IP_COLUMNS)},
            },
            "metadata": {
                "enums": {
                    "DeviceType": device_types if device_types is not None else DEVICE_TYPES,
                    "AlertsByDeviceType": alerts
                    if alerts is not None
                    else {
                        "u": {str(k): v for k, v in UT_ALERTS.items()},
                        "r": {str(k): v for k, v in ROUTER_ALERTS.items()},
                    },
                }
            },
        }
    )


def ut(dev: str = UT_A, ts: int = T0, alerts: list[Any] | None = None, **kw: Any) -> list[Any]:
    """A UserTerminal row in UT_COLUMNS order."""
    values: dict[str, Any] = {
        "DeviceType": "u",
        "UtcTimestampNs": ts,
        "DeviceId": dev,
        "DownlinkThroughput": 100.5,
        "UplinkThroughput": 10.25,
        "PingDropRateAvg": 0,
        "PingLatencyMsAvg": 30,
        "ObstructionPercentTime": 0.01,
        "Uptime": 1000,
        "SignalQuality": 1,
        "H3CellId": 599685771850416127,
        "SecondsUntilSwupdateRebootPossible": -1,
        "RunningSoftwareVersion": "2025.12.01.mr70001",
        "CountryCode": "US",
        "InTerritorialWaters": False,
        "ActiveAlerts": alerts if alerts is not None else [],
    }
    values.update(kw)
    return [values[c] for c in UT_COLUMNS]


def ip(dev: str = "ip-" + UT_A, ts: int = T0 - 3_000_000, v4: list[str] | None = None) -> list[Any]:
    if v4 is None:
        return ["i", ts, dev, ["203.0.113.10"], ["2001:db8:100:a0::/64"], ["2001:db8:1a2:b00::/56"]]
    return ["i", ts, dev, v4, [], []] if v4 else ["i", ts, dev, [], [], []]


def by_id(rows: list[tuple[object, ...]], idx: int = 1) -> dict[Any, Any]:
    return {r[idx]: r for r in rows}


# -- tables -------------------------------------------------------------------------------


def test_tables_keep_the_issue_names_and_types() -> None:
    telemetry, alerts, events, ips = tables()
    assert telemetry.name == "telemetry"
    assert telemetry.column_names[:5] == ("device_type", "device_id", "ts_ns", "metrics", "info")
    types = {c.name: c.type for c in telemetry.columns}
    assert types["ts_ns"] is ColType.TIMESTAMP
    assert types["metrics"] is ColType.MAP_STR_FLOAT and types["info"] is ColType.MAP_STR_STR
    assert {types[c] for c in ("ipv4", "ipv6_ue", "ipv6_cpe")} == {ColType.STRING_LIST}
    assert alerts.column_names == ("device_type", "device_id", "ts_ns", "alert_code", "alert_name")
    assert alerts.column("alert_code").type is ColType.INT64
    assert events.name == "alert_events" and "event" in events.column_names
    assert ips.column_names == ("device_id", "ts_ns", "ipv4", "ipv6_ue", "ipv6_cpe")
    assert all(t.ttl_days == 30 for t in (telemetry, alerts, events, ips))
    assert tables(None)[0].ttl_days is None


# -- the documented example ------------------------------------------------------------------


def test_example_response_maps_to_the_expected_rows() -> None:
    mapping = StarlinkMapper().map(example_body(), RECEIVED)
    assert mapping.dead == [] and mapping.duplicates == 0 and mapping.values == 5
    tel = by_id(mapping.tuples("telemetry"))
    assert set(tel) == {UT_A, UT_B, ROUTER}  # the Router row is NOT skipped
    a = tel[UT_A]
    assert a[0] == "UserTerminal" and a[2] == T0 and a[8] == RECEIVED
    assert a[3] == {
        "DownlinkThroughput": 184.52731,
        "UplinkThroughput": 21.07744,
        "PingDropRateAvg": 0.0,
        "PingLatencyMsAvg": 27.0,
        "ObstructionPercentTime": 0.004215,
        "Uptime": 86415.0,
        "SignalQuality": 0.98,
        "SecondsUntilSwupdateRebootPossible": -1.0,
    }
    assert a[4] == {
        "RunningSoftwareVersion": "2025.12.01.mr70001",
        "CountryCode": "US",
        "InTerritorialWaters": "false",
        "H3CellId": "85283083fffffff",
    }
    # the IP row of the same response is merged into its terminal's telemetry row
    assert a[5:8] == (("203.0.113.10",), ("2001:db8:100:a0::/64",), ("2001:db8:1a2:b00::/56",))
    b = tel[UT_B]
    assert b[5:8] == ((), (), ())  # its IP row is a tombstone
    assert b[3]["SignalQuality"] == 1.0 and b[4]["CountryCode"] == "XZ"
    r = tel[ROUTER]
    assert r[0] == "Router" and r[2] == 1767225627431950112  # full ns precision, exact
    assert r[4] == {
        "WifiSoftwareVersion": "2025.11.20.mr69900",
        "WifiHardwareVersion": "v4",
        "WifiIsRepeater": "false",
        "WifiIsBypassed": "false",
        "DishId": UT_A,
    }
    assert "Clients2GhzSignalStrengthMin" not in r[3]  # null: omitted
    assert r[3]["Clients2GhzSignalStrengthMax"] == -48 and r[3]["WanRxBytes"] == 91234567890
    assert len(r[3]) == 31 and "ActiveAlerts" not in r[3] and "ActiveAlerts" not in r[4]
    assert r[5:8] == ((), (), ())
    assert sorted(mapping.rows["alerts"]) == [
        ("Router", ROUTER, 1767225627431950112, 54, "geo_fenced"),  # the r map, not u's 54
        ("UserTerminal", UT_A, T0, 62, "pop_change"),
        ("UserTerminal", UT_A, T0, 82, "software_update_reboot_pending"),
    ]
    assert sorted(mapping.rows["ip_allocations"]) == [
        (
            UT_A,
            1767225611852000000,
            ("203.0.113.10",),
            ("2001:db8:100:a0::/64",),
            ("2001:db8:1a2:b00::/56",),
        ),
        (UT_B, 1767225613207000000, (), (), ()),
    ]
    assert sorted(e[1:] for e in mapping.rows["alert_events"]) == [
        (ROUTER, 1767225627431950112, 54, "geo_fenced", "opened"),
        (UT_A, T0, 62, "pop_change", "opened"),
        (UT_A, T0, 82, "software_update_reboot_pending", "opened"),
    ]


def test_h3_and_timestamps_stay_exact_64_bit_integers() -> None:
    h3 = 0x85283083FFFFFFF
    ts = 1_767_225_627_431_950_113  # odd: not representable as a float
    assert float(ts) != ts and float(h3) != h3
    body = envelope([ut(ts=ts, H3CellId=h3)])
    row: Any
    (row,) = StarlinkMapper().map(body, RECEIVED).tuples("telemetry")
    assert row[2] == ts
    assert row[4]["H3CellId"] == "85283083fffffff" and int(row[4]["H3CellId"], 16) == h3
    assert "H3CellId" not in row[3]


def test_integers_beyond_float_precision_go_to_info_as_text() -> None:
    cols = {"u": [*UT_COLUMNS, "FutureCounter"]}
    body = envelope([[*ut(), 2**60 + 1], [*ut(ts=T0 + STEP), 12]], cols)
    rows: Any
    rows = StarlinkMapper().map(body, RECEIVED).tuples("telemetry")
    assert rows[0][4]["FutureCounter"] == str(2**60 + 1) and "FutureCounter" not in rows[0][3]
    assert rows[1][3]["FutureCounter"] == 12 and "FutureCounter" not in rows[1][4]


# -- columns by name ---------------------------------------------------------------------------


def test_columns_are_read_by_name_in_every_response() -> None:
    doc = example_doc()
    expected = _all_rows(StarlinkMapper().map(example_body(), RECEIVED))
    rng = random.Random(3)
    for _ in range(5):
        shuffled = copy.deepcopy(doc)
        for code, cols in doc["data"]["columnNamesByDeviceType"].items():
            order = [0, *rng.sample(range(1, len(cols)), len(cols) - 1)]
            shuffled["data"]["columnNamesByDeviceType"][code] = [cols[i] for i in order]
            for n, row in enumerate(doc["data"]["values"]):
                if row[0] == code:
                    shuffled["data"]["values"][n] = [row[i] for i in order]
        got = _all_rows(StarlinkMapper().map(msgspec.json.encode(shuffled), RECEIVED))
        assert got == expected


def test_unknown_columns_are_typed_like_the_others() -> None:
    cols = {"u": [*UT_COLUMNS, "PowerInputVoltage", "Note", "Valid", "Missing", "Nested", "Obj"]}
    body = envelope([[*ut(), 48.5, "spare", True, None, [1, "a"], {"k": 1}]], cols)
    row: Any
    (row,) = StarlinkMapper().map(body, RECEIVED).tuples("telemetry")
    assert row[3]["PowerInputVoltage"] == 48.5
    assert row[4]["Note"] == "spare" and row[4]["Valid"] == "true"
    assert "Missing" not in row[3] and "Missing" not in row[4]
    assert row[4]["Nested"] == '[1,"a"]' and row[4]["Obj"] == '{"k":1}'


def test_mixed_int_float_columns_all_go_to_metrics() -> None:
    body = envelope([ut(PingDropRateAvg=0), ut(ts=T0 + STEP, PingDropRateAvg=0.0066)])
    rows: Any
    rows = StarlinkMapper().map(body, RECEIVED).tuples("telemetry")
    assert [r[3]["PingDropRateAvg"] for r in rows] == [0, 0.0066]


# -- dead rows and envelopes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("not a row", "not a non-empty array"),
        ([], "not a non-empty array"),
        (["x", T0, "dev"], "no column list for device type 'x'"),
        ([7, T0, "dev"], "no column list for device type 7"),
        (ut()[:-1], "row has 15 values but the column list of device type 'u' has 16"),
        ([*ut(), 1], "row has 17 values but the column list of device type 'u' has 16"),
        (ut(DeviceId=12), "DeviceId is not a non-empty string"),
        (ut(DeviceId=""), "DeviceId is not a non-empty string"),
        (ut(UtcTimestampNs=1.767225615e18), "UtcTimestampNs is not integer nanoseconds"),
        (ut(UtcTimestampNs="1767225615000000000"), "UtcTimestampNs is not integer nanoseconds"),
        (ut(UtcTimestampNs=1_767_225_615), "UtcTimestampNs is not integer nanoseconds"),
        (ut(alerts=[62, "x"]), "ActiveAlerts holds a value that is not an integer alert code"),
        (ut(ActiveAlerts={"62": 1}), "ActiveAlerts is not an array of alert codes"),
        (ut(alerts=[2**63]), "ActiveAlerts holds a value that is not an integer alert code"),
        (ut(alerts=[True]), "ActiveAlerts holds a value that is not an integer alert code"),
        (["i", T0, "ip-" + UT_A, [1], [], []], "Ipv4 holds a value that is not an address"),
        (["i", T0, "ip-" + UT_A, "1.2.3.4", [], []], "Ipv4 is not an array of addresses"),
        (["i", T0, "ip-" + UT_A], "row has 3 values but the column list of device type 'i'"),
    ],
)
def test_unmappable_rows_go_to_dead_with_the_reason(row: Any, needle: str) -> None:
    body = envelope([ut(dev=UT_B), row, ip()])
    mapping = StarlinkMapper().map(body, RECEIVED)
    (dead,) = mapping.dead
    assert needle in dead.reason
    assert dead.row == row
    # the neighbours still map
    assert [r[1] for r in mapping.tuples("telemetry")] == [UT_B]
    assert [r[0] for r in mapping.rows["ip_allocations"]] == [UT_A]
    letter = dead.to_dead_letter("starlink:abc")
    assert letter.pipeline == "starlink" and letter.batch_id == "starlink:abc"
    assert letter.error == dead.reason and letter.row["row"] == row


def test_a_bad_column_list_dead_letters_its_rows_only() -> None:
    cols = {"u": [c for c in UT_COLUMNS if c != "DeviceId"], "i": list(IP_COLUMNS)}
    body = envelope([ut()[:2] + ut()[3:], ip()], cols)
    mapping = StarlinkMapper().map(body, RECEIVED)
    assert [d.reason for d in mapping.dead] == [
        "the column list of device type 'u' has no DeviceId"
    ]
    assert len(mapping.rows["ip_allocations"]) == 1
    cols = {"u": ["UtcTimestampNs", "DeviceType", "DeviceId"]}
    mapping = StarlinkMapper().map(envelope([["u", T0, UT_A]], cols), RECEIVED)
    assert "does not start with DeviceType" in mapping.dead[0].reason


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>502</html>",
        b'{"data": {"values": [["u", 1',  # truncated
        b"[]",
        b'{"metadata": {}}',
        b'{"data": {"values": {"a": 1}}}',
        b'{"data": {"values": [], "columnNamesByDeviceType": {"u": "DeviceType"}}}',
        b'{"data": {"values": []}, "metadata": {"enums": {"AlertsByDeviceType": {"u": []}}}}',
    ],
)
def test_a_malformed_envelope_is_a_clear_error(body: bytes) -> None:
    with pytest.raises(StarlinkEnvelopeError, match="malformed Starlink stream response"):
        StarlinkMapper().map(body, RECEIVED)


@pytest.mark.parametrize(
    "body",
    [
        envelope([]),
        envelope([], columns={}),
        b'{"data": {"values": null, "columnNamesByDeviceType": null}}',
        b'{"data": {}}',
        b'{"data": {"values": [], "aggregateValues": null, "aggregateColumnNamesByDeviceType": null},'
        b' "metadata": {"LastPartitionUtcTimestampNs": 1767225615000000000, "enums": {}}}',
    ],
)
def test_empty_batches_map_to_no_rows(body: bytes) -> None:
    mapping = StarlinkMapper().map(body, RECEIVED)
    assert mapping.row_count == 0 and mapping.dead == [] and mapping.values == 0
    assert set(mapping.rows) == {"telemetry", "alerts", "alert_events", "ip_allocations"}


def test_missing_enums_fall_back_to_codes() -> None:
    body = msgspec.json.encode(
        {"data": {"values": [ut(alerts=[62])], "columnNamesByDeviceType": {"u": list(UT_COLUMNS)}}}
    )
    mapping = StarlinkMapper().map(body, RECEIVED)
    assert mapping.tuples("telemetry")[0][0] == "u"
    assert mapping.rows["alerts"] == [("u", UT_A, T0, 62, "unknown_alert_62")]


# -- alerts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ALERT_COLUMNS)
def test_every_alert_column_alias_is_read(column: str) -> None:
    cols = {"u": [c if c != "ActiveAlerts" else column for c in UT_COLUMNS]}
    mapping = StarlinkMapper().map(envelope([ut(alerts=[62, 97])], cols), RECEIVED)
    assert [(a[3], a[4]) for a in mapping.rows["alerts"]] == [
        (62, "pop_change"),
        (97, "data_overage_rate_limited"),
    ]
    row: Any = mapping.tuples("telemetry")[0]
    assert column not in row[3] and column not in row[4]


def test_null_and_empty_alerts_are_no_alerts() -> None:
    body = envelope([ut(alerts=[]), ut(ts=T0 + STEP, ActiveAlerts=None)])
    mapping = StarlinkMapper().map(body, RECEIVED)
    assert mapping.rows["alerts"] == [] and mapping.rows["alert_events"] == []
    assert len(mapping.tuples("telemetry")) == 2


def test_alert_names_come_from_the_same_response_and_unknown_codes_keep_their_number() -> None:
    first = envelope([ut(alerts=[82, 64])], alerts={"u": {"82": "software_update_reboot_pending"}})
    second = envelope(
        [ut(ts=T0 + STEP, alerts=[82, 64])],
        alerts={"u": {"82": "renamed_in_v2", "64": "high_sky_obstruction"}},
    )
    mapper = StarlinkMapper()
    m1 = mapper.map(first, RECEIVED)
    assert [(a[3], a[4]) for a in m1.rows["alerts"]] == [
        (82, "software_update_reboot_pending"),
        (64, "unknown_alert_64"),
    ]
    mapper.commit(m1)
    m2 = mapper.map(second, RECEIVED)
    assert [(a[3], a[4]) for a in m2.rows["alerts"]] == [
        (82, "renamed_in_v2"),
        (64, "high_sky_obstruction"),
    ]


def test_router_codes_are_resolved_with_the_router_map() -> None:
    router = next(r for r in example_doc()["data"]["values"] if r[0] == "r")
    body = envelope([ut(alerts=[54]), router])
    names = {(a[0], a[4]) for a in StarlinkMapper().map(body, RECEIVED).rows["alerts"]}
    assert names == {("UserTerminal", "mast_not_vertical"), ("Router", "geo_fenced")}


def test_alert_codes_given_as_strings_or_a_bare_integer_are_accepted() -> None:
    body = envelope([ut(alerts=["62", 62, 97]), ut(dev=UT_B, ActiveAlerts=82)])
    alerts = StarlinkMapper().map(body, RECEIVED).rows["alerts"]
    assert sorted((a[1], a[3]) for a in alerts) == [(UT_A, 62), (UT_A, 97), (UT_B, 82)]


def events(mapping: StarlinkMapping) -> list[tuple[object, ...]]:
    return [(e[2], e[3], e[4], e[5]) for e in mapping.rows["alert_events"]]


def test_alert_events_open_once_and_clear_when_a_later_row_lacks_the_code() -> None:
    mapper = StarlinkMapper()
    m1 = mapper.map(envelope([ut(alerts=[62]), ut(ts=T0 + STEP, alerts=[62, 82])]), RECEIVED)
    assert events(m1) == [
        (T0, 62, "pop_change", "opened"),
        (T0 + STEP, 82, "software_update_reboot_pending", "opened"),
    ]
    mapper.commit(m1)
    m2 = mapper.map(envelope([ut(ts=T0 + 2 * STEP, alerts=[82])]), RECEIVED)
    assert events(m2) == [(T0 + 2 * STEP, 62, "pop_change", "cleared")]
    mapper.commit(m2)
    m3 = mapper.map(envelope([ut(ts=T0 + 3 * STEP, alerts=[])]), RECEIVED)
    assert events(m3) == [(T0 + 3 * STEP, 82, "software_update_reboot_pending", "cleared")]
    mapper.commit(m3)
    assert mapper.open_alerts() == []


def test_alert_events_follow_time_order_within_a_response() -> None:
    rows = [ut(ts=T0 + 2 * STEP, alerts=[]), ut(ts=T0, alerts=[62]), ut(ts=T0 + STEP, alerts=[62])]
    mapping = StarlinkMapper().map(envelope(rows), RECEIVED)
    assert events(mapping) == [
        (T0, 62, "pop_change", "opened"),
        (T0 + 2 * STEP, 62, "pop_change", "cleared"),
    ]


def test_a_late_row_does_not_reopen_or_clear_an_open_alert() -> None:
    mapper = StarlinkMapper()
    mapper.commit(mapper.map(envelope([ut(ts=T0 + 2 * STEP, alerts=[62])]), RECEIVED))
    late = mapper.map(envelope([ut(ts=T0 + STEP, alerts=[])]), RECEIVED)
    assert events(late) == [] and len(late.tuples("telemetry")) == 1
    mapper.commit(late)
    assert [a[2] for a in mapper.open_alerts()] == [62]


def test_a_cleared_event_keeps_the_name_the_alert_opened_with() -> None:
    mapper = StarlinkMapper()
    mapper.commit(mapper.map(envelope([ut(alerts=[62])]), RECEIVED))
    renamed = envelope([ut(ts=T0 + STEP, alerts=[])], alerts={"u": {"62": "something_else"}})
    assert events(mapper.map(renamed, RECEIVED)) == [(T0 + STEP, 62, "pop_change", "cleared")]


def test_restore_carries_open_alerts_and_ips_over_a_restart() -> None:
    before = StarlinkMapper()
    before.commit(before.map(envelope([ut(alerts=[62, 82]), ip()]), RECEIVED))
    after = StarlinkMapper()
    after.restore(open_alerts=before.open_alerts(), ips=before.ip_state())
    assert sorted(after.open_alerts()) == sorted(before.open_alerts())
    mapping = after.map(envelope([ut(ts=T0 + STEP, alerts=[82])]), RECEIVED)
    assert events(mapping) == [(T0 + STEP, 62, "pop_change", "cleared")]  # 82 not reopened
    assert mapping.tuples("telemetry")[0][5] == ("203.0.113.10",)
    # plain tuples as a store query gives them (lists, the ip- prefix tolerated)
    fresh = StarlinkMapper()
    fresh.restore(
        open_alerts=[("UserTerminal", UT_A, 62, "pop_change", T0)],
        ips=[("ip-" + UT_A, T0, ["198.51.100.7"], [], [])],
    )
    mapping = fresh.map(envelope([ut(ts=T0 - STEP, alerts=[]), ut(ts=T0 + STEP, alerts=[62])]), 1)
    assert events(mapping) == []  # the older row is not newer than the restored opening
    assert [r[5] for r in mapping.tuples("telemetry")] == [("198.51.100.7",)] * 2


# -- IP allocations -----------------------------------------------------------------------------


def test_ip_rows_strip_the_prefix_and_tolerate_its_absence() -> None:
    body = envelope([ip(), ip(dev=UT_B, ts=T0)])
    rows: Any
    rows = StarlinkMapper().map(body, RECEIVED).rows["ip_allocations"]
    assert [r[0] for r in rows] == [UT_A, UT_B]


def test_null_ip_arrays_are_empty() -> None:
    body = envelope([["i", T0, "ip-" + UT_A, ["203.0.113.9"], None, None]])
    row: Any
    (row,) = StarlinkMapper().map(body, RECEIVED).rows["ip_allocations"]
    assert row == (UT_A, T0, ("203.0.113.9",), (), ())


def test_ips_merge_into_terminal_rows_across_committed_batches() -> None:
    mapper = StarlinkMapper()
    first = mapper.map(envelope([ip()]), RECEIVED)
    # not committed yet: a later response does not see it
    assert mapper.map(envelope([ut(ts=T0 + STEP)]), RECEIVED).tuples("telemetry")[0][5] == ()
    mapper.commit(first)
    row: Any
    (row,) = mapper.map(envelope([ut(ts=T0 + STEP)]), RECEIVED).tuples("telemetry")
    assert row[5:8] == (("203.0.113.10",), ("2001:db8:100:a0::/64",), ("2001:db8:1a2:b00::/56",))


def test_a_tombstone_clears_the_merged_addresses_from_its_time_on() -> None:
    mapper = StarlinkMapper()
    mapper.commit(mapper.map(envelope([ip(ts=T0 - STEP)]), RECEIVED))
    rows = [ut(ts=T0 + STEP), ip(ts=T0 + 1, v4=[]), ut(ts=T0 - 1)]
    mapping = mapper.map(envelope(rows), RECEIVED)
    merged = {r[2]: r[5] for r in mapping.tuples("telemetry")}
    assert merged == {T0 - 1: ("203.0.113.10",), T0 + STEP: ()}
    assert mapping.rows["ip_allocations"] == [(UT_A, T0 + 1, (), (), ())]
    mapper.commit(mapping)
    assert mapper.ip_state() == [(UT_A, T0 + 1, (), (), ())]
    assert mapper.map(envelope([ut(ts=T0 + 2 * STEP)]), 1).tuples("telemetry")[0][5:8] == (
        (),
        (),
        (),
    )


def test_an_older_ip_row_does_not_replace_newer_state() -> None:
    mapper = StarlinkMapper()
    mapper.commit(mapper.map(envelope([ip(ts=T0, v4=["203.0.113.50"])]), RECEIVED))
    mapper.commit(mapper.map(envelope([ip(ts=T0 - STEP, v4=["203.0.113.1"])]), RECEIVED))
    assert mapper.ip_state()[0][2] == ("203.0.113.50",)
    # a terminal row from before the newest state gets the earliest known state instead
    rows = mapper.map(envelope([ut(ts=T0 - 10 * STEP)]), 1).tuples("telemetry")
    assert rows[0][5] == ("203.0.113.50",)


def test_router_rows_get_no_merged_addresses() -> None:
    router = next(r for r in example_doc()["data"]["values"] if r[0] == "r")
    mapping = StarlinkMapper().map(envelope([ip(dev="ip-" + ROUTER), router]), RECEIVED)
    assert mapping.tuples("telemetry")[0][5:8] == ((), (), ())


# -- near-duplicates, purity, commit ----------------------------------------------------------


def test_near_duplicates_land_once_within_and_across_responses() -> None:
    mapper = StarlinkMapper()
    echo = ip(ts=T0 + 4_000_000)  # a few ms later, identical addresses: kept
    body = envelope([ut(), ut(), ut(ts=T0 + STEP), ip(), ip(), echo])
    mapping = mapper.map(body, RECEIVED)
    assert mapping.duplicates == 2
    assert [r[2] for r in mapping.tuples("telemetry")] == [T0, T0 + STEP]
    assert len(mapping.rows["ip_allocations"]) == 2
    # not committed: the same rows again are not duplicates yet
    assert mapper.map(body, RECEIVED).duplicates == 2
    mapper.commit(mapping)
    again = mapper.map(envelope([ut(), ut(ts=T0 + 2 * STEP), ip()]), RECEIVED)
    assert again.duplicates == 2 and [r[2] for r in again.tuples("telemetry")] == [T0 + 2 * STEP]


@pytest.mark.parametrize("per_commit", [1, 2, 5])
def test_the_recent_set_keeps_the_last_keys_and_is_bounded(per_commit: int) -> None:
    # after every commit: the last recent_limit committed keys are remembered, and none
    # older than the last 2 * recent_limit - 1 plus one commit's keys
    limit = 3
    mapper = StarlinkMapper(recent_limit=limit)
    times = [T0 + n * STEP for n in range(14 * per_commit)]
    committed: list[int] = []
    for lo in range(0, len(times), per_commit):
        chunk = times[lo : lo + per_commit]
        mapper.commit(mapper.map(envelope([ut(ts=t) for t in chunk]), RECEIVED))
        committed += chunk
        replay = mapper.map(envelope([ut(ts=t) for t in committed]), RECEIVED)
        stored_again = {r[2] for r in replay.tuples("telemetry")}
        remembered = [t for t in committed if t not in stored_again]
        assert replay.duplicates == len(remembered)
        assert remembered == committed[-len(remembered) :]  # the newest ones
        assert len(remembered) >= min(limit, len(committed)), (len(committed), remembered)
        assert len(remembered) <= 2 * limit - 1 + per_commit, (len(committed), remembered)
    # IP rows' keys are remembered the same way
    mapper.commit(mapper.map(envelope([ip(ts=t) for t in times[:limit]]), RECEIVED))
    assert mapper.map(envelope([ip(ts=t) for t in times[:limit]]), RECEIVED).duplicates == limit


def test_restored_keys_drop_near_duplicates_across_a_restart() -> None:
    # keys as the store gives them: type names, ip- stripped, PostgreSQL's microseconds
    stored_ns = T0 + 123_456  # the row's ns; the store keeps T0 + 123_000
    fresh = StarlinkMapper()
    fresh.restore(
        recent_keys=[("UserTerminal", UT_A, T0 + 123_000), (IP_KEY, UT_A, T0 - 3_000_000)],
        key_unit_ns=1000,
    )
    mapping = fresh.map(envelope([ut(ts=stored_ns), ip(), ut(ts=T0 + STEP)]), RECEIVED)
    assert mapping.duplicates == 2
    assert [r[2] for r in mapping.tuples("telemetry")] == [T0 + STEP]
    assert mapping.rows["ip_allocations"] == []
    # the key is per device type: the same id and time as a Router key is not a duplicate
    router = StarlinkMapper()
    router.restore(recent_keys=[("Router", UT_A, T0)])
    assert router.map(envelope([ut()]), 1).duplicates == 0
    # bounded: forgotten once recent_limit new keys were committed
    small = StarlinkMapper(recent_limit=2)
    small.restore(recent_keys=[("UserTerminal", UT_A, T0), ("UserTerminal", UT_B, T0)])
    assert small.map(envelope([ut(), ut(dev=UT_B)]), 1).duplicates == 2
    small.commit(small.map(envelope([ut(ts=T0 + n * STEP) for n in (1, 2)]), 1))
    assert small.map(envelope([ut(dev=UT_B)]), 1).duplicates == 0


def test_mapping_is_pure_and_deterministic() -> None:
    mapper = StarlinkMapper()
    mapper.commit(mapper.map(envelope([ut(alerts=[62]), ip()]), RECEIVED))
    state = (mapper.open_alerts(), mapper.ip_state())
    body = envelope([ut(ts=T0 + STEP, alerts=[82]), ip(ts=T0 + 5, v4=[]), ut(dev=UT_B)])
    first = mapper.map(body, RECEIVED)
    second = mapper.map(body, RECEIVED)
    assert first.rows == second.rows and first.dead == second.dead
    assert first.rows["alert_events"] and first.rows["ip_allocations"]
    assert (mapper.open_alerts(), mapper.ip_state()) == state  # mapping changed nothing
    assert body_digest(body) == body_digest(bytes(body)) != body_digest(body + b" ")


def test_a_stale_mapping_cannot_be_committed() -> None:
    mapper = StarlinkMapper()
    a = mapper.map(envelope([ut(alerts=[62])]), RECEIVED)
    b = mapper.map(envelope([ut(alerts=[62])]), RECEIVED)
    mapper.commit(a)
    with pytest.raises(StaleMappingError):
        mapper.commit(b)
    c = mapper.map(envelope([]), RECEIVED)
    mapper.restore()
    with pytest.raises(StaleMappingError):
        mapper.commit(c)


# -- generated responses ----------------------------------------------------------------------


def _sortable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v for v in row)


def _all_rows(
    mapping: StarlinkMapping, parts: Sequence[dict[str, Any]] = ()
) -> dict[str, list[Any]]:
    """Every table's rows (with those of ``parts``) as sorted tuples, maps as sorted
    items: comparable whatever the form and row order."""
    out = {name: list(map(_sortable, mapping.tuples(name))) for name in mapping.rows}
    for part in parts:
        for name, data in part.items():
            table = TABLES_BY_NAME[name]
            rows = rows_of(table, data) if is_columnar(data) else data
            out[name].extend(map(_sortable, rows))
    return {name: sorted(rows) for name, rows in out.items()}


def _account(mapping: StarlinkMapping) -> int:
    return (
        len(mapping.tuples("telemetry"))
        + len(mapping.rows["ip_allocations"])
        + len(mapping.dead)
        + mapping.duplicates
    )


def test_the_fakes_fleet_maps_completely() -> None:
    fleet = Fleet(FleetConfig(terminals=40, routers_per_terminal=1.3, seed=5, start_ns=T0))
    mapper = StarlinkMapper()
    codes = {"u": set(UT_ALERTS), "r": set(ROUTER_ALERTS)}
    for _ in range(30):
        values = fleet.tick()
        mapping = mapper.map(envelope(values), RECEIVED)
        assert mapping.dead == [] and _account(mapping) == len(values)
        for row in mapping.rows["alerts"]:
            code = "u" if row[0] == "UserTerminal" else "r"
            assert (row[4] == f"unknown_alert_{row[3]}") == (row[3] not in codes[code])
        mapper.commit(mapping)


_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_json = st.recursive(
    _json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int]:
    """A well-formed envelope: random column orders, extra columns, values of any JSON
    type, malformed rows, alias alert columns, types without column lists, duplicates."""
    alert_col = draw(st.sampled_from(ALERT_COLUMNS))
    base = {
        "u": [c if c != "ActiveAlerts" else alert_col for c in UT_COLUMNS],
        "r": list(ROUTER_COLUMNS),
        "i": list(IP_COLUMNS),
    }
    columns: dict[str, list[str]] = {}
    for code, cols in base.items():
        if draw(st.booleans()) or code == "u":
            extra = draw(
                st.lists(st.sampled_from(["X1", "X2", "Note", "Flag"]), unique=True, max_size=2)
            )
            rest = draw(st.permutations([*cols[1:], *extra]))
            columns[code] = [cols[0], *rest]
    devices = [f"ut{n:08x}" for n in range(4)]
    values: list[Any] = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["good", "good", "good", "junk", "short", "unknown"]))
        code = draw(st.sampled_from(sorted(columns)))
        cols = columns[code]
        row: list[Any] = []
        for name in cols:
            if name == "DeviceType":
                row.append(code)
            elif name == "UtcTimestampNs":
                row.append(draw(st.sampled_from([T0, T0 + STEP, T0 + 2 * STEP, T0 + 1])))
            elif name == "DeviceId":
                dev = draw(st.sampled_from(devices))
                row.append(("ip-" + dev) if code == "i" and draw(st.booleans()) else dev)
            elif name in ALERT_COLUMNS:
                row.append(draw(st.one_of(st.none(), st.lists(st.integers(40, 100), max_size=3))))
            elif name in ("Ipv4", "Ipv6Ue", "Ipv6Cpe"):
                row.append(draw(st.one_of(st.none(), st.lists(st.text(max_size=6), max_size=2))))
            else:
                row.append(draw(_json))
        if kind == "junk":
            values.append(draw(_json))
        elif kind == "short":
            values.append(row[: draw(st.integers(0, max(0, len(row) - 1)))])
        elif kind == "unknown":
            values.append(["z", *row[1:]])
        else:
            values.append(row)
    duplicate: bool = draw(st.booleans())
    if values and duplicate:  # an exact duplicate row
        values.append(copy.deepcopy(values[draw(st.integers(0, len(values) - 1))]))
    alerts = {
        "u": draw(st.dictionaries(st.integers(40, 100).map(str), st.text(max_size=5), max_size=4))
    }
    return envelope(values, columns, alerts), len(values)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_any_well_formed_response_maps_and_every_row_is_accounted_for(
    case: tuple[bytes, int],
) -> None:
    body, n = case
    mapper = StarlinkMapper()
    mapping = mapper.map(body, RECEIVED)
    assert mapping.values == n
    assert _account(mapping) == n  # each row: a telemetry or IP row, a dead row, or a duplicate
    for dead in mapping.dead:
        assert dead.reason
    telemetry: list[Any] = mapping.tuples("telemetry")
    for row in telemetry:
        assert all(type(v) in (int, float) for v in row[3].values())
        assert all(type(v) is str for v in row[4].values())
    assert mapper.map(body, RECEIVED).rows == mapping.rows
    mapper.commit(mapping)
    again = mapper.map(body, RECEIVED)  # everything mapped before is now a duplicate
    assert again.row_count == 0 and len(again.dead) == len(mapping.dead)
    assert again.duplicates == _account(mapping) - len(mapping.dead)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.integers(1, 7), st.integers(0, 7))
def test_the_columnar_path_maps_like_the_tuple_path(
    case: tuple[bytes, int], part: int, tail: int
) -> None:
    """The columnar mapper (the default), whole or ``part`` rows at a time (the last part
    ``tail`` rows), gives the rows, dead rows, duplicates and state of the tuple path;
    twice, so that the second body meets the state (open alerts, IPs, recent keys) the
    first one left."""
    body, _ = case
    reference = StarlinkMapper(columnar=False)
    fast = StarlinkMapper(columnar_min_rows=0)  # columnar whatever the size
    for current in (body, _later(body)):
        want = reference.map(current, RECEIVED)
        whole = fast.map(current, RECEIVED)
        job = fast.begin(current, RECEIVED)
        parts = list(job.parts(part, tail))
        in_parts = job.finish()
        for got, got_parts in ((whole, []), (in_parts, parts)):
            assert _all_rows(got, got_parts) == _all_rows(want)
            assert sorted(d.reason for d in got.dead) == sorted(d.reason for d in want.dead)
            assert got.duplicates == want.duplicates
        reference.commit(want)
        fast.commit(whole)
        assert sorted(fast.open_alerts()) == sorted(reference.open_alerts())
        assert sorted(fast.ip_state()) == sorted(reference.ip_state())


def _later(body: bytes) -> bytes:
    """The same response 15 s later: new row keys, the same devices."""
    doc = msgspec.json.decode(body)
    columns = doc["data"]["columnNamesByDeviceType"] or {}
    for row in doc["data"]["values"] or []:
        if type(row) is not list or not row or type(row[0]) is not str:
            continue
        cols = columns.get(row[0]) or []
        if "UtcTimestampNs" in cols and len(row) == len(cols):
            i = cols.index("UtcTimestampNs")
            if type(row[i]) is int:
                row[i] += 15_000_000_000
    return msgspec.json.encode(doc)


@pytest.mark.parametrize(
    ("total", "size", "tail", "sizes"),
    [
        (65_000, 16_384, 4_096, [15_226, 15_226, 15_226, 15_226, 4_096]),
        (65_000, 16_384, 0, [16_250, 16_250, 16_250, 16_250]),
        (16_384, 16_384, 4_096, [16_384]),  # no longer than a part: one part
        (16_385, 16_384, 4_096, [12_289, 4_096]),
        (10, 3, 5, [2, 2, 3, 3]),  # a tail longer than a part is a part
    ],
)
def test_parts_cover_the_body_once_with_a_short_last_part(
    total: int, size: int, tail: int, sizes: list[int]
) -> None:
    """Parts are consecutive ranges of the body (so a replay is cut the same way), none
    longer than ``size``, the last one ``tail`` rows."""
    columns = {"u": ["DeviceType", "UtcTimestampNs", "DeviceId", "DownlinkThroughput"]}
    values = [["u", 1_767_225_600_000_000_000 + i, f"ut-{i}", 1.0] for i in range(total)]
    body = msgspec.json.encode(
        {"data": {"values": values, "columnNamesByDeviceType": columns}, "metadata": {}}
    )
    job = StarlinkMapper(columnar_min_rows=0).begin(body, RECEIVED)
    parts = list(job.parts(size, tail))
    assert [len(p["telemetry"]) for p in parts] == sizes
    mapping = job.finish()
    assert len(mapping.rows["telemetry"]) == 0  # the parts covered everything
    telemetry = TABLES_BY_NAME["telemetry"]
    devices = [r for p in parts for r in rows_of(telemetry, p["telemetry"])]
    assert [r[1] for r in devices] == [f"ut-{i}" for i in range(total)]
