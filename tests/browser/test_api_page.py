"""The API page at / in headless Chromium against a real `bentoml serve`: it shows every
endpoint of the service's OpenAPI spec, an endpoint tried from the page gets its answer,
its link leads to the draw-a-digit page, and nothing is requested from another origin
(Chromium's network log, and the console's Content-Security-Policy reports). The `server`
fixture runs the service from source, so the spec's description is BentoML's default, with
badges on other sites: the page must leave them out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

ENDPOINTS = ["/predict", "/predict_image", "/model_info"]


class Watched:
    """A Playwright page that records requests to other origins and script errors."""

    def __init__(self, page: Any, server: str) -> None:
        self.page = page
        self.requested: list[str] = []
        self.foreign: list[str] = []
        self.script_errors: list[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda error: self.script_errors.append(str(error)))
        page.on("console", self._console)
        self.server = server

    def _request(self, request: Any) -> None:
        self.requested.append(request.url)
        if not request.url.startswith((self.server + "/", "data:", "blob:")):
            self.foreign.append(request.url)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:  # something the page tried to load
            self.foreign.append(message.text)


@pytest.fixture
def api_page(browser: Any, server: str) -> Iterator[Watched]:
    """/ opened at desktop size, its operations shown; afterwards, no foreign requests
    and no script errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(context.new_page(), server)
    watched.page.goto(f"{server}/")
    for path in ENDPOINTS:
        expect(watched.page.locator(".opblock-summary-path", has_text=path).first).to_be_visible()
    yield watched
    context.close()
    assert watched.foreign == [], f"the page loaded from other origins: {watched.foreign}"
    assert watched.script_errors == [], f"uncaught errors in the page: {watched.script_errors}"


def test_the_page_shows_the_api_from_the_service_alone(
    api_page: Watched, server: str, artifacts: Path
) -> None:
    page = api_page.page
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert set(ENDPOINTS) <= {path.strip().replace("\u200b", "") for path in paths}
    loaded = {url.removeprefix(server) for url in api_page.requested}
    assert {"/", "/docs.json", "/static_content/swagger-ui-bundle.js", "/ui/api.js"} <= loaded
    page.screenshot(path=str(artifacts / "api_page.png"), full_page=False)
    # the fixture's teardown asserts that nothing came from another origin


def test_an_endpoint_tried_from_the_page_answers(api_page: Watched) -> None:
    page = api_page.page
    operation = page.locator(
        ".opblock", has=page.locator(".opblock-summary-path", has_text="/model_info")
    )
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_have_text("200")
    expect(operation.locator(".live-responses-table .microlight").first).to_contain_text(
        "bentoml_tag"
    )


def test_the_page_links_to_the_draw_a_digit_page(api_page: Watched, server: str) -> None:
    link = api_page.page.get_by_role("link", name="Draw a digit or upload a photo")
    expect(link).to_be_visible()
    link.click()
    api_page.page.wait_for_url(f"{server}/ui/")
    expect(api_page.page.locator("#pad")).to_be_visible()
