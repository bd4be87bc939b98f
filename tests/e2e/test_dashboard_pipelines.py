"""The page reads the thresholds the service was configured with and shows every running
pipeline (headless Chromium); without the satellites pipeline its view is hidden."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import post_json, require
from tests.support.runner import Running, plugin_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def page_at(url: str) -> Iterator[Any]:
    require(os.path.exists(CHROMIUM), "Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/")
            page.wait_for_function(
                "Number(document.body.dataset.refreshes || 0) >= 1", timeout=20_000
            )
            yield page
        finally:
            browser.close()


def test_thresholds_come_from_the_service_and_every_pipeline_has_a_card(
    plugin_path: Path, tmp_path: Path
) -> None:
    env = plugin_env(
        plugin_path,
        tmp_path / "data",
        ANOMALY_THRESHOLD_BATTERY="50",  # not the default 10: the page must not assume it
        ANOMALY_THRESHOLD_SIGNAL="-80",
        ORBITSTREAM_WEATHER__STATIONS="3",
        ORBITSTREAM_WEATHER__INTERVAL_SECS="0.2",
        BATCH_TIMEOUT="50ms",
    )
    run = Running(env, "satellites", "weather")
    try:
        now = time.time_ns()
        points = [
            {
                "satellite_id": "SAT-A",
                "battery_charge_percent": 45.0,  # breaches 50, would not breach 10
                "storage_usage_mb": 1000.0,
                "signal_strength_dbm": -90.0,  # breaches -80
                "timestamp": now - 2_000_000_000,
            },
            {
                "satellite_id": "SAT-B",
                "battery_charge_percent": 80.0,
                "storage_usage_mb": 1000.0,
                "signal_strength_dbm": -60.0,
                "timestamp": now - 1_000_000_000,
            },
        ]
        status, doc = post_json(run.url + "/telemetry/batch", points)
        assert status == 202 and doc["accepted"] == 2
        wait_until(lambda: run.query("SELECT count() FROM telemetry", "satellites") == [[2]])
        with page_at(run.url) as page:
            page.wait_for_function(
                "document.querySelector(\"#satellites tr[data-satellite-id='SAT-A']\") !== null",
                timeout=15_000,
            )
            rules = json.loads(page.evaluate("document.body.dataset.thresholds"))
            assert rules["battery"] == {"op": "<", "threshold": 50.0, "rule": "battery_low"}
            assert rules["signal"]["threshold"] == -80.0
            assert rules["storage"]["threshold"] == 95000.0
            assert page.get_attribute("#chart-battery", "data-threshold") == "50"

            def breach(sid: str, field: str) -> bool:
                cls = page.get_attribute(
                    f"#satellites tr[data-satellite-id='{sid}'] td[data-field='{field}']", "class"
                )
                return "breach" in (cls or "")

            assert breach("SAT-A", "battery") and breach("SAT-A", "signal")
            assert not breach("SAT-B", "battery") and not breach("SAT-A", "storage")
            # one card per running pipeline, with the service's figures
            assert page.locator("#pipelines article[data-pipeline]").count() == 2
            page.wait_for_function(
                "Number(document.querySelector(\"#pipelines article[data-pipeline='weather'] "
                "dd[data-field='rows_total']\").dataset.raw) >= 3",
                timeout=15_000,
            )
            sat_status = page.get_attribute(
                "#pipelines article[data-pipeline='satellites'] [data-field='status']", "data-raw"
            )
            assert sat_status == "healthy"
            source = page.get_attribute(
                "#pipelines article[data-pipeline='weather'] [data-field='source']", "data-raw"
            )
            assert source == "weather-stations"
            assert page.evaluate("document.body.dataset.satellites") == "on"
            assert page.is_visible("#satellites")
    finally:
        assert run.stop() == 0


def test_without_the_satellites_pipeline_its_view_is_hidden(
    plugin_path: Path, tmp_path: Path
) -> None:
    env = plugin_env(
        plugin_path,
        tmp_path / "data",
        ORBITSTREAM_WEATHER__STATIONS="2",
        ORBITSTREAM_WEATHER__INTERVAL_SECS="0.2",
        BATCH_TIMEOUT="50ms",
    )
    run = Running(env, "weather")
    try:
        with page_at(run.url) as page:
            assert page.evaluate("document.body.dataset.satellites") == "off"
            assert not page.is_visible("#satellites")
            assert not page.is_visible("#total-points")
            assert page.locator("#pipelines article[data-pipeline]").count() == 1
            assert page.get_attribute("#status", "data-state") == "ok"
            assert json.loads(page.evaluate("document.body.dataset.thresholds")) == {
                "battery": None,
                "storage": None,
                "signal": None,
            }
    finally:
        assert run.stop() == 0
