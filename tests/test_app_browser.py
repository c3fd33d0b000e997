"""The demo app end to end: `scripts/app.py` serves a tiny saved pipeline on 127.0.0.1, headless Chromium (Debian's
`chromium`, driven by Playwright) clicks "Roll out", and the ground truth | prediction | error animation and the
error plot appear; on the Plan tab it picks an episode (the goal preview changes), sets a small planner, clicks
"Plan", and the goal frame and the simulator | plan | error animation appear. CI installs Chromium (`.ci/run`);
elsewhere the tests are skipped when it is absent."""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path

import PIL.Image
import pytest
from hub_helpers import tiny_pipeline

REPO = Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# CI must run this test: it installs both (.ci/run). Elsewhere it needs them present.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (not os.path.exists(CHROMIUM) or importlib.util.find_spec("playwright") is None),
    reason="needs Debian's chromium and Playwright, which .ci/run installs",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_served(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the app exited with {server.returncode}:\n{server.stdout.read()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    raise AssertionError(f"the app did not answer at {url} within {timeout_s} s")


@pytest.fixture
def app_url(tmp_path):
    folder = tmp_path / "pipeline"
    tiny_pipeline(image_size=32).save_pretrained(folder)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "app.py"), "--model", str(folder), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_served(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_one_rollout_through_the_app_shows_the_pictures(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(app_url, wait_until="networkidle")
            page.get_by_text("conditional", exact=True).click()
            page.get_by_role("button", name="Roll out").click()
            served = page.locator("img[src*='/gradio_api/file=']")
            served.nth(1).wait_for(state="visible", timeout=120_000)
            sizes = served.evaluate_all(
                "images => images.map(i => i.complete ? [i.naturalWidth, i.naturalHeight] : [0, 0])"
            )
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()
    animation, plot = sizes
    assert animation == [3 * 32 * 4, 32 * 4]  # ground truth | prediction | error, 32-pixel frames shown ×4
    assert plot[0] > 200 and plot[1] > 100


def test_one_plan_through_the_app_shows_the_goal_and_the_animation(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(app_url, wait_until="networkidle")
            page.get_by_role("tab", name="Plan").click()
            served = page.locator("img[src*='/gradio_api/file=']")
            served.first.wait_for(state="visible", timeout=60_000)  # the goal preview of episode 0
            first_goal = served.first.get_attribute("src")
            for label, value in (("steps to the goal", "3"), ("candidates", "16"), ("iterations", "2")):
                field = page.get_by_label(f"number input for {label}")
                field.fill(value)
                field.press("Enter")
            episode = page.get_by_label("episode (its goal frame)")
            episode.fill("5")
            episode.press("Enter")
            page.wait_for_function(  # the preview follows the chosen episode before any planning
                "src => document.querySelector(\"img[src*='/gradio_api/file=']\").src !== src", arg=first_goal
            )
            page.get_by_text("mppi", exact=True).click()
            page.get_by_role("button", name="Plan").click()
            served.nth(1).wait_for(state="visible", timeout=120_000)
            page.get_by_text("Objective per iteration").wait_for(timeout=30_000)
            sizes = served.evaluate_all(
                "images => images.map(i => i.complete ? [i.naturalWidth, i.naturalHeight] : [0, 0])"
            )
            animation = PIL.Image.open(BytesIO(page.request.get(served.nth(1).get_attribute("src")).body()))
            summary = page.get_by_text("Objective per iteration").inner_text()
            page.screenshot(path=str(tmp_path / "plan.png"), full_page=True)
        finally:
            browser.close()
    goal, gif = sizes
    assert goal == [32 * 4, 32 * 4]
    assert gif == [3 * 32 * 4, 32 * 4]  # simulator | plan | error, 32-pixel frames shown ×4
    assert animation.n_frames == 3  # one picture per planned step: the horizon set in the page
    assert summary.count(",") == 1  # the objective after each of the 2 iterations
