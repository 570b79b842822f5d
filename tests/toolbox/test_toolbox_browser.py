"""The contact sheet in a real headless Chromium: loads from disk, no console errors, images render.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` package; without them the test is skipped with the reason.  Selenium is
pointed at ``/usr/bin/chromedriver`` explicitly, so Selenium Manager downloads nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1200",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium driven by Selenium through the system chromedriver."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="flora-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


SCROLL_AND_DECODE = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.querySelectorAll('main img'));
Promise.all(images.map(img => { img.scrollIntoView(); return img.decode().catch(() => null); }))
  .then(() => { window.scrollTo(0, 0);
                done(images.map(img => [img.getAttribute('src'), img.naturalWidth])); });
"""


def test_contact_sheet_renders_in_chromium(showcase, browser):
    """index.html opens from disk: no console errors, every thumbnail renders, filters work."""
    browser.set_script_timeout(30)
    browser.get((showcase.report / "index.html").as_uri())
    sizes = browser.execute_async_script(SCROLL_AND_DECODE)
    assert len(sizes) == 6 and all(width > 0 for _, width in sizes), sizes
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    urls = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src],[href]')).map(e => e.src || e.href)")
    assert urls and all(url.startswith(("file://", "data:")) for url in urls), urls
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "contact-sheet.png"))
    browser.find_element("css selector", "button[data-filter=failed]").click()
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden)"
        ".map(c => c.dataset.group)")
    assert shown == ["failed"]
    browser.find_element("css selector", "button[data-filter=all]").click()
    assert browser.execute_script("return document.title").startswith("shop")
    assert "<script>alert(1)</script> lamp" in browser.find_element("tag name", "main").text
