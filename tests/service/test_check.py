"""The checks end to end: a worker and the API over a model directory holding the SHIPPED models
and classifier (``checkpoints/``: ``mnist`` read digit by digit, ``checkerboard`` measured on the
board's squares), an untrained MNIST model (``tiny``: noise the classifier reads as some other
digit, so mismatches are certain) and an untrained RGB model (``sprites``: no classifier for it)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import (
    ARTIFACTS,
    CLASSIFIER,
    read_events,
    wait_job,
)

TINY_DIGIT = 1  # the tiny untrained model's noise is never read as a 1 (asserted below)
TINY_SEED = 11
CHECKERBOARD_DDIM_STEPS = 50  # of 100: 0.947 of 10,000 points on the squares (20 steps: 0.871)
CHECKERBOARD_MIN_FRACTION = 0.9


@pytest.fixture()
def http(check_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=check_url, timeout=30) as client:
        yield client


def run(http: httpx.Client, **body) -> dict:
    response = http.post("/generate", json=body)
    assert response.status_code == 202, response.text
    job = wait_job(http, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def tiles(http: httpx.Client, job: dict) -> np.ndarray:
    """The PNG's samples, (n, 28, 28) uint8, row by row (28-pixel tiles, 2-pixel padding, scale 2)."""
    grid = np.asarray(Image.open(io.BytesIO(http.get(job["links"]["png"]).content)).convert("L"))[::2, ::2]
    n = job["params"]["n"]
    columns = int(np.ceil(np.sqrt(n)))
    return np.stack([grid[2 + 30 * (i // columns) :][:28, 2 + 30 * (i % columns) :][:, :28] for i in range(n)])


@pytest.fixture(scope="module")
def classifier():
    from ddpm_core.evaluation.classifier import load_classifier

    return load_classifier(CLASSIFIER).model


def read_tiles(classifier, images: np.ndarray) -> tuple[list[int], list[float]]:
    import torch

    from ddpm_core.evaluation.classifier import preprocess

    with torch.inference_mode():
        probabilities = torch.softmax(classifier(preprocess(images)), dim=1)
    confidence, digit = probabilities.max(dim=1)
    return digit.tolist(), confidence.tolist()


def test_the_shipped_model_is_checked_digit_by_digit_in_the_pngs_order(http: httpx.Client, classifier) -> None:
    job = run(http, digit=3, n=4, sampler="uni_pc", steps=8, seed=123)  # the page's fast sampler
    check = job["check"]
    assert check["skipped"] is None
    assert check["classifier"] == "mnist_classifier" and check["classifier_test_accuracy"] == 0.9943
    assert check["asked"] == 3 and check["matches"] == 4 and check["redraw_rounds"] == 0
    assert [(s["index"], s["seed"], s["redrawn"]) for s in check["samples"]] == [(i, 123 + i, 0) for i in range(4)]
    digits, confidences = read_tiles(classifier, tiles(http, job))  # the PNG, read again here
    assert [s["digit"] for s in check["samples"]] == digits == [3, 3, 3, 3]
    assert [s["confidence"] for s in check["samples"]] == pytest.approx(confidences, abs=2e-4)

    # unconditional samples: labels, in the PNG's order, and no match count
    job = run(http, n=6, sampler="ddim", steps=20, seed=5)
    check = job["check"]
    assert check["asked"] is None and check["matches"] is None
    assert all(s["matches"] is None for s in check["samples"])
    digits, confidences = read_tiles(classifier, tiles(http, job))
    assert [s["digit"] for s in check["samples"]] == digits and len(set(digits)) > 1
    assert [s["confidence"] for s in check["samples"]] == pytest.approx(confidences, abs=2e-4)


def test_mismatches_are_redrawn_when_asked_with_reported_seeds(http: httpx.Client) -> None:
    # a multistep sampler: each redrawn sample keeps its own history, and its seed alone gives it again
    body = dict(model="tiny", digit=TINY_DIGIT, n=4, sampler="dpmpp_2m", steps=10, seed=TINY_SEED)
    kept = run(http, **body)
    assert kept["params"]["redraw_rounds"] == 0
    assert kept["check"]["matches"] == 0 and kept["check"]["rounds_run"] == 0  # noise: never a 1

    redrawn = run(http, **body, redraw_mismatches=True)
    check = redrawn["check"]
    assert redrawn["params"]["redraw_rounds"] == 2
    assert check["first_draw_matches"] == 0 and check["matches"] == 0
    assert check["rounds_run"] == 2 and check["redrawn"] == 4  # bounded: two rounds, then the samples stay
    assert [(s["seed"], s["redrawn"]) for s in check["samples"]] == [(TINY_SEED + 8 + i, 2) for i in range(4)]
    events = [event["data"] for event in read_events(http, redrawn["id"]) if event["event"] == "redraw"]
    assert events == [
        {"round": 1, "samples": [0, 1, 2, 3], "seeds": [TINY_SEED + 4 + i for i in range(4)]},
        {"round": 2, "samples": [0, 1, 2, 3], "seeds": [TINY_SEED + 8 + i for i in range(4)]},
    ]
    # the PNG shows the final draws: each is the sample its reported seed gives alone
    final = tiles(http, redrawn)
    assert not np.array_equal(final, tiles(http, kept))
    alone = run(http, **{**body, "n": 1, "seed": check["samples"][2]["seed"]})
    assert np.abs(tiles(http, alone)[0].astype(int) - final[2].astype(int)).max() <= 1


def test_a_model_without_a_classifier_skips_the_check_and_says_so(http: httpx.Client) -> None:
    job = run(http, model="sprites", n=4, sampler="ddim", steps=10)
    assert job["check"]["skipped"] == "no classifier for dataset 'folder:sprites'"
    assert job["check"]["kind"] is None and job["check"]["samples"] == [] and job["check"]["points"] is None


def test_the_shipped_checkerboard_model_puts_its_points_on_the_black_squares(http: httpx.Client) -> None:
    job = run(http, model="checkerboard", n=4000, sampler="ddim", steps=CHECKERBOARD_DDIM_STEPS, seed=0)
    check = job["check"]
    assert check["skipped"] is None and check["kind"] == "points" and check["samples"] == []
    points = check["points"]
    assert points["measure"] == "on_black_squares" and points["total"] == 4000
    assert (points["reference"], points["chance"]) == (1.0, 0.5)
    print(f"\ncheckerboard, 4000 points, DDIM {CHECKERBOARD_DDIM_STEPS} steps: {points['fraction']:.4f} on the squares")
    assert points["fraction"] >= CHECKERBOARD_MIN_FRACTION, points
    assert points["count"] == round(points["fraction"] * 4000)
    png = Image.open(io.BytesIO(http.get(job["links"]["png"]).content))
    assert png.size == (512, 512)  # the scatter plot
    gif = Image.open(io.BytesIO(http.get(job["links"]["gif"]).content))
    assert gif.size == (256, 256) and gif.n_frames >= 2


def test_the_page_marks_samples_read_as_another_digit_and_offers_redraws(
    browser,  # noqa: F811  (the fixture imported above)
    check_url: str,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(check_url + "/")
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#model option")) == 4)
    Select(browser.find_element(By.ID, "model")).select_by_value("tiny")
    Select(browser.find_element(By.ID, "digit")).select_by_value(str(TINY_DIGIT))
    n = browser.find_element(By.ID, "n")
    n.clear()
    n.send_keys("4")
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("10")
    browser.find_element(By.ID, "seed").send_keys(str(TINY_SEED))
    browser.find_element(By.ID, "redraw").click()
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda driver: driver.find_element(By.ID, "check-table").is_displayed())
    browser.save_screenshot(str(ARTIFACTS / "page-check.png"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#check-table tbody tr")
    assert len(rows) == 4
    assert all("mismatch" in row.get_attribute("class") for row in rows)  # highlighted: noise is never a 1
    first = [cell.text for cell in rows[0].find_elements(By.TAG_NAME, "td")]
    assert first[0] == "0 (row 1, col 1)" and first[3] == str(TINY_SEED + 8) and first[4] == "2"
    summary = browser.find_element(By.ID, "check-summary").text
    assert summary.startswith(f"0 of 4 read as {TINY_DIGIT} by the classifier mnist_classifier (99.43% on the MNIST")
    assert "4 redrawn in 2 rounds" in summary and "the classifier's error" in summary
    done = browser.find_element(By.ID, "progress-text").text
    assert re.fullmatch(r"done in [0-9.]+ (ms|s), after redrawing", done), done
    stored = browser.execute_script("return JSON.parse(sessionStorage.getItem('ddpm-jobs'));")
    assert stored[0]["params"]["redraw_rounds"] == 2
