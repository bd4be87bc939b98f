"""The built-in page in headless Chromium (Debian's package) shows what the store holds."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import pytest

from tests.conftest import ServiceProcess, post_json, require

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_page_numbers_match_the_store(service: ServiceProcess, tmp_path: Any) -> None:
    require(os.path.exists(CHROMIUM), "Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    now = time.time_ns()
    points = []
    for s in range(5):
        for i in range(40):
            points.append(
                {
                    "satellite_id": f"SAT-{s:04d}",
                    "battery_charge_percent": 5.0 if (s == 2 and i == 39) else 60.0 + i % 10,
                    "storage_usage_mb": 40000.0 + i,
                    "signal_strength_dbm": -70.0,
                    "timestamp": now - (40 - i) * 1_000_000_000,
                }
            )
    status, doc = post_json(service.url + "/telemetry/batch", points)
    assert status == 202 and doc["accepted"] == 200
    assert service.wait_count(200) == 200
    assert service.wait_count(1, table="alerts") == 1

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            external: list[str] = []
            page.on(
                "request",
                lambda r: external.append(r.url) if not r.url.startswith(service.url) else None,
            )
            page.goto(service.url + "/")
            page.wait_for_function(
                "Number(document.body.dataset.refreshes || 0) >= 1", timeout=20_000
            )
            total = page.get_attribute("#total-points", "data-raw")
            store_total = service.count()
            assert total is not None and int(float(total)) == store_total == 200
            anomalies = page.get_attribute("#total-anomalies", "data-raw")
            assert (
                anomalies is not None
                and int(float(anomalies)) == service.count(where="is_anomaly") == 1
            )
            alerts = page.get_attribute("#active-alerts-count", "data-raw")
            assert alerts is not None and int(float(alerts)) == 1
            assert page.locator("#active-alerts li[data-entity-id='SAT-0002']").count() == 1
            rows = page.locator("#satellites tr[data-satellite-id]")
            assert rows.count() == 5
            per_sat = dict(
                service.query("SELECT satellite_id, count() FROM telemetry GROUP BY satellite_id")
            )
            for sid, n in per_sat.items():
                cell = page.locator(
                    f"#satellites tr[data-satellite-id='{sid}'] td[data-field='points']"
                )
                assert int(float(cell.get_attribute("data-raw") or "-1")) == int(n)
            status_cell = page.locator(
                "#satellites tr[data-satellite-id='SAT-0002'] td[data-field='status']"
            )
            assert status_cell.get_attribute("data-raw") == "anomaly"
            latest = service.query(
                "SELECT argMax(battery_charge_percent, time) FROM telemetry WHERE satellite_id='SAT-0001'"
            )[0][0]
            bcell = page.locator(
                "#satellites tr[data-satellite-id='SAT-0001'] td[data-field='battery']"
            )
            assert float(bcell.get_attribute("data-raw") or "nan") == pytest.approx(float(latest))
            # choose a satellite: its charts get points
            page.select_option("#satellite-select", "SAT-0003")
            page.wait_for_function(
                "Number(document.querySelector('#chart-battery').dataset.points || 0) > 0",
                timeout=15_000,
            )
            # live: new data shows up on the next refresh (≤ 5 s)
            post_json(service.url + "/telemetry", {**points[0], "timestamp": time.time_ns()})
            service.wait_count(201)
            page.wait_for_function(
                "document.querySelector('#total-points').dataset.raw == '201'", timeout=10_000
            )
            page.screenshot(path=str(tmp_path / "dashboard.png"))
            assert page.get_attribute("#status", "data-state") == "ok"
            assert external == []
        finally:
            browser.close()
