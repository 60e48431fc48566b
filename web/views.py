"""The pages (`/view/*`, `/api/docs`) and the static files they use, all served by the app itself.

JavaScript libraries come from `node_modules/` (installed from package-lock.json by `make deps`),
so the pages work with no internet: FastAPI's own docs page would load Swagger UI from a CDN, so
`/api/docs` is built here with the same FastAPI helper and swagger-ui-dist from `/vendor`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from common.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
PAGES = WEB_DIR / "pages"
STATIC = WEB_DIR / "static"
VENDOR = {
    "lightweight-charts": PROJECT_ROOT / "node_modules" / "lightweight-charts" / "dist",
    "swagger-ui-dist": PROJECT_ROOT / "node_modules" / "swagger-ui-dist",
}
DOCS_URL = "/api/docs"

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(PAGES / name, media_type="text/html")


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/view/wschart")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")


@router.get("/view/wschart")
async def wschart() -> FileResponse:
    return _page("wschart.html")


@router.get("/view/analytics/general")
async def analytics_general() -> FileResponse:
    return _page("analytics.html")


@router.get("/view/status")
async def status() -> FileResponse:
    return _page("status.html")


def add_docs(app: FastAPI) -> None:
    """FastAPI's Swagger UI page at DOCS_URL (the app is built with `docs_url=None`), the same as
    FastAPI's default one except that Swagger UI's files and the icon come from the app."""

    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root_path = request.scope.get("root_path", "").rstrip("/")
        vendor = f"{root_path}/vendor/swagger-ui-dist"
        oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
        return get_swagger_ui_html(
            openapi_url=root_path + (app.openapi_url or ""),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{vendor}/swagger-ui-bundle.js",
            swagger_css_url=f"{vendor}/swagger-ui.css",
            swagger_favicon_url=f"{root_path}/favicon.ico",
            oauth2_redirect_url=root_path + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_route(DOCS_URL, swagger_ui_html, include_in_schema=False)
    if app.swagger_ui_oauth2_redirect_url:
        app.add_route(app.swagger_ui_oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)


def mount_pages(app: FastAPI) -> None:
    app.include_router(router)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for name, directory in VENDOR.items():
        if not directory.is_dir():
            log.warning("%s is missing: run `make deps` (npm ci) so the pages can load %s", directory, name)
        app.mount(f"/vendor/{name}", StaticFiles(directory=directory, check_dir=False), name=f"vendor-{name}")
