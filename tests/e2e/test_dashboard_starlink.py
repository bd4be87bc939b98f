"""The Starlink view (headless Chromium) while ``orbitstream run starlink`` polls the fake:
terminals and routers online, alerts open now and the trends are those of
``/api/dashboard/starlink``; the satellites view is hidden. Without the pipeline the
Starlink view is hidden."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from orbitstream.simulate.starlink import FakeStarlinkConfig
from tests.conftest import http
from tests.e2e.test_dashboard_pipelines import page_at
from tests.integration.starlink.conftest import fleet
from tests.integration.starlink.test_run_cli import ThreadedFake, _env
from tests.support.runner import Running, plugin_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_the_starlink_view_shows_the_fleet(tmp_path: Path) -> None:
    threaded = ThreadedFake(
        FakeStarlinkConfig(
            fleet=fleet(terminals=5, start_ns=None, alert_open_probability=0.5),
            backlog_ticks=8,
        )
    )
    try:
        run = Running(_env(threaded.fake, tmp_path), "starlink")
        try:
            wait_until(lambda: threaded.call(lambda: threaded.fake.available()) == 0, 30)
            api = _settled(run.url)
            assert api["terminals_online"] == 5 and api["alerts_open"] > 0
            with page_at(run.url) as page:
                page.wait_for_function(
                    "document.body.dataset.starlink === 'on' && "
                    "Number(document.body.dataset.starlinkRefreshes || 0) >= 1",
                    timeout=20_000,
                )
                raw = page.get_attribute("#sl-terminals-online", "data-raw")
                assert raw == str(api["terminals_online"])
                assert page.get_attribute("#sl-routers-seen", "data-raw") == str(
                    api["routers_seen"]
                )
                assert page.get_attribute("#sl-alerts-open", "data-raw") == str(api["alerts_open"])
                assert page.locator("#sl-alerts li").count() == len(api["open_alerts"])
                points = page.get_attribute("#sl-chart-latency", "data-points")
                assert points is not None and int(points) == len(api["trend"]["t"]) > 0
                assert page.locator("[data-view='satellites']").first.is_hidden()
                assert page.locator("[data-view='starlink']").first.is_visible()
                # no satellites pipeline: its summary is not asked for (it was, every
                # refresh, a 404 in the browser's console)
                asked: list[str] = []
                page.on("request", lambda req: asked.append(req.url))
                seen = int(page.evaluate("document.body.dataset.refreshes"))
                page.wait_for_function(
                    f"Number(document.body.dataset.refreshes) >= {seen + 2}", timeout=20_000
                )
                assert any("api/pipelines" in u for u in asked), asked
                assert not [u for u in asked if "api/dashboard/summary" in u], asked
        finally:
            run.stop()
    finally:
        threaded.close()


def test_without_the_pipeline_the_view_is_hidden(tmp_path: Path) -> None:
    run = Running(plugin_env(tmp_path / "none", tmp_path / "data"), "satellites")
    try:
        status, _, _ = http("GET", run.url + "/api/dashboard/starlink")
        assert status == 404
        with page_at(run.url) as page:
            page.wait_for_function("document.body.dataset.starlink === 'off'", timeout=20_000)
            assert page.locator("[data-view='starlink']").first.is_hidden()
    finally:
        run.stop()


def _settled(url: str) -> dict[str, Any]:
    """The Starlink summary once the last body served is durable: the same answer twice,
    half a second apart (a body is written in parts, so a summary read while it lands
    can be between two states)."""
    last: dict[str, Any] | None = None
    deadline = time.monotonic() + 30
    while True:
        _, _, body = http("GET", url + "/api/dashboard/starlink")
        api: dict[str, Any] = json.loads(body)
        api.pop("generated_at", None)
        if last is not None and api == last:
            return api
        assert time.monotonic() < deadline, "the summary did not settle"
        last = api
        time.sleep(0.5)
