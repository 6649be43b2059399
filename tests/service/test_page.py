"""The web page in a real headless Chromium: generate, watch progress, see the images; the
controls follow the model (digits, named classes, unconditional images, points) and the API-key
field shows only when the service needs a key.

Needs Debian's ``chromium`` and ``chromium-driver`` (``tests/browser.py``); without them the test
fails when ``CI`` is set and is skipped otherwise. A screenshot is kept in ``test-artifacts/service/``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from ddpm_core.sampler_specs import FAST_SAMPLER, SAMPLER_NAMES
from serve.redis_server import EmbeddedRedis
from tests.api.kinds import SPRITE_CLASSES, write_model_kinds
from tests.browser import console_errors
from tests.service.conftest import ARTIFACTS, own_stack, service_env, start_api, stop_process


def test_page_generates_and_shows_the_grid_and_gif(browser, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    api_log = ARTIFACTS / "api.log"
    log_start = api_log.stat().st_size
    browser.get(base_url + "/")
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#digit option")) == 11)
    assert browser.find_element(By.ID, "model").get_attribute("value") == "mnist"
    assert browser.find_element(By.ID, "class-word").text == "Digit"  # a digit model says digit
    assert "1×28×28 images of mnist, digits 0, 1" in browser.find_element(By.ID, "model-info").text
    wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")
    assert not browser.find_element(By.ID, "api-key-label").is_displayed()  # no key needed here

    # the page's icon loads, under its link and under the name browsers ask for by default
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    for url in (icon, base_url + "/favicon.ico"):
        answer = httpx.get(url)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml")
    assert console_errors(browser) == []  # nothing failed to load, no script error

    # a bad value shows the API's message naming the field
    field = browser.find_element(By.ID, "n")
    field.clear()
    field.send_keys("0")
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda driver: driver.find_element(By.ID, "error").is_displayed())
    assert "n:" in browser.find_element(By.ID, "error").text
    assert [message for message in console_errors(browser) if "/generate" not in message or "422" not in message] == []

    redraw = browser.find_element(By.ID, "redraw")
    assert not redraw.is_enabled()  # redrawing mismatches needs a digit
    Select(browser.find_element(By.ID, "digit")).select_by_value("3")
    assert redraw.is_enabled() and not redraw.is_selected()
    field.clear()
    field.send_keys("4")
    # the samplers come from GET /models (the registry): the fast one first chosen, with its steps
    sampler = Select(browser.find_element(By.ID, "sampler"))
    assert [option.get_attribute("value") for option in sampler.options] == list(SAMPLER_NAMES)
    assert sampler.first_selected_option.get_attribute("value") == FAST_SAMPLER
    steps = browser.find_element(By.ID, "steps")
    assert steps.get_attribute("value") == "8" and steps.get_attribute("min") == "5" and steps.is_enabled()
    assert browser.find_element(By.ID, "expected").text.startswith("8 model calls")
    sampler.select_by_value("ddpm")  # all of the model's 200 training steps, not chosen
    assert steps.get_attribute("value") == "200" and not steps.is_enabled()
    sampler.select_by_value("ddim")
    assert steps.get_attribute("value") == "50" and steps.get_attribute("min") == "10"
    steps.clear()
    steps.send_keys("15")
    browser.find_element(By.ID, "seed").send_keys("5")
    browser.find_element(By.ID, "generate").click()

    def loaded(element_id: str):
        return lambda driver: driver.execute_script(
            f"const img = document.getElementById('{element_id}');"
            "return img.complete && img.naturalWidth > 0 && !img.closest('figure').hidden;"
        )

    wait.until(loaded("result-png"))
    wait.until(loaded("result-gif"))
    browser.save_screenshot(str(ARTIFACTS / "page.png"))
    assert browser.find_element(By.ID, "job-status").text == "succeeded"
    assert not browser.find_element(By.ID, "error").is_displayed()
    progress = browser.execute_script("const p = document.getElementById('progress'); return [p.value, p.max];")
    assert progress == [15, 15]
    # done: the time it took, no "s left" of the last progress event
    wait.until(lambda driver: driver.find_element(By.ID, "progress-text").text.startswith("done in "))
    assert re.fullmatch(r"done in \d+(\.\d)? m?s", browser.find_element(By.ID, "progress-text").text)
    width = browser.execute_script("return document.getElementById('result-png').naturalWidth;")
    assert width == (2 * 30 + 2) * 2  # 4 samples: a 2 x 2 grid, scaled by 2
    # shown larger (min-width 128 px): hard pixels; shown smaller: smoothed, never aliased
    rendering = (
        "const img = document.getElementById('result-png');"
        "img.style.width = arguments[0]; img.style.minWidth = arguments[0] ? '0' : '';"
        "fitRendering(img); return getComputedStyle(img).imageRendering;"
    )
    assert browser.execute_script(rendering, "") == "pixelated"
    assert browser.execute_script(rendering, "60px") == "auto"
    assert browser.execute_script(rendering, "") == "pixelated"
    png_link = browser.find_element(By.ID, "png-link").get_attribute("href")
    assert png_link.endswith("/png")
    jobs = browser.find_elements(By.CSS_SELECTOR, "#jobs li")
    assert len(jobs) == 1 and "succeeded" in jobs[0].text and "digit 3" in jobs[0].text
    stored = browser.execute_script("return JSON.parse(sessionStorage.getItem('ddpm-jobs'));")
    assert stored[0]["params"]["steps"] == 15 and stored[0]["params"]["redraw_rounds"] == 0
    # this service's model directory has no classifier: the page says the samples were not checked
    wait.until(lambda driver: driver.find_element(By.ID, "check").is_displayed())
    summary = browser.find_element(By.ID, "check-summary").text
    assert summary == "Not checked: no classifier file mnist_classifier.safetensors."
    assert not browser.find_element(By.ID, "check-table").is_displayed()
    assert console_errors(browser) == []
    # the page shows previews, which a stream sends only when asked
    assert "/events?previews=true HTTP" in api_log.read_bytes()[log_start:].decode(errors="replace")


@pytest.fixture(scope="module")
def kinds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_kinds(tmp_path_factory.mktemp("page-kinds"))


def test_page_follows_the_model_and_shows_the_queue(browser, redis_server: EmbeddedRedis, kinds_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    # an API with a key and no worker: a job waits in the queue
    env = service_env(
        redis_server.url, kinds_dir, DDPM_API_KEYS="page-key", DDPM_KEY_PREFIX="ddpmpage", DDPM_QUEUE_NAME="ddpmpage"
    )
    process, base = start_api(env, "api-page.log")
    try:
        browser.get(base + "/")
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#model option")) == 4)
        wait.until(lambda driver: driver.find_element(By.ID, "api-key-label").is_displayed())  # GET /auth

        def shown(element_id: str) -> bool:
            return browser.find_element(By.ID, element_id).is_displayed()

        def choose(model: str) -> None:
            Select(browser.find_element(By.ID, "model")).select_by_value(model)

        choose("sprites")
        assert browser.find_element(By.ID, "class-word").text == "Class"
        names = [option.text for option in browser.find_elements(By.CSS_SELECTOR, "#digit option")]
        assert names == ["any", *SPRITE_CLASSES]
        assert shown("class-label") and shown("guidance-label") and not shown("redraw-label")  # not checked
        choose("flowers")  # unconditional: no class, no guidance
        assert not shown("class-label") and not shown("guidance-label")
        n = browser.find_element(By.ID, "n")
        assert n.get_attribute("max") == "16" and n.get_attribute("value") == "16"
        choose("board")  # points
        assert browser.find_element(By.ID, "n-word").text == "Points" and not shown("class-label")
        assert n.get_attribute("max") == "10000" and n.get_attribute("value") == "2000"
        info = browser.find_element(By.ID, "model-info").text
        assert info.startswith("board: 2-D points (a scatter plot) of checkerboard, unconditional; up to 10000 points")

        browser.find_element(By.ID, "api-key").send_keys("page-key")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda driver: driver.find_element(By.ID, "progress-text").text.startswith("waiting"))
        assert browser.find_element(By.ID, "progress-text").text == "waiting in the queue: next to run"
        assert browser.find_element(By.ID, "job-status").text == "queued"
        assert browser.find_element(By.ID, "preview-caption").text == "live preview (predicted clean points)"
        assert f"board: 2000 points, {FAST_SAMPLER}" in browser.find_element(By.CSS_SELECTOR, "#jobs li").text
        browser.save_screenshot(str(ARTIFACTS / "page-kinds.png"))
    finally:
        stop_process(process, "API")


def test_page_clears_a_finished_job_when_the_model_changes(
    browser, redis_server: EmbeddedRedis, own_model_dir: Path
) -> None:
    """The PNG, GIF and check of a job belong to its model: choosing another model clears them, and
    a click on the job in the session's list shows them again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    shutil.copyfile(own_model_dir / "mnist.safetensors", own_model_dir / "other.safetensors")
    with own_stack(redis_server.url, own_model_dir, "ddpmpageswitch", "page-switch") as base:
        browser.get(base + "/")
        wait = WebDriverWait(browser, 120, poll_frequency=0.2)
        wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
        Select(browser.find_element(By.ID, "model")).select_by_value("mnist")
        n = browser.find_element(By.ID, "n")
        n.clear()
        n.send_keys("1")
        browser.find_element(By.ID, "generate").click()

        def shown(element_id: str) -> bool:
            return browser.find_element(By.ID, element_id).is_displayed()

        results = ("png-box", "gif-box", "check")
        wait.until(lambda driver: all(shown(element_id) for element_id in results))
        assert browser.find_element(By.ID, "progress-text").text.startswith("done in ")

        Select(browser.find_element(By.ID, "model")).select_by_value("other")
        assert not shown("current") and not any(shown(element_id) for element_id in results)
        sources = "return ['preview', 'result-png', 'result-gif'].map((id) => document.getElementById(id).src);"
        assert browser.execute_script(sources) == ["", "", ""]
        Select(browser.find_element(By.ID, "model")).select_by_value("mnist")  # stays cleared
        assert not shown("current")

        browser.find_element(By.CSS_SELECTOR, "#jobs li").click()  # the session's list brings it back
        wait.until(lambda driver: all(shown(element_id) for element_id in results))
        assert console_errors(browser) == []
