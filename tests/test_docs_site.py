"""The documentation site in a real headless Chromium: built with ``mkdocs build --strict`` into a
temporary directory, served by a local HTTP server that records every request, and every page
opened. No page, image, script, stylesheet or frame may 404, every image must decode, the
console must stay free of errors, and nothing may be fetched from outside the local server (the
browser resolves every other host to nothing, as CI has no internet). The HTTP reference must
render the API's operations from the OpenAPI schema the build wrote.

Needs the ``docs`` extra (``pip install -e '.[docs]'``) and Debian's ``chromium`` and
``chromium-driver`` (``tests/browser.py``); without them the test fails when ``CI`` is set and is
skipped otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.browser import console_errors, start_browser

REPO = Path(__file__).resolve().parents[1]
# every host but the local server resolves to nothing: a font or script from a CDN fails loudly
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",)


@dataclass
class Served:
    """The local server of the built site and every request it answered (path, status)."""

    base: str
    requests: list[tuple[str, int]] = field(default_factory=list)

    def failures(self) -> list[tuple[str, int]]:
        return [(path, status) for path, status in self.requests if status >= 400]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as CI builds it."""
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError as error:
        message = f"the docs site test needs the docs extra (pip install -e '.[docs]'): {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[Served]:
    record: list[tuple[str, int]] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            record.append((self.path, int(code) if str(code).isdigit() else 0))

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):  # the browser closing early is no error
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_address[1]}/", record)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def offline_browser() -> Iterator[object]:
    driver, profile = start_browser(OFFLINE)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def pages(site: Path) -> list[str]:
    """Every page of the site, as a path under its root ('' for the home page)."""
    found = sorted(path.parent.relative_to(site).as_posix() for path in site.rglob("index.html"))
    return ["" if page == "." else page + "/" for page in found]


def load_hooks():
    """docs/hooks.py, the build's hooks (they need mkdocs)."""
    try:
        import mkdocs  # noqa: F401
    except ImportError as error:
        message = f"the docs hooks need the docs extra (pip install -e '.[docs]'): {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_table_describes_every_setting() -> None:
    """Operating it lists every setting with its variable, default and a description (a setting
    added without a comment in contract/settings.py fails here)."""
    from contract.settings import Settings

    rows = load_hooks().settings_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields)
    for row, name in zip(rows, Settings.model_fields, strict=True):
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert len(cells) == 4, row
        assert cells[0] in (f"`DDPM_{name.upper()}`", "`REDIS_URL`"), row
        assert cells[2] and cells[3], f"{name}: no default or no description in the table: {row}"
    assert "| `DDPM_MAX_QUEUE` | int | `32` | queued jobs beyond this get 429 |" in rows


@pytest.mark.e2e
def test_the_site_has_every_page(site: Path) -> None:
    expected = {
        "",
        "getting-started/",
        "api/",
        "operating/",
        "models/",
        "samplers/",
        "engine/",
        "benchmarks/",
        "development/",
        "model-cards/mnist/",
        "model-cards/checkerboard/",
        "model-cards/mnist_classifier/",
        "reference/http/",
        "reference/python/",
    }
    assert expected <= set(pages(site))
    assert (site / "reference" / "openapi.json").is_file()


@pytest.mark.e2e
def test_every_page_loads_whole_and_offline(site: Path, served: Served, offline_browser) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser = offline_browser
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    images_seen = 0
    links: set[str] = set()
    for page in pages(site):
        url = served.base + page
        browser.get(url)
        wait.until(lambda driver: driver.execute_script("return document.readyState") == "complete")
        wait.until(lambda driver: driver.execute_script("return [...document.images].every((i) => i.complete)"))
        title = browser.title
        assert "404" not in title, f"{url}: {title}"
        broken = browser.execute_script(
            "return [...document.images].filter((i) => !(i.naturalWidth > 0)).map((i) => i.src);"
        )
        assert broken == [], f"{url}: images that did not decode: {broken}"
        images_seen += browser.execute_script("return document.images.length;")
        outside = browser.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name)"
            ".filter((name) => !name.startsWith(location.origin) && !name.startsWith('data:'));"
        )
        assert outside == [], f"{url} fetched from outside the site: {outside}"
        assert console_errors(browser) == [], f"{url}: console errors"
        links |= set(
            browser.execute_script(
                "return [...document.querySelectorAll('a[href]')].map((a) => a.href)"
                ".filter((href) => href.startsWith(location.origin));"
            )
        )
    assert images_seen >= 4  # the home page's grid and GIF, the model cards' pictures
    assert served.failures() == [], f"requests that failed: {served.failures()}"

    # every link between pages leads somewhere (anchors are checked by mkdocs build --strict)
    for link in sorted({urljoin(link, urlsplit(link).path) for link in links}):
        with urllib.request.urlopen(link, timeout=10) as answer:
            assert answer.status == 200, link


@pytest.mark.e2e
def test_the_http_reference_renders_the_openapi_schema(served: Served, offline_browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = offline_browser
    browser.get(served.base + "reference/http/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    frame = wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "iframe.swagger-ui-iframe"))
    browser.switch_to.frame(frame)
    try:
        wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10)
        paths = {element.text for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    finally:
        browser.switch_to.default_content()
    assert {"/generate", "/jobs/{job_id}", "/jobs/{job_id}/events", "/v1/images/generations"} <= paths
    assert console_errors(browser) == []
    assert served.failures() == [], f"requests that failed: {served.failures()}"
