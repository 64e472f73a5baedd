"""Headless Chromium from the system packages (apt: chromium, chromium-driver), driven through WebDriver by Selenium.

The driver binary is given explicitly, so Selenium Manager never looks for (or downloads) another.
"""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(width: int = 1200, height: int = 900) -> webdriver.Chrome:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        raise AssertionError(f"{', '.join(missing)} missing: install the Debian packages chromium and chromium-driver (.ci/run does).")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
