"""``GET /``: the web page (plain HTML, CSS and JavaScript under ``api/static/``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["page"])
INDEX = Path(__file__).resolve().parents[1] / "static" / "index.html"


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html", headers={"Cache-Control": "no-cache"})
