"""The web UI in a real headless Chromium (selenium): fill the new-run form, start MiniLM on a
slice of SST-2, watch it train, read the final accuracy on the page, try the model, open the
runs list and the report; screenshots of each step go to ``$DELTATUNE_TEST_ARTIFACTS/ui/``.

Debian's chromium and chromedriver are used as installed (nothing is downloaded); the test
is skipped, saying why, when either is not on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, SST2
from tests.ui.ui_process import start_ui

pytestmark = pytest.mark.slow  # ~1 minute: a real (small) training run

ARTIFACTS = Path(os.environ.get("DELTATUNE_TEST_ARTIFACTS", str(ROOT / "test-artifacts"))) / "ui"
RUN = "sst2-minilm"


def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("the browser test needs chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000", "--disable-gpu"):
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads anything
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


@pytest.fixture
def browser():
    driver = _driver()
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 600)")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(int(height) + 140, 4000))  # the whole page in one picture
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.3).until(condition)
    except Exception:  # noqa: BLE001 - say what did not happen, with the page's message
        message = driver.execute_script("const m = document.querySelector('#message'); return m ? m.textContent : ''")
        raise AssertionError(f"{what} did not happen within {timeout} s (page message: {message!r}; url {driver.current_url})") from None


def _fill(driver, field: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def test_train_watch_try_and_report_in_a_real_browser(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ui = start_ui(tmp_path / "runs", tmp_path / "ui.log")
    try:
        driver = browser
        started = time.monotonic()
        driver.get(ui.url + "/")
        _fill(driver, "name", RUN)
        Select(driver.find_element(By.ID, "task")).select_by_value("text-classification")
        _fill(driver, "model", "minilm")
        _fill(driver, "train_file", str(SST2 / "train.tsv"))
        _fill(driver, "validation_file", str(SST2 / "dev.tsv"))
        _fill(driver, "epochs", "1")
        _fill(driver, "batch_size", "16")
        _fill(driver, "max_train_samples", "200")
        _fill(driver, "max_eval_samples", "100")
        _fill(driver, "settings", "train.logging_steps=2")
        _fill(driver, "validation_file", str(SST2 / "no-such-dev.tsv"))  # a mistake: the one-line error on the page
        driver.find_element(By.ID, "start").click()
        message = _wait(driver, lambda d: d.find_element(By.ID, "message").text, 30, "the error message")
        assert message.startswith("data file not found:") and "no-such-dev.tsv" in message and driver.current_url == ui.url + "/"
        _fill(driver, "validation_file", str(SST2 / "dev.tsv"))
        driver.find_element(By.ID, "inspect").click()  # the inferred columns and deltatune check, before starting
        _wait(driver, lambda d: d.find_element(By.ID, "inspect-check").text, 120, "the inspection")
        assert "data.text_column = \"sentence\"" in driver.find_element(By.ID, "inspect-task").text
        assert driver.find_element(By.ID, "inspect-check").text.startswith("text-classification: 200 encoded training examples")
        assert not driver.find_element(By.ID, "message").is_displayed()
        _shot(driver, "01-new-run-form")
        driver.set_window_size(1280, 1000)

        driver.find_element(By.ID, "start").click()
        _wait(driver, lambda d: d.current_url.endswith(f"/runs/{RUN}"), 60, "opening the run page")
        _wait(driver, lambda d: "step" in d.find_element(By.ID, "progress-text").text, 120, "a progress line")
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-loss svg polyline"), 120, "a point of the loss curve")
        _shot(driver, "02-live-training")
        driver.set_window_size(1280, 1000)

        _wait(driver, lambda d: d.find_element(By.ID, "status").text in ("finished", "failed", "interrupted"), 300, "the run ending")
        assert driver.find_element(By.ID, "status").text == "finished", ui.output()
        cell = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, '#final tr[data-split="validation"][data-metric="accuracy"] td'),
                     30, "the final accuracy")
        accuracy = json.loads((ui.runs_dir / RUN / "eval.json").read_text())["validation"]["accuracy"]
        assert float(cell.get_attribute("data-value")) == pytest.approx(accuracy, abs=1e-12)
        assert cell.text == f"{accuracy:.4f}"
        assert "accuracy" in driver.find_element(By.ID, "latest").text
        assert driver.find_element(By.CSS_SELECTOR, "#chart-loss svg polyline") is not None  # a drawn train-loss curve
        _shot(driver, "03-finished-run-accuracy")
        driver.set_window_size(1280, 1000)

        _wait(driver, lambda d: d.find_element(By.ID, "try").is_displayed(), 30, "the try box")
        driver.find_element(By.ID, "try-text").send_keys("a gorgeous, witty and moving film")
        driver.find_element(By.ID, "predict").click()
        label = _wait(driver, lambda d: d.find_element(By.ID, "predicted-label").text, 120, "a prediction")
        assert label in ("0", "1")
        _shot(driver, "04-prediction")

        driver.set_window_size(390, 844)  # phone width: one column, nothing wider than the screen
        driver.refresh()
        _wait(driver, lambda d: d.find_element(By.ID, "status").text == "finished", 30, "the run page at phone width")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 390 + 1
        _shot(driver, "05-phone-width-run")
        driver.set_window_size(1280, 1000)

        driver.get(ui.url + "/runs")
        row = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f'#runs-table tr[data-run="{RUN}"]'), 30, "the run in the list")
        _wait(driver, lambda d: "finished" in row.text and "accuracy" in row.text, 30, "the finished run's row")
        _shot(driver, "06-runs-list")
        driver.set_window_size(1280, 1000)

        row.find_element(By.LINK_TEXT, RUN).click()
        link = _wait(driver, lambda d: d.find_element(By.ID, "report-link") if d.find_element(By.ID, "report-link").is_displayed() else None,
                     30, "the report link")
        driver.get(link.get_attribute("href"))
        _wait(driver, lambda d: RUN in d.title, 60, "the report page")
        assert "accuracy" in driver.find_element(By.TAG_NAME, "body").text
        _shot(driver, "07-report")
        assert time.monotonic() - started < 240, "the browser flow took too long"
    finally:
        ui.stop()
