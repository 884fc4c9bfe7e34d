"""The answer page in a real headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by Selenium,
offline): click answers, reload, save, and import the downloaded answers.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rlrm.data.dataset import TransitionDataset
from rlrm.data.preferences import read_preference_file
from rlrm.queries import entry

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _driver(profile: Path, downloads: Path) -> WebDriver:
    """Headless Chromium with a fresh profile, downloading into ``downloads``; fails (never skips) without it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"the browser test needs Chromium and its driver: missing {', '.join(missing)}; install them with "
                    "`apt-get install -y chromium chromium-driver` (.ci/run does when run as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium: .venv/bin/pip install -c constraints.txt -e '.[dev]'")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a driver or browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and not list(path.parent.glob("*.crdownload")):
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} was not downloaded within {timeout} s (found {sorted(path.parent.iterdir())})")


def test_answer_page_in_chromium(cartpole_ds: TransitionDataset, tmp_path: Path) -> None:
    data = cartpole_ds.save(tmp_path / "data")
    out = tmp_path / "q"
    assert entry(["--data", str(data), "--n", "4", "--length", "5", "--candidates", "20", "--width", "96",
                  "--out", str(out), "--seed", "3"]) == 0
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _driver(tmp_path / "profile", downloads)
    try:
        from selenium.webdriver.common.by import By

        driver.get((out / "index.html").as_uri())
        text = lambda id_: driver.find_element(By.ID, id_).text  # noqa: E731
        assert text("position") == "Pair 1 of 4" and text("progress") == "Answered 0 of 4"
        # the clips load from file:// beside the page
        assert driver.execute_script("return document.getElementById('left-clip').naturalWidth") == 96
        clicked = ["right", "left", "equal"]
        for label in clicked:
            driver.find_element(By.ID, f"answer-{label}").click()
        assert text("progress") == "Answered 3 of 4" and text("position") == "Pair 4 of 4"

        driver.refresh()
        assert text("progress") == "Answered 3 of 4" and text("position") == "Pair 4 of 4"
        driver.find_element(By.TAG_NAME, "body").send_keys("s")  # the keys work too: skip the last pair
        assert text("progress") == "Answered 3 of 4 (1 skipped)" and text("current-answer") == "Your answer: skip"
        driver.save_screenshot(str(tmp_path / "page.png"))
        driver.find_element(By.ID, "previous").click()
        assert text("current-answer") == "Your answer: equal"
        assert driver.find_element(By.ID, "answer-equal").get_attribute("aria-pressed") == "true"
        assert driver.find_element(By.ID, "answer-left").get_attribute("aria-label")

        driver.find_element(By.ID, "save").click()
        _wait_for(downloads / "answers.jsonl")
    finally:
        driver.quit()

    answers = downloads / "answers.jsonl"
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [{k: v for k, v in rec.items() if k != "label"} for rec in lines] == \
           [{k: v for k, v in rec.items() if k != "label"} for rec in queries]
    prefs = read_preference_file(answers, cartpole_ds)
    assert len(prefs) == 3
    assert prefs.label_words() == clicked
    assert prefs.info["blank_labels_skipped"] == 1
    for i, rec in enumerate(queries[:3]):
        assert (int(prefs.pairs.left_episode[i]), int(prefs.pairs.left_start[i])) == \
               (rec["left"]["episode"], rec["left"]["start"])
        assert (int(prefs.pairs.right_episode[i]), int(prefs.pairs.right_start[i])) == \
               (rec["right"]["episode"], rec["right"]["start"])
