"""``GET /``: the web page (plain HTML, CSS and JavaScript under ``api/static/``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["page"])
STATIC = Path(__file__).resolve().parents[1] / "static"
INDEX = STATIC / "index.html"
FAVICON = STATIC / "favicon.svg"


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """The page's icon (an SVG) where a browser asks for it by the old name, so no request 404s."""
    return FileResponse(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
