"""Starlink Enterprise telemetry stream: settings, API client, poller and raw archive.

The stream (shared/docs/starlink-api.md) is a long-poll ``POST`` with a server-side read
position per service account that advances on every 200: **nothing is ever
re-delivered**. So:

- :class:`StarlinkClient` mints OAuth client-credentials tokens and reuses one until
  shortly before its ``expires_in`` runs out; a 401 mints a new one and retries once (a
  second 401 with a fresh token is :class:`StarlinkAuthError`). 429 and 5xx are
  :class:`StarlinkRetryableError` carrying the ``Retry-After`` delay: the caller backs off
  **without** minting a new token (the reference re-minted on every non-200 and burnt
  the token endpoint's quota during outages). A failed token request is
  :class:`StarlinkTokenError` with the status and the body, never a ``KeyError``; a 403 is
  :class:`StarlinkPermissionError`. The stream request's timeout is ``max_linger_ms`` plus
  a margin. A 200 whose body is not JSON (truncated, an HTML error page) is
  :class:`StarlinkInvalidResponseError`, retryable, carrying the raw bytes.
- :class:`StarlinkPoller` hands each body to ``deliver(body, poll_number)`` and polls
  again only after ``deliver`` returns, which must mean "durable". Drain mode: while a
  response is full (``len(values) == batchSize``) it polls again at once, otherwise it
  waits until ``max_linger_ms`` has passed since the previous poll began.
- :class:`RawArchive` keeps each body gzip-compressed with its poll time, for replay.

Needs the ``starlink`` extra (aiohttp).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import email.utils
import gzip
import logging
import os
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar
from urllib.parse import quote_plus

import msgspec
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from orbitstream.core.retry import RetryPolicy
from orbitstream.errors import ConfigError, SourceError

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_STREAM_URL",
    "DEFAULT_TOKEN_URL",
    "ArchivedPoll",
    "Deliver",
    "PollerStatus",
    "RawArchive",
    "StarlinkAuthError",
    "StarlinkClient",
    "StarlinkError",
    "StarlinkInvalidResponseError",
    "StarlinkPermissionError",
    "StarlinkPoller",
    "StarlinkRequestError",
    "StarlinkRetryableError",
    "StarlinkSettings",
    "StarlinkTokenError",
    "StreamBatch",
    "count_rows",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_TOKEN_URL: Final = "https://starlink.com/api/auth/connect/token"
DEFAULT_STREAM_URL: Final = "https://starlink.com/api/public/v2/telemetry/stream"
DEFAULT_EXPIRES_IN_SECS: Final = 900.0  # "tokens last ~15 minutes"; used if none is given
_BODY_EXCERPT: Final = 500
_USER_AGENT: Final = "orbitstream-starlink/0.1"


class StarlinkSettings(BaseModel):
    """Settings of the Starlink source.

    The runtime maps the environment onto it: ``CLIENT_ID``, ``CLIENT_SECRET``,
    ``BATCH_SIZE``, ``MAX_LINGER``, ``STARLINK_TOKEN_URL``, ``STARLINK_STREAM_URL``.

    :param client_id: the V2 service account's client id.
    :param client_secret: its secret (never logged).
    :param token_url: OAuth token endpoint.
    :param stream_url: telemetry stream endpoint.
    :param batch_size: ``batchSize``: most rows per response (1–65000).
    :param max_linger_ms: ``maxLingerMs``: how long the server may collect rows (1–65000).
    :param token_auth: send the credentials as form fields or as an HTTP Basic header.
    :param token_timeout_secs: timeout of a token request.
    :param timeout_margin_secs: the stream request's timeout is ``max_linger_ms`` plus this.
    :param token_refresh_margin_secs: mint a new token this long before the old expires
        (at most half its lifetime).
    :param backoff_base_secs: first delay after a retryable failure without
        ``Retry-After`` (doubling, with jitter).
    :param backoff_max_secs: longest such delay.
    :param max_retry_after_secs: a longer ``Retry-After`` is capped to this.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    token_url: str = DEFAULT_TOKEN_URL
    stream_url: str = DEFAULT_STREAM_URL
    batch_size: int = Field(default=1000, ge=1, le=65000)
    max_linger_ms: int = Field(default=15000, ge=1, le=65000)
    token_auth: Literal["form", "basic"] = "form"
    token_timeout_secs: float = Field(default=30.0, gt=0)
    timeout_margin_secs: float = Field(default=30.0, ge=1.0)
    token_refresh_margin_secs: float = Field(default=60.0, ge=0)
    backoff_base_secs: float = Field(default=1.0, gt=0)
    backoff_max_secs: float = Field(default=60.0, gt=0)
    max_retry_after_secs: float = Field(default=900.0, gt=0)

    @field_validator("token_url", "stream_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("client_secret")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @property
    def stream_timeout_secs(self) -> float:
        """The stream request's timeout: ``max_linger_ms`` plus the margin."""
        return self.max_linger_ms / 1000 + self.timeout_margin_secs

    @property
    def linger_secs(self) -> float:
        return self.max_linger_ms / 1000

    def request_body(self) -> bytes:
        """The stream request body (integers, never strings)."""
        return msgspec.json.encode(
            {"batchSize": self.batch_size, "maxLingerMs": self.max_linger_ms}
        )


# -- errors ----------------------------------------------------------------------------


class StarlinkError(SourceError):
    """The Starlink API refused or failed a request.

    :param endpoint: ``token`` or ``stream``.
    :param status: the HTTP status, ``None`` when no answer came.
    :param body: the start of the answer's body (for the operator; never a secret).
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status: int | None = None,
        body: str = "",
        retry_after_secs: float | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status
        self.body = body
        self.retry_after_secs = retry_after_secs


class StarlinkRetryableError(StarlinkError):
    """Transient: 429, 5xx, 404 (a documented outage), timeouts, network errors, invalid
    JSON. Back off (``retry_after_secs`` when the server said) and poll again."""


class StarlinkInvalidResponseError(StarlinkRetryableError):
    """A 200 whose body is not JSON (truncated, an error page). ``raw`` holds it: the
    server may have advanced its position, so those rows may be lost."""

    def __init__(self, message: str, *, raw: bytes, status: int | None = 200) -> None:
        super().__init__(
            message, endpoint="stream", status=status, body=_excerpt(raw[:_BODY_EXCERPT])
        )
        self.raw = raw


class StarlinkTokenError(StarlinkError):
    """The token endpoint refused the credentials (or answered without a token)."""


class StarlinkAuthError(StarlinkError):
    """The stream refused a freshly minted token (401 twice): e.g. not a V2 service
    account."""


class StarlinkPermissionError(StarlinkError):
    """403: the service account lacks the "Device telemetry, View" permission."""


class StarlinkRequestError(StarlinkError):
    """Another 4xx: the stream refused the request itself (e.g. 400 for the body)."""


def _excerpt(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "…"


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date).

    :returns: ``None`` when absent or unreadable, else a delay >= 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        secs = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        secs = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if secs != secs or secs in (float("inf"), float("-inf")):
        return None
    return max(0.0, secs)


# -- the client ------------------------------------------------------------------------


class _PeekData(msgspec.Struct):
    values: list[msgspec.Raw] | None = None


class _Peek(msgspec.Struct):
    data: _PeekData | None = None


# A poll whose batch has waited this long to be durable: polling is "halted" (/health,
# and the first log line).
HALTED_AFTER_SECS = 2.0
_PEEK = msgspec.json.Decoder(_Peek)
_RAW = msgspec.json.Decoder(msgspec.Raw)


def count_rows(body: bytes) -> int:
    """``len(data.values)`` of a stream body, checking that the whole body is JSON.

    A well-formed body of another shape counts 0 rows (the mapper reports it).

    :raises msgspec.DecodeError: the body is not JSON (e.g. truncated).
    """
    try:
        peek = _PEEK.decode(body)
    except msgspec.ValidationError:
        _RAW.decode(body)  # raises DecodeError when malformed
        return 0
    if peek.data is None or peek.data.values is None:
        return 0
    return len(peek.data.values)


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """One 200 response of the stream.

    :param body: the body as received.
    :param rows: ``len(data.values)``.
    :param received_ns: when it was received (epoch ns).
    :param elapsed_secs: how long the request took.
    """

    body: bytes
    rows: int
    received_ns: int
    elapsed_secs: float


class StarlinkClient:
    """Async client of the token and stream endpoints (one service account).

    :param settings: the source settings.
    :param session: an ``aiohttp.ClientSession`` to use (the caller closes it); by
        default the client opens its own and :meth:`close` closes it.
    """

    def __init__(
        self, settings: StarlinkSettings, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        try:
            import aiohttp
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "the Starlink source needs the starlink extra: pip install 'orbitstream[starlink]'",
                setting="CLIENT_ID",
            ) from exc
        self._aiohttp = aiohttp
        self.settings = settings
        self._session = session
        self._own_session = session is None
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.token_requests = 0
        self.stream_requests = 0

    async def __aenter__(self) -> StarlinkClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session the client opened."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._aiohttp.ClientSession(
                headers={"User-Agent": _USER_AGENT},
                connector=self._aiohttp.TCPConnector(limit=4),
            )
            self._own_session = True
        return self._session

    # -- tokens ---------------------------------------------------------------------
    @property
    def has_token(self) -> bool:
        return self._token is not None and time.monotonic() < self._refresh_at

    async def access_token(self) -> str:
        """The current token, minted when there is none or it is about to expire.

        :raises StarlinkTokenError: the credentials were refused.
        :raises StarlinkRetryableError: the token endpoint is unavailable (429, 5xx,
            timeout); back off before asking again.
        """
        token = self._token
        if token is not None and time.monotonic() < self._refresh_at:
            return token
        async with self._lock:
            token = self._token
            if token is not None and time.monotonic() < self._refresh_at:
                return token
            return await self._mint()

    def invalidate_token(self, token: str | None = None) -> None:
        """Forget the token (only if it is still ``token``, when given)."""
        if token is None or token == self._token:
            self._token = None
            self._refresh_at = 0.0

    async def _mint(self) -> str:
        s = self.settings
        aiohttp = self._aiohttp
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        if s.token_auth == "basic":
            # RFC 6749 §2.3.1: each part form-urlencoded, then HTTP Basic
            pair = f"{quote_plus(s.client_id)}:{quote_plus(s.client_secret.get_secret_value())}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = s.client_id
            form["client_secret"] = s.client_secret.get_secret_value()
        self.token_requests += 1
        started = time.monotonic()
        try:
            async with self._http().post(
                s.token_url,
                data=form,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=s.token_timeout_secs),
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StarlinkRetryableError(
                f"token request failed: {type(exc).__name__}: {exc}", endpoint="token"
            ) from exc
        if status != 200:
            cls = StarlinkRetryableError if status == 429 or status >= 500 else StarlinkTokenError
            delay = parse_retry_after(retry_after)
            hint = (
                " (check CLIENT_ID and CLIENT_SECRET)"
                if status in (400, 401)
                else " (check STARLINK_TOKEN_URL)"
                if cls is StarlinkTokenError
                else ""
            )
            raise cls(
                f"token request answered {status}: {_excerpt(body)}{hint}",
                endpoint="token",
                status=status,
                body=_excerpt(body),
                retry_after_secs=self._cap(delay),
            )
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            doc = None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            # the body has no token in it, so it is safe to show
            raise StarlinkTokenError(
                f"token response has no access_token: {_excerpt(body)}",
                endpoint="token",
                status=status,
                body=_excerpt(body),
            )
        expires_in = doc.get("expires_in") if isinstance(doc, dict) else None
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
            or expires_in <= 0
        ):
            logger.warning(
                "Token response has no usable expires_in; assuming the documented lifetime.",
                extra={"expires_in": expires_in, "assumed_secs": DEFAULT_EXPIRES_IN_SECS},
            )
            expires_in = DEFAULT_EXPIRES_IN_SECS
        lifetime = float(expires_in)
        self._token = token
        self._refresh_at = started + max(lifetime - s.token_refresh_margin_secs, lifetime / 2)
        logger.info(
            "Starlink token minted.",
            extra={"expires_in": lifetime, "token_requests": self.token_requests},
        )
        return token

    def _cap(self, delay: float | None) -> float | None:
        if delay is None:
            return None
        return min(delay, self.settings.max_retry_after_secs)

    # -- the stream ----------------------------------------------------------------
    async def fetch(self) -> StreamBatch:
        """One poll of the stream (a 401 mints a new token and retries once).

        :raises StarlinkRetryableError: back off and poll again (no new token needed).
        :raises StarlinkAuthError: a fresh token was refused too (the poller backs off and
            tries again with another token).
        :raises StarlinkPermissionError: 403.
        :raises StarlinkRequestError: another 4xx.
        :raises StarlinkTokenError: the credentials were refused.
        """
        token = await self.access_token()
        status, headers, body, elapsed = await self._post(token)
        if status == 401:
            logger.info("Stream refused the token; minting a new one.", extra={"status": 401})
            self.invalidate_token(token)
            token = await self.access_token()
            status, headers, body, elapsed = await self._post(token)
            if status == 401:
                self.invalidate_token(token)
                raise StarlinkAuthError(
                    f"stream refused a freshly minted token (401): {_excerpt(body)}",
                    endpoint="stream",
                    status=401,
                    body=_excerpt(body),
                )
        if status == 200:
            try:
                rows = count_rows(body)
            except msgspec.DecodeError as exc:
                raise StarlinkInvalidResponseError(
                    f"stream answered 200 with a body that is not JSON ({len(body)} bytes): {exc}",
                    raw=body,
                ) from exc
            return StreamBatch(body, rows, time.time_ns(), elapsed)
        text = _excerpt(body)
        delay = self._cap(parse_retry_after(headers.get("Retry-After")))
        message = f"stream answered {status}: {text}"
        if status == 403:
            raise StarlinkPermissionError(
                "stream answered 403: the service account lacks the "
                f'"Device telemetry, View" permission: {text}',
                endpoint="stream",
                status=status,
                body=text,
            )
        if status in (404, 408, 429) or status >= 500:
            raise StarlinkRetryableError(
                message, endpoint="stream", status=status, body=text, retry_after_secs=delay
            )
        raise StarlinkRequestError(message, endpoint="stream", status=status, body=text)

    async def _post(self, token: str) -> tuple[int, Any, bytes, float]:
        s = self.settings
        aiohttp = self._aiohttp
        self.stream_requests += 1
        started = time.monotonic()
        try:
            async with self._http().post(
                s.stream_url,
                data=s.request_body(),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=s.stream_timeout_secs),
            ) as resp:
                status = resp.status
                headers = resp.headers
                body = await resp.read()
        except TimeoutError as exc:
            raise StarlinkRetryableError(
                f"stream request timed out after {s.stream_timeout_secs:g} s",
                endpoint="stream",
            ) from exc
        except aiohttp.ClientError as exc:
            raise StarlinkRetryableError(
                f"stream request failed: {type(exc).__name__}: {exc}", endpoint="stream"
            ) from exc
        return status, headers, body, time.monotonic() - started


# -- the poller ------------------------------------------------------------------------

Deliver = Callable[[bytes, int], Awaitable[bool | None]]
"""``await deliver(body, poll_number)``: returns once the batch is durable (``False``:
returned without being durable, a store down at shutdown; the archive keeps it pending)."""
Reject = Callable[[bytes, str], Awaitable[None]]
"""``await reject(raw, error)``: keep a 200 body that is not JSON."""


@dataclass(frozen=True, slots=True)
class PollerStatus:
    """What the poller is doing, for ``/health`` and logs.

    :param state: ``starting``, ``polling``, ``delivering`` (waiting for ``deliver``, e.g.
        while a sink is down), ``waiting`` (linger), ``backing_off``, ``stopped``, ``failed``.
    :param since: ``time.monotonic()`` when that state began.
    """

    state: str
    since: float
    polls: int
    rows: int
    errors: int
    consecutive_errors: int
    last_error: str | None
    last_poll_ns: int | None


class StarlinkPoller:
    """Polls the stream and hands each body to ``deliver``, one at a time.

    ``deliver`` must return only once the batch is durable (in every sink, or in the raw
    archive): the stream never re-delivers, so nothing is polled before it returns.

    :param client: the API client.
    :param deliver: ``await deliver(body, poll_number)``.
    :param archive: when given, each body is archived (fsynced) before ``deliver``.
    :param first_poll_number: number of the first poll (numbers increase by one).
    :param retry: backoff for retryable failures without ``Retry-After``.
    :param halted_log_secs: while ``deliver`` has not returned for this long (a sink is
        down), log that polling is halted, and again at this interval.
    :param reject: ``await reject(raw, error)`` for a 200 whose body is not JSON (the
        server may have advanced past its rows: they are kept, e.g. in dead letters,
        before the poll is retried); ``None``: only logged.
    """

    def __init__(
        self,
        client: StarlinkClient,
        deliver: Deliver,
        *,
        archive: RawArchive | None = None,
        first_poll_number: int = 1,
        retry: RetryPolicy | None = None,
        halted_log_secs: float = 30.0,
        reject: Reject | None = None,
    ) -> None:
        self.client = client
        self.halted_log_secs = halted_log_secs
        self.deliver = deliver
        self.reject = reject
        self.archive = archive
        s = client.settings
        self.retry = retry or RetryPolicy(
            base_secs=s.backoff_base_secs, max_secs=s.backoff_max_secs
        )
        self.next_poll_number = first_poll_number
        self._stop = asyncio.Event()
        self._state = "starting"
        self._since = time.monotonic()
        self._polls = 0
        self._rows = 0
        self._errors = 0
        self._consecutive = 0
        self._last_error: str | None = None
        self._last_poll_ns: int | None = None

    @property
    def status(self) -> PollerStatus:
        return PollerStatus(
            self._state,
            self._since,
            self._polls,
            self._rows,
            self._errors,
            self._consecutive,
            self._last_error,
            self._last_poll_ns,
        )

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop after the batch in hand: a request in flight completes (at most
        ``max_linger_ms`` + margin) and its batch is delivered; a wait ends at once."""
        self._stop.set()

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._since = time.monotonic()

    async def _pause(self, secs: float) -> None:
        if secs > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), secs)

    async def _deliver(self, body: bytes, number: int) -> bool | None:
        return await self._watch(self.deliver(body, number), number)

    async def deliver_earlier(self, work: Awaitable[_T], number: int) -> _T:
        """Make a body read before durable (the raw archive's pending ones, at start) as a
        polled one is: state ``delivering``, "polling halted" while a store is down."""
        self._set("delivering")
        return await self._watch(work, number)

    async def _watch(self, work: Awaitable[_T], number: int) -> _T:
        task = asyncio.ensure_future(work)
        started = time.monotonic()
        # The first warning when /health starts saying "halted" (2 s), then one per
        # halted_log_secs; and one line when polling resumes.
        wait = min(HALTED_AFTER_SECS, self.halted_log_secs)
        halted = False
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    break
                halted = True
                wait = self.halted_log_secs
                logger.warning(
                    "Starlink polling halted: the last batch is not durable yet.",
                    extra={
                        "poll_number": number,
                        "waited_secs": round(time.monotonic() - started, 1),
                    },
                )
        except asyncio.CancelledError:
            task.cancel()
            raise
        result = await task
        if halted:
            logger.info(
                "Starlink polling resumed: the batch is durable.",
                extra={
                    "poll_number": number,
                    "waited_secs": round(time.monotonic() - started, 1),
                },
            )
        return result

    async def _back_off(self, exc: StarlinkError, delay: float | None, message: str) -> None:
        """Count a failed poll, log it, and wait ``delay`` (None: the retry policy's)."""
        self._errors += 1
        self._consecutive += 1
        self._last_error = str(exc)
        if delay is None:
            delay = self.retry.delay(self._consecutive)
        logger.warning(
            message,
            extra={
                "endpoint": exc.endpoint,
                "status": exc.status,
                "error": str(exc),
                "retry_in_secs": round(delay, 3),
                "attempt": self._consecutive,
            },
        )
        self._set("backing_off")
        await self._pause(delay)

    async def run(self) -> None:
        """Poll until :meth:`stop`; raises the first non-retryable :class:`StarlinkError`."""
        s = self.client.settings
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                started = loop.time()
                self._set("polling")
                try:
                    batch = await self.client.fetch()
                except StarlinkAuthError as exc:
                    # A fresh token refused too: the token service and the stream disagree
                    # for now (a rotation, clock skew), or the account is not a V2 one.
                    # Not a reason to stop reading for good: back off and try again with
                    # another token (at most two token requests per attempt, attempts
                    # spaced by the backoff); /health says so meanwhile.
                    await self._back_off(
                        exc,
                        None,
                        "Stream refused a freshly minted token; backing off (check that "
                        "CLIENT_ID is a V2 service account with telemetry access).",
                    )
                    continue
                except StarlinkRetryableError as exc:
                    if isinstance(exc, StarlinkInvalidResponseError) and self.reject is not None:
                        await self.reject(exc.raw, str(exc))
                    await self._back_off(
                        exc, exc.retry_after_secs, "Starlink poll failed; backing off."
                    )
                    continue
                self._consecutive = 0
                number = self.next_poll_number
                self.next_poll_number += 1
                self._polls += 1
                self._rows += batch.rows
                self._last_poll_ns = batch.received_ns
                archived: Path | None = None
                if self.archive is not None:
                    archive = self.archive
                    try:
                        archived = await loop.run_in_executor(
                            None, archive.append, batch.body, batch.received_ns, number
                        )
                    except OSError as exc:  # the sinks can still make the batch durable
                        logger.error(
                            "Raw archive write failed; delivering the batch anyway.",
                            extra={"poll_number": number, "error": str(exc)},
                        )
                self._set("delivering")
                durable = await self._deliver(batch.body, number)
                if archived is not None and self.archive is not None and durable is not False:
                    self.archive.mark_durable(archived)
                if self._stop.is_set():
                    break
                if batch.rows >= s.batch_size:
                    continue  # drain mode: more is waiting
                self._set("waiting")
                await self._pause(s.linger_secs - (loop.time() - started))
        except StarlinkError as exc:
            self._last_error = str(exc)
            self._set("failed")
            logger.error(
                "Starlink poller stopped on an error it cannot retry.",
                extra={"endpoint": exc.endpoint, "status": exc.status, "error": str(exc)},
            )
            raise
        except asyncio.CancelledError:
            self._set("stopped")
            raise
        except Exception as exc:  # deliver() failed: the runtime decides what next
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._set("failed")
            raise
        self._set("stopped")


# -- raw archive -----------------------------------------------------------------------

_ARCHIVE_NAME = re.compile(r"^(\d{19})-(\d{10})\.json\.gz$")
#: the file in the archive directory naming the last body known to be in every store
DURABLE_MARK = "durable"


@dataclass(frozen=True, slots=True)
class ArchivedPoll:
    """One archived response: when it was received (epoch ns), its poll number, body."""

    poll_ns: int
    poll_number: int
    body: bytes
    path: Path


class RawArchive:
    """Response bodies, gzip-compressed, one file per poll named by its poll time.

    ``<directory>/<poll_ns:019>-<poll_number:010>.json.gz``; each file is written to a
    temporary name, fsynced and renamed, so a crash never leaves half a file under a real
    name.

    :param directory: where the files go (created if missing).
    :param level: gzip level (1 is fast; bodies of 65,000 rows are ~20 MB).
    :param fsync: make each file durable before :meth:`append` returns.
    """

    def __init__(self, directory: Path, *, level: int = 1, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.level = level
        self.fsync = fsync
        self._last_ns: int | None = None  # poll time in the newest name (read at first use)

    def append(self, body: bytes, poll_ns: int, poll_number: int) -> Path:
        """Archive one body; returns its file. Names sort in the order the bodies came,
        whatever the clock does: a poll time not after the newest archived one (the clock
        stepped back) is named 1 ns after it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._last_ns is None:
            newest = self.newest()
            self._last_ns = int(newest.name[:19]) if newest is not None else 0
        poll_ns = max(poll_ns, self._last_ns + 1)
        self._last_ns = poll_ns
        path = self.directory / f"{poll_ns:019d}-{poll_number:010d}.json.gz"
        self._write_atomically(path, gzip.compress(body, compresslevel=self.level, mtime=0))
        return path

    def _write_atomically(self, path: Path, data: bytes) -> None:
        """``data`` to ``path`` through a temporary name, fsynced (file and directory)."""
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if self.fsync:
            self._fsync_directory()

    def mark_durable(self, path: Path) -> None:
        """Record that the body in ``path`` (and every one before it) is in every store:
        the bodies archived after it are what a restart writes (:meth:`pending`). Written
        to a temporary file, fsynced and renamed, as the bodies are."""
        marker = self.directory / DURABLE_MARK
        try:
            self._write_atomically(marker, path.name.encode("ascii") + b"\n")
        except OSError as exc:
            logger.error(
                "Raw archive: could not record the durable mark.",
                extra={"file": str(marker), "error": str(exc)},
            )

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def durable_mark(self) -> str | None:
        """The name of the last body marked durable; ``None`` when there is no mark, ``""``
        when the mark cannot be read or names no archived body (every body is then
        treated as pending: written again, dropped by the stores where already there)."""
        marker = self.directory / DURABLE_MARK
        try:
            name = marker.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return ""
        return name if _ARCHIVE_NAME.match(name) else ""

    def pending(self) -> list[Path]:
        """The archived bodies after the durable mark, oldest first: read from the API,
        but not known to be in every store (the process died while a store was down, or
        while writing). Without a usable mark — none, unreadable, or one naming a body
        after the newest there is — every body is pending: written again, and dropped by
        the stores where already stored (batch ids from each body's digest)."""
        if not self.directory.is_dir():
            return []
        names = sorted(c.name for c in self.directory.iterdir() if _ARCHIVE_NAME.match(c.name))
        mark = self.durable_mark()
        if not self.mark_usable(mark, names):
            return [self.directory / name for name in names]
        return [self.directory / name for name in names if name > str(mark)]

    def mark_problem(self) -> str | None:
        """Why the durable mark cannot tell what is stored: ``"missing"``, ``"unusable"``
        (unreadable, or naming a body after the newest), or ``None`` when it can."""
        mark = self.durable_mark()
        if mark is None:
            return "missing"
        names = sorted(c.name for c in self.directory.iterdir() if _ARCHIVE_NAME.match(c.name))
        return None if self.mark_usable(mark, names) else "unusable"

    @staticmethod
    def mark_usable(mark: str | None, names: Sequence[str]) -> bool:
        """Whether ``mark`` can tell the stored bodies among ``names`` (sorted)."""
        return bool(mark) and (not names or str(mark) <= names[-1])

    def newest(self) -> Path | None:
        """The newest archived body, if any."""
        if not self.directory.is_dir():
            return None
        names = [c.name for c in self.directory.iterdir() if _ARCHIVE_NAME.match(c.name)]
        return self.directory / max(names) if names else None

    def __iter__(self) -> Iterator[ArchivedPoll]:
        return self.read(self.directory)

    @staticmethod
    def foreign_files(directory: Path) -> list[str]:
        """Names of the files in ``directory`` that are neither archived bodies nor the
        durable mark (renamed copies, a torn ``.tmp`` write): :meth:`read` skips them."""
        return sorted(
            child.name
            for child in Path(directory).iterdir()
            if child.is_file()
            and not _ARCHIVE_NAME.match(child.name)
            and child.name not in (DURABLE_MARK, DURABLE_MARK + ".tmp")
        )

    @staticmethod
    def read(
        path: Path, on_unreadable: Callable[[Path, str], None] | None = None
    ) -> Iterator[ArchivedPoll]:
        """Archived polls in poll order, from a directory (or one archived file).

        :param on_unreadable: called with the file and the reason when an archive file
            cannot be read (truncated, not gzip), which is then skipped; without it, such a
            file raises.
        :raises SourceError: a file is not a readable archive entry.
        """
        path = Path(path)
        if path.is_dir():
            entries = []
            for child in path.iterdir():
                m = _ARCHIVE_NAME.match(child.name)
                if m:
                    entries.append((int(m.group(1)), int(m.group(2)), child))
            entries.sort()
        else:
            m = _ARCHIVE_NAME.match(path.name)
            if not m:
                raise SourceError(f"{path} is not a Starlink archive file (<ns>-<poll>.json.gz)")
            entries = [(int(m.group(1)), int(m.group(2)), path)]
        for poll_ns, number, file in entries:
            try:
                body = gzip.decompress(file.read_bytes())
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
                if on_unreadable is None:
                    raise SourceError(f"archive file {file} is unreadable: {exc}") from exc
                on_unreadable(file, f"{type(exc).__name__}: {exc}")
                continue
            yield ArchivedPoll(poll_ns, number, body, file)
