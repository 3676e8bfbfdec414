"""The explorer page (`GET /`) in a real headless browser: Debian's Chromium driven by
Selenium. Load the page, search, build a history by clicking, get recommendations, add an
item and see it appear with its "new item" badge; a screenshot goes to the test's tmp dir.

`make test` installs chromium + chromium-driver when chromedriver is missing; without
them the test skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serving import copy_of, running

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not driver_path or not chromium:
        message = "no chromium / chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: `make test` installs them")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    # The Debian driver, given by path: Selenium never downloads one.
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def texts(driver, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_explorer_page(served_run: Path, tmp_path: Path, browser) -> None:
    run = copy_of(served_run, tmp_path)
    # the page re-renders lists as answers come: an element read mid-way is read again
    wait = WebDriverWait(browser, 60, ignored_exceptions=[StaleElementReferenceException])
    with running(run / "models" / "liger", log=tmp_path / "serve.log") as server:
        browser.get(server.url + "/")
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "model liger"))
        # the popular items are listed before any search; then search by title
        wait.until(lambda d: len(texts(d, "#results li .title")) > 5)
        box = browser.find_element(By.ID, "search")
        box.send_keys("film number 1")
        wait.until(lambda d: texts(d, "#results li .title")
                   and all("film number 1" in t.lower() for t in texts(d, "#results li .title")))
        # build a history by clicking two results
        for n in range(2):
            browser.find_elements(By.CSS_SELECTOR, "#results li")[n].click()
            wait.until(lambda d, n=n: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == n + 1)
        history = [e.get_attribute("data-id") for e in
                   browser.find_elements(By.CSS_SELECTOR, "#history li")]
        shown_for = (By.ID, "recs")
        wait.until(lambda d: d.find_element(*shown_for).get_attribute("data-history")
                   == ",".join(history))
        rows = browser.find_elements(By.CSS_SELECTOR, "#recs tbody tr")
        assert len(rows) == 10
        ids = [r.get_attribute("data-id") for r in rows]
        assert not set(ids) & set(history)  # exclude seen is on
        scores = [float(r.find_elements(By.TAG_NAME, "td")[3].text) for r in rows]
        assert scores == sorted(scores, reverse=True)
        assert all(t.startswith("Film number") for t in texts(browser, "#recs tbody td.title"))

        # add an item: it appears in search with the "new item" badge
        browser.find_element(By.ID, "new-id").send_keys("page-new")
        browser.find_element(By.ID, "new-text").send_keys(
            "Title: The Explorer Test Film; Genres: space opera")
        browser.find_element(By.ID, "add-item").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "add-status"), "added page-new"))
        wait.until(lambda d: "The Explorer Test Film" in texts(d, "#results li .title"))
        new_row = browser.find_element(By.CSS_SELECTOR, '#results li[data-id="page-new"]')
        assert new_row.find_element(By.CLASS_NAME, "badge").text == "new item"
        assert "(1 added)" in browser.find_element(By.ID, "model-info").text
        new_row.click()  # the new item joins the history and is recommended from
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 3)
        wait.until(lambda d: d.find_element(*shown_for).get_attribute("data-history")
                   == ",".join([*history, "page-new"]))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#recs tbody tr")) == 10
        shot = tmp_path / "explorer.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        assert not browser.find_elements(By.CSS_SELECTOR, ".error")
