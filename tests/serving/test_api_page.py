"""The API page at / (serving/ui.py's ApiPage, serving/static/api.html), through the
service's ASGI app: it links the draw-a-digit page, every URL it loads is the service's
own and answers, and a Content-Security-Policy holds it there. Its rendering in Chromium:
tests/browser/test_api_page.py."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from serving.ui import API_PAGE

BASE = "http://testserver/"  # TestClient's origin


class References(HTMLParser):
    """Every URL the page names, by tag: (tag, attribute, value), and inline scripts."""

    URL_ATTRIBUTES = frozenset({"src", "href", "action", "data", "poster", "srcset", "formaction"})

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.inline_scripts = 0
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES and value is not None:
                self.urls.append((tag, name, value))
            if tag == "meta" and name == "http-equiv" and (value or "").lower() == "refresh":
                self.urls.append((tag, name, dict(attrs).get("content") or ""))
        self._in_script_without_src = tag == "script" and "src" not in dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._in_script_without_src and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script_without_src = False


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def page(client: Any) -> Any:
    response = client.get("/")
    assert response.status_code == 200, response.text
    return response


def test_root_answers_with_our_page_not_bentomls(page: Any) -> None:
    assert page.headers["content-type"].startswith("text/html")
    assert page.content == API_PAGE.read_bytes()
    assert "googletagmanager.com" not in page.text and "github.com" not in page.text


def test_the_page_links_the_draw_a_digit_page(page: Any) -> None:
    links = [urljoin(BASE, value) for tag, _, value in references(page.text).urls if tag == "a"]
    assert urljoin(BASE, "/ui/") in links


def test_everything_the_page_names_is_the_services_own_and_answers(page: Any, client: Any) -> None:
    found = references(page.text)
    assert found.inline_scripts == 0
    assert {tag for tag, _, _ in found.urls} >= {"script", "link", "a"}
    foreign = [
        value for _, _, value in found.urls if urlsplit(urljoin(BASE, value)).netloc != "testserver"
    ]
    assert not foreign, f"the page names other origins: {foreign}"
    for tag, _, value in found.urls:
        if tag in {"script", "link"}:  # what the browser loads with the page
            path = urlsplit(urljoin(BASE, value)).path
            assert client.get(path).status_code == 200, path


def test_the_page_is_held_to_its_own_origin(page: Any, client: Any) -> None:
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src" not in policy  # scripts: 'self'
    assert page.headers["x-content-type-options"] == "nosniff"
    head = client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-security-policy"] == policy


def test_the_page_is_served_at_root_only(client: Any) -> None:
    assert client.get("/ui/api.html").status_code == 404  # its relative links need /
    assert client.post("/", content=b"").status_code != 200
