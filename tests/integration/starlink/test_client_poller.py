"""StarlinkClient and StarlinkPoller against the fake over real loopback HTTP: the token
lifecycle, every fault switch, drain mode, and nothing polled while ``deliver`` runs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from orbitstream.simulate.starlink import FakeStarlink, Fault
from orbitstream.sources.starlink_api import (
    RawArchive,
    StarlinkAuthError,
    StarlinkClient,
    StarlinkInvalidResponseError,
    StarlinkPermissionError,
    StarlinkPoller,
    StarlinkRequestError,
    StarlinkRetryableError,
    StarlinkTokenError,
)
from tests.integration.starlink.conftest import FakeFactory, settings_for

pytestmark = pytest.mark.integration


class Collector:
    """A ``deliver`` that records bodies; optionally stops the poller after ``stop_after``."""

    def __init__(self, poller_ref: list[StarlinkPoller], stop_after: int | None = None) -> None:
        self.bodies: list[bytes] = []
        self.numbers: list[int] = []
        self.at: list[float] = []
        self.poller_ref = poller_ref
        self.stop_after = stop_after

    async def __call__(self, body: bytes, number: int) -> None:
        self.bodies.append(body)
        self.numbers.append(number)
        self.at.append(time.monotonic())
        if self.stop_after is not None and len(self.bodies) >= self.stop_after:
            self.poller_ref[0].stop()


async def run_poller(
    fake: FakeStarlink,
    stop_after: int,
    timeout: float = 30,
    **settings: object,
) -> tuple[StarlinkPoller, Collector, StarlinkClient]:
    client = StarlinkClient(settings_for(fake, **settings))
    ref: list[StarlinkPoller] = []
    collector = Collector(ref, stop_after)
    poller = StarlinkPoller(client, collector)
    ref.append(poller)
    try:
        await asyncio.wait_for(poller.run(), timeout)
    finally:
        await client.close()
    return poller, collector, client


# -- tokens -----------------------------------------------------------------------------------


async def test_one_token_is_reused_across_polls(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=4)
    async with StarlinkClient(settings_for(fake, max_linger_ms=1)) as client:
        for _ in range(5):
            await client.fetch()
        assert client.token_requests == 1 and client.stream_requests == 5
    assert fake.count("token") == 1 and fake.count("stream", 200) == 5


async def test_basic_auth_token_requests_work(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    async with StarlinkClient(settings_for(fake, token_auth="basic", max_linger_ms=1)) as client:
        assert (await client.fetch()).rows > 0
    assert fake.count("token", 200) == 1


async def test_the_token_is_refreshed_before_it_expires(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=2, expires_in=2)
    async with StarlinkClient(settings_for(fake, max_linger_ms=1)) as client:
        await client.fetch()
        await asyncio.sleep(0.5)
        await client.fetch()  # still the first token (refresh at half the 2 s lifetime)
        assert client.token_requests == 1
        await asyncio.sleep(0.7)
        await client.fetch()
        assert client.token_requests == 2
    assert fake.count("stream", 401) == 0  # never used an expired token


async def test_a_401_mints_a_new_token_once(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=2)
    async with StarlinkClient(settings_for(fake, batch_size=5, max_linger_ms=1)) as client:
        await client.fetch()
        fake.expire_tokens()
        batch = await client.fetch()
        assert batch.rows > 0 and client.token_requests == 2
        fake.inject(Fault.STREAM_401)  # 401 mid-stream
        await client.fetch()
        assert client.token_requests == 3
    assert fake.count("stream", 401) == 2


async def test_a_fresh_token_refused_too_is_an_auth_error(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_401, count=5)
    async with StarlinkClient(settings_for(fake)) as client:
        with pytest.raises(StarlinkAuthError) as err:
            await client.fetch()
        assert err.value.status == 401 and client.token_requests == 2
    assert fake.count("token") == 2


@pytest.mark.parametrize(("auth", "status"), [("form", 400), ("basic", 401)])
async def test_refused_credentials_are_a_token_error_with_status_and_body(
    fake_factory: FakeFactory, auth: str, status: int
) -> None:
    fake = await fake_factory()
    s = settings_for(fake, token_auth=auth).model_copy(
        update={"client_secret": SecretStr("wrong-secret")}
    )
    async with StarlinkClient(s) as client:
        with pytest.raises(StarlinkTokenError) as err:
            await client.fetch()
    assert err.value.status == status and err.value.endpoint == "token"
    assert "invalid_client" in err.value.body and "invalid_client" in str(err.value)
    assert "CLIENT_ID and CLIENT_SECRET" in str(err.value)  # the settings to check
    assert "wrong-secret" not in str(err.value)


async def test_token_endpoint_outage_is_retryable(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.TOKEN_503, retry_after=0.05)
    async with StarlinkClient(settings_for(fake)) as client:
        with pytest.raises(StarlinkRetryableError) as err:
            await client.access_token()
        assert err.value.status == 503 and err.value.retry_after_secs == pytest.approx(0.05)
        assert await client.access_token()


# -- stream errors --------------------------------------------------------------------------


async def test_403_is_a_permission_error(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_403)
    async with StarlinkClient(settings_for(fake)) as client:
        with pytest.raises(StarlinkPermissionError, match="Device telemetry, View"):
            await client.fetch()
        assert client.token_requests == 1


@pytest.mark.parametrize("fault", [Fault.STREAM_500, Fault.STREAM_503, Fault.STREAM_404])
async def test_server_errors_are_retryable_without_a_new_token(
    fake_factory: FakeFactory, fault: Fault
) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(fault)
    async with StarlinkClient(settings_for(fake)) as client:
        with pytest.raises(StarlinkRetryableError) as err:
            await client.fetch()
        assert err.value.retry_after_secs is None
        assert (await client.fetch()).rows > 0
        assert client.token_requests == 1


async def test_truncated_and_invalid_json_are_retryable_and_keep_the_raw_body(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_TRUNCATE)
    fake.inject(Fault.STREAM_INVALID_JSON)
    async with StarlinkClient(settings_for(fake)) as client:
        for _ in range(2):
            with pytest.raises(StarlinkInvalidResponseError) as err:
                await client.fetch()
            assert err.value.raw and err.value.status == 200
        assert (await client.fetch()).rows > 0


async def test_a_stall_beyond_the_timeout_is_retryable(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_STALL, stall_secs=10)
    s = settings_for(fake, max_linger_ms=100, timeout_margin_secs=1.0)
    assert s.stream_timeout_secs == pytest.approx(1.1)  # >= linger + margin
    async with StarlinkClient(s) as client:
        started = time.monotonic()
        with pytest.raises(StarlinkRetryableError, match="timed out"):
            await client.fetch()
        assert 1.0 <= time.monotonic() - started < 5
        assert (await client.fetch()).rows > 0


async def test_a_refused_body_is_a_request_error(fake_factory: FakeFactory) -> None:
    fake = await fake_factory()
    async with StarlinkClient(settings_for(fake)) as client:
        client.settings.__dict__["batch_size"] = 0  # bypass validation: the server refuses it
        with pytest.raises(StarlinkRequestError) as err:
            await client.fetch()
    assert err.value.status == 400 and "batchSize" in err.value.body


# -- the poller ----------------------------------------------------------------------------------


async def test_a_429_storm_backs_off_without_minting_tokens(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_429, count=10, retry_after=0.05)
    fake.inject(Fault.STREAM_429, count=10)  # without Retry-After: exponential backoff
    started = time.monotonic()
    poller, got, client = await run_poller(fake, stop_after=1)
    assert time.monotonic() - started >= 10 * 0.05
    assert client.token_requests == 1 and fake.count("token") == 1
    assert fake.count("stream", 429) == 20 and len(got.bodies) == 1
    status = poller.status
    assert status.state == "stopped" and status.errors == 20 and status.consecutive_errors == 0
    assert "429" in (status.last_error or "")


async def test_retry_after_is_honoured(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_503, retry_after=0.6)
    await run_poller(fake, stop_after=1)
    times = [r.at for r in fake.requests if r.endpoint == "stream"]
    assert len(times) == 2 and times[1] - times[0] >= 0.55


async def test_every_fault_switch_then_every_body_is_delivered_once(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(backlog_ticks=6, record_bodies=True)
    for fault in (
        Fault.TOKEN_503,
        Fault.STREAM_429,
        Fault.STREAM_500,
        Fault.STREAM_503,
        Fault.STREAM_404,
        Fault.STREAM_401,
        Fault.STREAM_TRUNCATE,
        Fault.STREAM_INVALID_JSON,
        Fault.STREAM_429,
    ):
        fake.inject(fault, retry_after=0.01 if fault is Fault.STREAM_429 else None)
    fake.inject(Fault.STREAM_STALL, stall_secs=5)
    total = len(fake.stream)
    ref: list[StarlinkPoller] = []
    got = Collector(ref)
    s = settings_for(fake, batch_size=40, max_linger_ms=50, timeout_margin_secs=1.0)
    async with StarlinkClient(s) as client:
        poller = StarlinkPoller(client, got)
        ref.append(poller)
        task = asyncio.create_task(poller.run())
        while fake.position() < total:
            await asyncio.sleep(0.02)
        poller.stop()
        await asyncio.wait_for(task, 10)
        tokens = client.token_requests
    assert got.bodies == [s.body for s in fake.served]  # each served body once, in order
    assert sum(len(s.rows) for s in fake.served) == total
    assert got.numbers == list(range(1, len(got.bodies) + 1))
    assert tokens == fake.count("token") == 3  # first (after its 503), after the 401
    assert poller.status.errors == 9  # each fault once; the 401 is absorbed by fetch()


async def test_drain_mode_polls_at_once_while_full_then_waits_for_the_linger(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(backlog_ticks=4)
    batch = len(fake.stream) // 3 - 1  # three full responses, then a partial one
    _, got, _ = await run_poller(fake, stop_after=6, batch_size=batch, max_linger_ms=600)
    sizes = [len(s.rows) for s in fake.served]
    assert sizes[:3] == [batch] * 3 and sizes[3] < batch and len(got.bodies) == 6
    starts = [r.at for r in fake.requests if r.endpoint == "stream"]
    # full responses: the next poll follows at once
    assert (
        starts[1] - starts[0] < 0.3 and starts[2] - starts[1] < 0.3 and starts[3] - starts[2] < 0.3
    )
    # not full: at least one linger between polls (the server's long-poll or our wait)
    for a, b in itertools.pairwise(starts[3:]):
        assert b - a >= 0.55


async def test_nothing_is_polled_while_deliver_has_not_returned(
    fake_factory: FakeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = await fake_factory(backlog_ticks=3)
    release = asyncio.Event()
    delivered: list[int] = []

    async def deliver(body: bytes, number: int) -> None:
        delivered.append(number)
        if number == 1:
            await release.wait()  # a sink is down: the batch is not durable yet

    async with StarlinkClient(settings_for(fake, batch_size=5, max_linger_ms=10)) as client:
        poller = StarlinkPoller(client, deliver, halted_log_secs=0.3)
        task = asyncio.create_task(poller.run())
        while not delivered:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.8)
        assert fake.count("stream") == 1 and poller.status.state == "delivering"
        halted = [r for r in caplog.records if "polling halted" in r.getMessage()]
        assert len(halted) >= 2 and getattr(halted[0], "poll_number", None) == 1
        assert time.monotonic() - poller.status.since >= 0.7
        release.set()
        while len(delivered) < 3:
            await asyncio.sleep(0.01)
        poller.stop()
        await asyncio.wait_for(task, 5)
    assert delivered[:3] == [1, 2, 3] and fake.count("stream") == len(delivered)


async def test_stop_finishes_the_batch_in_hand(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=2)
    entered = asyncio.Event()
    release = asyncio.Event()
    done: list[int] = []

    async def deliver(body: bytes, number: int) -> None:
        entered.set()
        await release.wait()
        done.append(number)

    async with StarlinkClient(settings_for(fake, batch_size=5)) as client:
        poller = StarlinkPoller(client, deliver)
        task = asyncio.create_task(poller.run())
        await entered.wait()
        poller.stop()
        await asyncio.sleep(0.2)
        assert not task.done()  # still delivering the batch in hand
        release.set()
        await asyncio.wait_for(task, 5)
    assert done == [1] and fake.count("stream") == 1 and poller.status.state == "stopped"


async def test_stop_ends_a_backoff_at_once(fake_factory: FakeFactory) -> None:
    fake = await fake_factory()
    fake.inject(Fault.STREAM_503, retry_after=30)
    async with StarlinkClient(settings_for(fake)) as client:
        poller = StarlinkPoller(client, lambda body, n: asyncio.sleep(0))
        task = asyncio.create_task(poller.run())
        while poller.status.state != "backing_off":
            await asyncio.sleep(0.01)
        started = time.monotonic()
        poller.stop()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 1


async def test_a_permanent_error_stops_the_poller(fake_factory: FakeFactory) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_403)
    with pytest.raises(StarlinkPermissionError):
        await run_poller(fake, stop_after=1)


async def test_the_raw_archive_keeps_every_body_for_replay(
    fake_factory: FakeFactory, tmp_path: Path
) -> None:
    fake = await fake_factory(backlog_ticks=2, record_bodies=True)
    archive = RawArchive(tmp_path / "raw")
    delivered: list[bytes] = []
    ref: list[StarlinkPoller] = []

    async def deliver(body: bytes, number: int) -> None:
        delivered.append(body)
        if len(delivered) == 3:
            ref[0].stop()

    async with StarlinkClient(settings_for(fake, batch_size=10)) as client:
        poller = StarlinkPoller(client, deliver, archive=archive, first_poll_number=41)
        ref.append(poller)
        await asyncio.wait_for(poller.run(), 10)
    polls = list(archive)
    assert [p.body for p in polls] == delivered == [s.body for s in fake.served]
    assert [p.poll_number for p in polls] == [41, 42, 43]
    assert all(a.poll_ns <= b.poll_ns for a, b in itertools.pairwise(polls))
    # each body was marked durable once deliver returned: nothing is pending
    assert archive.durable_mark() == polls[-1].path.name and archive.pending() == []


async def test_a_body_whose_deliver_never_returned_stays_pending(
    fake_factory: FakeFactory, tmp_path: Path
) -> None:
    """The mark moves only when deliver returns: a body in hand when the process dies
    (here: the poller cancelled while deliver waits, as for a store that is down) is
    what the next start finds pending."""
    fake = await fake_factory(backlog_ticks=3, record_bodies=True)
    archive = RawArchive(tmp_path / "raw")
    calls = 0
    stuck = asyncio.Event()

    async def deliver(body: bytes, number: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            stuck.set()
            await asyncio.Event().wait()  # never durable

    async with StarlinkClient(settings_for(fake, batch_size=10)) as client:
        task = asyncio.ensure_future(StarlinkPoller(client, deliver, archive=archive).run())
        await asyncio.wait_for(stuck.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    first, second = list(archive)
    assert archive.durable_mark() == first.path.name
    assert archive.pending() == [second.path]
    assert RawArchive(tmp_path / "none").pending() == []  # no archive, no mark: nothing


async def test_a_failing_deliver_stops_the_poller_without_polling_again(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(backlog_ticks=2)

    async def deliver(body: bytes, number: int) -> None:
        raise RuntimeError("sink exploded")

    async with StarlinkClient(settings_for(fake, batch_size=5)) as client:
        poller = StarlinkPoller(client, deliver)
        with pytest.raises(RuntimeError, match="sink exploded"):
            await asyncio.wait_for(poller.run(), 10)
    assert poller.status.state == "failed" and "sink exploded" in (poller.status.last_error or "")
    assert fake.count("stream") == 1


async def test_an_archive_failure_still_delivers(fake_factory: FakeFactory, tmp_path: Path) -> None:
    fake = await fake_factory(backlog_ticks=1)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the archive directory should be")
    delivered: list[int] = []
    ref: list[StarlinkPoller] = []

    async def deliver(body: bytes, number: int) -> None:
        delivered.append(number)
        ref[0].stop()

    async with StarlinkClient(settings_for(fake)) as client:
        poller = StarlinkPoller(client, deliver, archive=RawArchive(blocker / "raw"))
        ref.append(poller)
        await asyncio.wait_for(poller.run(), 10)
    assert delivered == [1]


async def test_a_refused_fresh_token_backs_off_and_reading_goes_on(
    fake_factory: FakeFactory,
) -> None:
    fake = await fake_factory(backlog_ticks=1)
    fake.inject(Fault.STREAM_401, count=4)  # two polls whose fresh token is refused too
    poller, collector, client = await run_poller(fake, stop_after=1)
    assert len(collector.bodies) == 1  # it went on reading
    assert poller.status.errors == 2
    assert client.token_requests <= 5  # two per refused attempt, one that worked
