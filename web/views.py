"""The pages (`/view/*`) and the static files they use, all served by the app itself.

JavaScript libraries come from `node_modules/` (installed from package-lock.json by `make deps`),
so the pages work with no internet.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from common.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
PAGES = WEB_DIR / "pages"
STATIC = WEB_DIR / "static"
VENDOR = {"lightweight-charts": PROJECT_ROOT / "node_modules" / "lightweight-charts" / "dist"}

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


def mount_pages(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for name, directory in VENDOR.items():
        if not directory.is_dir():
            log.warning("%s is missing: run `make deps` (npm ci) so the pages can load %s", directory, name)
        app.mount(f"/vendor/{name}", StaticFiles(directory=directory, check_dir=False), name=f"vendor-{name}")
