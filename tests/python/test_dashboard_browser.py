"""`/dashboard` in headless Chromium: the page loads its data and draws its charts.

Starts `switchyard serve` (built-in demo: in-process mock upstream, SQLite), sends real chat
requests to two models and the route `auto` (some repeated, so the exact cache hits), waits
until the outcome log holds them, then loads the page with Selenium and checks that the SVG
charts carry one element per data point, that the numbers shown match the API, and that the
console has no errors. The screenshot goes to target/test-artifacts/dashboard.png.

Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from test_openai_sdk import REPO_ROOT, Gateway

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO_ROOT / "target" / "test-artifacts"


def chat(base: str, model: str, text: str) -> int:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


@pytest.fixture()
def seeded_gateway():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("chromium / chromedriver missing: apt-get install -y chromium chromium-driver")
    with tempfile.TemporaryDirectory(prefix="switchyard-dash-") as d:
        embedder = REPO_ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"
        gw = Gateway(Path(d), env={"SWITCHYARD_EMBEDDER_DIR": str(embedder)})
        try:
            # The demo config names the shipped checkpoint relative to the working directory.
            (gw.cwd / "models").symlink_to(REPO_ROOT / "models")
            reload = urllib.request.Request(f"{gw.base}/admin/reload", data=b"", method="POST")
            with urllib.request.urlopen(reload, timeout=30) as r:
                assert json.load(r)["active"], "shipped checkpoint loaded"
            sent = 0
            for i in range(6):
                for model in ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "auto"):
                    # i % 3: each prompt is sent twice, so the second is an exact cache hit.
                    assert chat(gw.base, model, f"dashboard question {i % 3} for {model}") == 200
                    sent += 1
            deadline = time.monotonic() + 15
            summary = {}
            while time.monotonic() < deadline:
                summary = get_json(f"{gw.base}/dashboard/api/summary")
                if summary["totals"]["requests"] >= sent:
                    break
                time.sleep(0.1)
            assert summary["totals"]["requests"] == sent, summary
            yield gw, summary
        finally:
            gw.stop()


def test_dashboard_renders_charts_from_the_log(seeded_gateway):
    gw, summary = seeded_gateway
    profile = tempfile.mkdtemp(prefix="switchyard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1500",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"{gw.base}/dashboard")
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-rendered"))
        rendered = driver.find_element(By.TAG_NAME, "body").get_attribute("data-rendered")
        assert rendered not in (None, "error", "0"), driver.find_element(By.ID, "error").text

        series = driver.find_elements(By.CSS_SELECTOR, "#c-traffic svg polyline.series")
        points = driver.find_elements(By.CSS_SELECTOR, "#c-traffic svg circle.point")
        slices = driver.find_elements(By.CSS_SELECTOR, "#c-share svg .slice")
        cache_bars = driver.find_elements(By.CSS_SELECTOR, "#c-cache svg rect.bar")
        timeseries = get_json(f"{gw.base}/dashboard/api/timeseries")
        names = {(r["route"], r["model"]) for r in timeseries["rows"]}
        assert len(series) == len(names) > 0
        assert len(points) == len(timeseries["rows"])
        assert len(slices) == len(summary["models"]) >= 2
        assert len(cache_bars) == len(summary["cache"]["results"]) >= 1
        assert driver.find_element(By.ID, "s-requests").text == str(summary["totals"]["requests"])
        hit_rate = summary["cache"]["hit_rate"]
        assert hit_rate is not None and hit_rate > 0, summary
        assert driver.find_element(By.ID, "s-hit").text == f"{100 * hit_rate:.1f}%"

        active = driver.find_elements(By.CSS_SELECTOR, "#c-ckpt rect.bar")
        assert len(active) >= 1, "the active checkpoint's APGR bars"

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, max(900, int(height) + 40))
        assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
