"""/api/docs in headless Chromium with no way out to the internet: Swagger UI's files come from the
app itself (swagger-ui-dist, pinned in package-lock.json), so the page lists the API's operations
offline. Requests for any other host are aborted and recorded, so the test also fails on a machine
that does have internet if the page tries to reach a CDN.
"""

from __future__ import annotations

import re
from urllib.request import urlopen

import pytest

from tests.conftest import service_env
from tests.support.web import chromium_page, running_web

pytestmark = pytest.mark.e2e

OPERATIONS = ["/api/ohlcvs", "/api/symbol-exchange", "/api/health", "/api/coverage"]
PAGES = ["/view/wschart", "/view/analytics/general", "/view/status"]

LOAD_IMAGE = """url => new Promise((resolve, reject) => {
  const image = new Image();
  image.onload = () => resolve([image.naturalWidth, image.naturalHeight]);
  image.onerror = () => reject(new Error(url + ' does not decode'));
  image.src = url;
})"""


def fetch(url: str) -> tuple[int, str, bytes]:
    with urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("content-type", ""), response.read()


def test_api_docs_list_the_operations_with_no_internet(settings, tmp_path):
    env = {**service_env(settings), "LOG_DIR": str(tmp_path)}
    with chromium_page(env, tmp_path / "web.log") as (base, page, errors):
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        # no internet: whatever is not the app is refused at once
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(base + "/")
                else route.abort("internetdisconnected")
            ),
        )
        page.goto(f"{base}/api/docs")

        page.wait_for_selector(".opblock", timeout=30_000)
        shown = page.eval_on_selector_all(
            ".opblock .opblock-summary-path", "els => els.map(e => e.getAttribute('data-path'))"
        )
        for path in OPERATIONS:
            assert path in shown, (path, shown)
        assert page.title() == "coin-for-rich - Swagger UI"
        # the icon decodes (a query string: with routing on, Chromium fails a bare /favicon.ico)
        assert page.evaluate(LOAD_IMAGE, f"{base}/favicon.ico?drawn") == [16, 16]
        page.screenshot(path=str(tmp_path / "docs.png"))

        outside = [u for u in requests if not u.startswith((base + "/", "data:", "blob:"))]
        assert outside == [], outside
        assert f"{base}/api/openapi.json" in requests
        assert errors == [], errors

        html = fetch(f"{base}/api/docs")[2].decode()
        urls = re.findall(r"""https?://[^\s"'<>)]+""", html)
        assert [u for u in urls if not u.startswith(base + "/")] == [], "the page names no other host"


def test_favicon_and_swagger_ui_files_are_served_by_the_app(settings):
    with running_web(settings) as base:
        status, kind, body = fetch(f"{base}/favicon.ico")
        assert status == 200 and kind.startswith("image/") and body
        for path in PAGES:
            assert '<link rel="icon" href="/favicon.ico"' in fetch(base + path)[2].decode(), path

        html = fetch(f"{base}/api/docs")[2].decode()
        for name, content_type, marker in [
            ("swagger-ui-bundle.js", "javascript", b"SwaggerUIBundle"),
            ("swagger-ui.css", "text/css", b".swagger-ui"),
        ]:
            assert f"/vendor/swagger-ui-dist/{name}" in html
            status, kind, body = fetch(f"{base}/vendor/swagger-ui-dist/{name}")
            assert status == 200 and content_type in kind and marker in body, name
        status, _, body = fetch(f"{base}/docs/oauth2-redirect")
        assert status == 200 and b"oauth2" in body
