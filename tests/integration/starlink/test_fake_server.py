"""The fake Starlink API over real loopback HTTP: what a client can observe of it."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import msgspec
import pytest

from orbitstream.pipelines.starlink import StarlinkMapper
from orbitstream.simulate.starlink import (
    COLUMNS,
    EXTRA_COLUMNS,
    STREAM_PATH,
    TOKEN_PATHS,
    FakeStarlink,
    Fault,
)
from tests.integration.starlink.conftest import FakeFactory

pytestmark = pytest.mark.integration


async def post(
    url: str,
    *,
    data: Any = None,
    json_body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    body: Any = raw if raw is not None else data
    hdrs = dict(headers or {})
    if json_body is not None:
        body = msgspec.json.encode(json_body)
        hdrs["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers=hdrs, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def token(fake: FakeStarlink, client_id: str | None = None) -> str:
    status, _, body = await post(
        fake.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": client_id or fake.client_id,
            "client_secret": fake.config.clients[client_id or fake.client_id],
        },
    )
    assert status == 200, body
    tok: str = msgspec.json.decode(body)["access_token"]
    return tok


async def stream(
    fake: FakeStarlink, tok: str, body: Any = None, *, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    return await post(
        fake.stream_url,
        json_body=body if body is not None else {"batchSize": 1000, "maxLingerMs": 100},
        headers={"Authorization": f"Bearer {tok}"},
        timeout=timeout,
    )


# -- token endpoint --------------------------------------------------------------------------


async def test_token_endpoint_form_basic_and_aliases(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(expires_in=123)
    for path in TOKEN_PATHS:
        status, _, body = await post(
            fake.base_url + path,
            data={
                "grant_type": "client_credentials",
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
            },
        )
        assert status == 200
        doc = msgspec.json.decode(body)
        assert set(doc) == {"access_token", "expires_in", "token_type", "scope"}
        assert doc["expires_in"] == 123 and doc["token_type"] == "Bearer"
    basic = base64.b64encode(f"{fake.client_id}:{fake.client_secret}".encode()).decode()
    status, _, body = await post(
        fake.token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert status == 200 and msgspec.json.decode(body)["access_token"]
    assert fake.count("token", 200) == len(TOKEN_PATHS) + 1


async def test_token_endpoint_refuses_wrong_credentials(fake_factory: FakeFactory) -> None:
    fake = await fake_factory()
    form = {"grant_type": "client_credentials", "client_id": fake.client_id}
    status, _, body = await post(fake.token_url, data={**form, "client_secret": "wrong"})
    assert (status, msgspec.json.decode(body)) == (400, {"error": "invalid_client"})
    status, _, body = await post(fake.token_url, data={**form, "client_id": "nobody"})
    assert status == 400
    basic = base64.b64encode(f"{fake.client_id}:wrong".encode()).decode()
    status, headers, body = await post(
        fake.token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert (status, msgspec.json.decode(body)) == (401, {"error": "invalid_client"})
    assert "WWW-Authenticate" in headers
    status, _, body = await post(
        fake.token_url, data={**form, "client_secret": fake.client_secret, "grant_type": "password"}
    )
    assert (status, msgspec.json.decode(body)) == (400, {"error": "unsupported_grant_type"})
    assert fake.tokens == {}


# -- stream endpoint -------------------------------------------------------------------------


async def test_stream_requires_a_valid_unexpired_bearer_token(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1, expires_in=1)
    status, _, _ = await post(fake.stream_url, json_body={})
    assert status == 401
    status, _, _ = await stream(fake, "not-a-token")
    assert status == 401
    tok = await token(fake)
    status, _, _ = await stream(fake, tok)
    assert status == 200
    await asyncio.sleep(1.1)  # expires_in=1
    status, _, _ = await stream(fake, tok)
    assert status == 401
    tok = await token(fake)
    fake.expire_tokens()
    assert (await stream(fake, tok))[0] == 401


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"accountNumber": "ACC-1", "batchSize": 10, "maxLingerMs": 10}, "accountNumber"),
        ({"batchSize": 0}, "batchSize"),
        ({"batchSize": 65001}, "batchSize"),
        ({"batchSize": "10"}, "batchSize"),
        ({"batchSize": True}, "batchSize"),
        ({"maxLingerMs": 1.5}, "maxLingerMs"),
        ([1, 2], "JSON object"),
    ],
)
async def test_stream_validates_the_body(fake_factory: FakeFactory, body: Any, needle: str) -> None:
    fake = await fake_factory(backlog_ticks=1)
    tok = await token(fake)
    status, _, raw = await stream(fake, tok, body)
    assert status == 400
    assert needle in msgspec.json.decode(raw)["errors"][0]["errorMessage"]
    assert fake.position() == 0


async def test_stream_refuses_a_body_that_is_not_json(fake_factory: FakeFactory) -> None:
    fake = await fake_factory()
    tok = await token(fake)
    status, _, _ = await post(
        fake.stream_url, raw=b"{nope", headers={"Authorization": f"Bearer {tok}"}
    )
    assert status == 400


async def test_each_client_has_its_own_cursor_advanced_on_each_200(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(backlog_ticks=3, clients={"alpha": "a-secret", "beta": "b-secret"})
    total = len(fake.stream)
    ta, tb = await token(fake, "alpha"), await token(fake, "beta")
    seen: dict[str, list[list[Any]]] = {"alpha": [], "beta": []}
    for who, tok in (("alpha", ta), ("beta", tb), ("alpha", ta)):
        status, _, body = await stream(fake, tok, {"batchSize": 7, "maxLingerMs": 50})
        assert status == 200
        seen[who] += msgspec.json.decode(body)["data"]["values"]
    assert seen["alpha"] == fake.stream[:14] and seen["beta"] == fake.stream[:7]
    assert fake.position("alpha") == 14 and fake.position("beta") == 7
    assert [s.position for s in fake.served] == [0, 0, 7]
    assert total == len(fake.stream)


async def test_long_poll_waits_up_to_the_linger_and_returns_early_at_batch_size(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory()
    tok = await token(fake)
    started = time.monotonic()
    status, _, body = await stream(fake, tok, {"batchSize": 10, "maxLingerMs": 400})
    waited = time.monotonic() - started
    doc = msgspec.json.decode(body)
    assert status == 200 and doc["data"]["values"] == [] and waited >= 0.38
    # the empty batch is the full envelope
    assert set(doc["data"]["columnNamesByDeviceType"]) == {"u", "r", "i"}
    assert doc["metadata"]["enums"]["DeviceType"]["d"] == "UserTerminalDataUsage"

    async def later() -> None:
        await asyncio.sleep(0.3)
        fake.extend(2)

    task = asyncio.create_task(later())
    started = time.monotonic()
    status, _, body = await stream(fake, tok, {"batchSize": 10, "maxLingerMs": 20_000})
    waited = time.monotonic() - started
    await task
    assert status == 200 and len(msgspec.json.decode(body)["data"]["values"]) == 10
    assert 0.25 <= waited < 10  # returned when the rows came, not after the linger


async def test_empty_column_lists_variant(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(empty_column_lists=True)
    tok = await token(fake)
    _, _, body = await stream(fake, tok, {"batchSize": 5, "maxLingerMs": 10})
    assert msgspec.json.decode(body)["data"] == {"values": [], "columnNamesByDeviceType": {}}


async def test_the_fake_records_exactly_what_it_served(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=4, record_bodies=True, legacy_fields=True)
    tok = await token(fake)
    got: list[list[Any]] = []
    while fake.available() > 0:
        _, _, body = await stream(fake, tok, {"batchSize": 13, "maxLingerMs": 10})
        doc = msgspec.json.decode(body)
        assert doc["data"]["aggregateValues"] is None
        assert isinstance(doc["metadata"]["LastPartitionUtcTimestampNs"], int)
        got += doc["data"]["values"]
        assert fake.served[-1].body == body
        assert fake.served[-1].rows == doc["data"]["values"]
    assert got == fake.stream
    assert [r for s in fake.served for r in s.rows] == fake.stream
    assert all(s.batch_size == 13 and s.linger_ms == 10 for s in fake.served)


async def test_reordered_and_extra_columns_carry_the_same_rows_by_name(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(backlog_ticks=3, reorder_columns=True, extra_columns=True)
    tok = await token(fake)
    orders = []
    while fake.available() > 0:
        _, _, body = await stream(fake, tok, {"batchSize": 20, "maxLingerMs": 10})
        orders.append(msgspec.json.decode(body)["data"]["columnNamesByDeviceType"]["u"])
    assert len({tuple(o) for o in orders}) > 1  # the order changes between responses
    assert all(o[0] == "DeviceType" for o in orders)
    assert all(set(EXTRA_COLUMNS["u"]) <= set(o) for o in orders)
    served = fake.served_rows()
    assert len(served) == len(fake.stream)
    for (code, named), canonical in zip(served, fake.stream, strict=True):
        assert {k: named[k] for k in COLUMNS[code]} == dict(
            zip(COLUMNS[code], canonical, strict=True)
        )


async def test_alert_maps_change_between_responses(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=2)
    tok = await token(fake)
    _, _, first = await stream(fake, tok, {"batchSize": 5, "maxLingerMs": 10})
    fake.change_alert_map()
    _, _, second = await stream(fake, tok, {"batchSize": 5, "maxLingerMs": 10})
    m1 = msgspec.json.decode(first)["metadata"]["enums"]["AlertsByDeviceType"]
    m2 = msgspec.json.decode(second)["metadata"]["enums"]["AlertsByDeviceType"]
    assert m1["u"]["82"] == "software_update_reboot_pending"
    assert m2["u"]["82"] == "software_update_reboot_pending_v2"
    assert m2["r"]["54"] == "geo_fenced_v2" and len(m2["u"]) == len(m1["u"]) - 1
    assert [s.alert_names for s in fake.served] == [m1, m2]
    # and the mapper names alerts from each response's own map
    mapper = StarlinkMapper()
    fake.push([["u", fake.fleet.now_ns, "ut00", *[0] * 12, [82]]])
    fake.push([["u", fake.fleet.now_ns + 1, "ut00", *[0] * 12, [82]]])
    assert len(fake.stream[-1]) == len(COLUMNS["u"])
    fake.positions[fake.client_id] = len(fake.stream) - 2
    _, _, b1 = await stream(fake, tok, {"batchSize": 1, "maxLingerMs": 10})
    fake.change_alert_map()
    _, _, b2 = await stream(fake, tok, {"batchSize": 1, "maxLingerMs": 10})
    names = [mapper.map(b, 1).rows["alerts"][0][4] for b in (b1, b2)]
    assert names == ["software_update_reboot_pending_v2", "software_update_reboot_pending_v3"]


# -- fault switches -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.STREAM_403, 403),
        (Fault.STREAM_404, 404),
        (Fault.STREAM_500, 500),
        (Fault.STREAM_503, 503),
        (Fault.STREAM_429, 429),
    ],
)
async def test_stream_status_faults(fake_factory: FakeFactory, fault: Fault, status: int) -> None:
    fake = await fake_factory(backlog_ticks=1)
    tok = await token(fake)
    fake.inject(fault, count=2)
    for _ in range(2):
        got, headers, _ = await stream(fake, tok)
        assert got == status and "Retry-After" not in headers
    assert (await stream(fake, tok))[0] == 200
    assert fake.position() == len(fake.stream) and len(fake.served) == 1
    assert [r.fault for r in fake.requests if r.endpoint == "stream"] == [fault.value] * 2 + [None]


async def test_429_with_retry_after(fake_factory: FakeFactory) -> None:
    fake = await fake_factory()
    tok = await token(fake)
    fake.inject(Fault.STREAM_429, retry_after=7)
    fake.inject(Fault.STREAM_503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    assert (await stream(fake, tok))[1]["Retry-After"] == "7"
    assert (await stream(fake, tok))[1]["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"


async def test_401_mid_stream_revokes_the_token(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    tok = await token(fake)
    assert (await stream(fake, tok, {"batchSize": 2, "maxLingerMs": 10}))[0] == 200
    fake.inject(Fault.STREAM_401)
    assert (await stream(fake, tok))[0] == 401
    assert (await stream(fake, tok))[0] == 401  # that token stays refused
    assert (await stream(fake, await token(fake)))[0] == 200


async def test_stall_answers_504_late_and_keeps_the_position(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    tok = await token(fake)
    fake.inject(Fault.STREAM_STALL, stall_secs=0.5)
    started = time.monotonic()
    status, _, _ = await stream(fake, tok)
    assert status == 504 and time.monotonic() - started >= 0.45
    assert fake.position() == 0
    # a client that gives up first sees a timeout
    fake.inject(Fault.STREAM_STALL, stall_secs=3)
    with pytest.raises(TimeoutError):
        await stream(fake, tok, timeout=0.3)
    assert fake.position() == 0


async def test_truncated_json_keeps_or_loses_the_rows(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=2)
    tok = await token(fake)
    fake.inject(Fault.STREAM_TRUNCATE)
    status, _, body = await stream(fake, tok, {"batchSize": 5, "maxLingerMs": 10})
    assert status == 200
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(body)
    assert fake.position() == 0 and fake.served == []
    fake.inject(Fault.STREAM_TRUNCATE, advance=True)
    await stream(fake, tok, {"batchSize": 5, "maxLingerMs": 10})
    assert fake.position() == 5 and fake.served[0].lost and fake.served_rows() == []
    fake.inject(Fault.STREAM_INVALID_JSON)
    status, _, body = await stream(fake, tok, {"batchSize": 5, "maxLingerMs": 10})
    assert status == 200 and body.startswith(b"<html>") and fake.position() == 5


async def test_token_endpoint_faults(fake_factory: FakeFactory) -> None:
    fake = await fake_factory()
    fake.inject(Fault.TOKEN_429, retry_after=2)
    fake.inject(Fault.TOKEN_503)
    form = {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
    }
    status, headers, _ = await post(fake.token_url, data=form)
    assert status == 429 and headers["Retry-After"] == "2"
    assert (await post(fake.token_url, data=form))[0] == 503
    assert (await post(fake.token_url, data=form))[0] == 200


async def test_rate_limit_per_client(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(rate_limit_per_min=2)
    tok = await token(fake)
    body = {"batchSize": 1, "maxLingerMs": 1}
    assert [(await stream(fake, tok, body))[0] for _ in range(2)] == [200, 200]
    status, headers, _ = await stream(fake, tok, body)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 60


async def test_random_faults_are_seeded(fake_factory: FakeFactory) -> None:
    statuses = []
    for _ in range(2):
        fake = await fake_factory(random_faults={Fault.STREAM_500: 0.5}, seed=42)
        tok = await token(fake)
        statuses.append(
            [(await stream(fake, tok, {"batchSize": 1, "maxLingerMs": 1}))[0] for _ in range(12)]
        )
    assert statuses[0] == statuses[1] and set(statuses[0]) == {200, 500}


def test_stream_path_is_the_documented_one() -> None:
    assert STREAM_PATH == "/api/public/v2/telemetry/stream"
    assert TOKEN_PATHS[0] == "/api/auth/connect/token"
