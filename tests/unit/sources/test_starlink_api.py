"""Starlink source pieces without a network: settings, Retry-After, body checks, archive."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import msgspec
import pytest
from pydantic import SecretStr, ValidationError

from orbitstream.errors import SourceError
from orbitstream.sources.starlink_api import (
    DEFAULT_STREAM_URL,
    DEFAULT_TOKEN_URL,
    RawArchive,
    StarlinkSettings,
    count_rows,
    parse_retry_after,
)


def settings(**kw: object) -> StarlinkSettings:
    return StarlinkSettings(client_id="id", client_secret=SecretStr("s3cret"), **kw)  # type: ignore[arg-type]


def test_settings_defaults_are_the_documented_ones() -> None:
    s = settings()
    assert s.token_url == DEFAULT_TOKEN_URL == "https://starlink.com/api/auth/connect/token"
    assert s.stream_url == DEFAULT_STREAM_URL
    assert DEFAULT_STREAM_URL == "https://starlink.com/api/public/v2/telemetry/stream"
    assert (s.batch_size, s.max_linger_ms) == (1000, 15000)
    assert s.stream_timeout_secs >= s.max_linger_ms / 1000 + 1
    assert msgspec.json.decode(s.request_body()) == {"batchSize": 1000, "maxLingerMs": 15000}
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"batch_size": 65001},
        {"max_linger_ms": 0},
        {"max_linger_ms": 65001},
        {"token_url": "ftp://x"},
        {"stream_url": "starlink.com/api"},
        {"timeout_margin_secs": 0.5},
        {"token_auth": "digest"},
        {"unknown": 1},
    ],
)
def test_settings_refuse_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        settings(**bad)


def test_settings_refuse_missing_credentials() -> None:
    with pytest.raises(ValidationError):
        StarlinkSettings(client_id="", client_secret=SecretStr("x"))
    with pytest.raises(ValidationError):
        StarlinkSettings(client_id="id", client_secret=SecretStr(""))


def test_settings_bounds_are_inclusive() -> None:
    s = settings(batch_size=65000, max_linger_ms=65000, timeout_margin_secs=1.0)
    assert s.stream_timeout_secs == pytest.approx(66.0)
    assert msgspec.json.decode(settings(batch_size=1, max_linger_ms=1).request_body()) == {
        "batchSize": 1,
        "maxLingerMs": 1,
    }


@pytest.mark.parametrize(
    ("value", "secs"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_retry_after(value: str | None, secs: float | None) -> None:
    now = dt.datetime(2015, 10, 21, 7, 28, 0, tzinfo=dt.UTC)
    assert parse_retry_after(value, now=now) == secs


def test_count_rows_checks_the_whole_body() -> None:
    assert count_rows(b'{"data": {"values": [[1], [2], [3]]}, "metadata": {}}') == 3
    assert count_rows(b'{"data": {"values": []}}') == 0
    assert count_rows(b'{"data": {}}') == 0
    assert count_rows(b'{"other": 1}') == 0
    assert count_rows(b'{"data": 5, "x": [1, 2]}') == 0  # well-formed, another shape
    for bad in (b'{"data": {"values": [[1], [2', b"<html>", b'{"data": 5, "x": [1, 2', b""):
        with pytest.raises(msgspec.DecodeError):
            count_rows(bad)


def test_archive_round_trip_in_poll_order(tmp_path: Path) -> None:
    archive = RawArchive(tmp_path / "raw")
    bodies = [b'{"data": {"values": []}}', b'{"n": 2}', b"\n\n\x00binary"]
    archive.append(bodies[1], 2_000_000_000_000_000_000, 8)
    archive.append(bodies[0], 1_900_000_000_000_000_000, 7)
    path = archive.append(bodies[2], 2_000_000_000_000_000_000, 9)
    (tmp_path / "raw" / "0000000000000000001-0000000001.json.gz.tmp").write_bytes(b"torn")
    (tmp_path / "raw" / "notes.txt").write_text("ignored")
    polls = list(archive)
    # in arrival order: a poll time not after the newest is named just after it
    assert [p.body for p in polls] == [bodies[1], bodies[0], bodies[2]]
    assert [(p.poll_ns, p.poll_number) for p in polls] == [
        (2_000_000_000_000_000_000, 8),
        (2_000_000_000_000_000_001, 7),
        (2_000_000_000_000_000_002, 9),
    ]
    # read back sorted by name, whatever order the directory lists them in
    other = tmp_path / "other"
    other.mkdir()
    for p in reversed(polls):
        (other / p.path.name).write_bytes(p.path.read_bytes())
    assert [p.body for p in RawArchive.read(other)] == [bodies[1], bodies[0], bodies[2]]
    assert gzip.decompress(path.read_bytes()) == bodies[2]
    assert [p.body for p in RawArchive.read(path)] == [bodies[2]]


def test_archive_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "0000000000000000001-0000000001.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(SourceError, match="unreadable"):
        list(RawArchive.read(tmp_path))
    other = tmp_path / "dump.json"
    other.write_text("{}")
    with pytest.raises(SourceError, match="not a Starlink archive file"):
        list(RawArchive.read(other))


def test_archive_skips_unreadable_files_when_told_and_reads_the_rest(tmp_path: Path) -> None:
    archive = RawArchive(tmp_path / "raw")
    bodies = [b'{"n": 1}', b'{"n": 2}' * 500, b'{"n": 3}']
    files = [archive.append(b, 1_900_000_000_000_000_000 + i, i) for i, b in enumerate(bodies)]
    whole = files[1].read_bytes()
    files[1].write_bytes(whole[: len(whole) // 2])  # truncated (a full disk, a torn copy)
    files[2].write_bytes(b"\x1f\x8b" + b"\x00" * 20)  # a gzip header, then garbage
    skipped: list[tuple[Path, str]] = []
    polls = list(RawArchive.read(tmp_path / "raw", lambda f, why: skipped.append((f, why))))
    assert [p.body for p in polls] == [bodies[0]]
    assert [f for f, _ in skipped] == files[1:]
    assert all(why for _, why in skipped)
    with pytest.raises(SourceError, match="unreadable"):  # without the callback: raises
        list(RawArchive.read(tmp_path / "raw"))


def test_archive_names_keep_arrival_order_when_the_clock_steps_back(tmp_path: Path) -> None:
    """The durable mark compares names: a body received after the clock stepped back
    must still sort after the mark, or a restart would take it as stored."""
    archive = RawArchive(tmp_path / "raw", fsync=False)
    first = archive.append(b"a", 2_000_000_000_000_000_000, 1)
    archive.mark_durable(first)
    later = archive.append(b"b", 1_900_000_000_000_000_000, 2)  # clock went back
    assert later.name > first.name
    assert archive.pending() == [later]
    # a new process over the same archive continues after the newest name
    again = RawArchive(tmp_path / "raw", fsync=False).append(b"c", 5, 3)
    assert again.name > later.name
    assert [p.body for p in RawArchive.read(tmp_path / "raw")] == [b"a", b"b", b"c"]


def test_without_a_usable_mark_every_body_is_pending(tmp_path: Path) -> None:
    """Only a mark naming a body that is (or was) there says what is stored: no mark (a
    deleted one, an earlier version's archive), a garbled one, or one after the newest
    body make every body pending — written again, dropped by the stores where stored."""
    archive = RawArchive(tmp_path / "raw", fsync=False)
    assert archive.durable_mark() is None and archive.pending() == []
    paths = [archive.append(bytes([i]), 1_800_000_000_000_000_000 + i, i) for i in range(3)]
    assert archive.pending() == paths  # no mark
    archive.mark_durable(paths[0])
    assert archive.durable_mark() == paths[0].name and archive.pending() == paths[1:]
    archive.mark_durable(paths[2])
    assert archive.pending() == []
    paths[2].unlink()  # the newest body, the marked one, gone: nothing to go by
    assert archive.pending() == paths[:2]
    archive.mark_durable(paths[1])
    paths[0].unlink()  # old bodies pruned: the mark still tells
    assert archive.pending() == []
    paths = paths[1:2]
    (tmp_path / "raw" / "durable").write_text("garbage\n")
    assert archive.durable_mark() == "" and archive.pending() == paths
    (tmp_path / "raw" / "durable").write_text("9999999999999999999-0000000001.json.gz\n")
    assert archive.pending() == paths  # names a body after the newest there is
