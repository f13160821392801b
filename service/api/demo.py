"""The demo page: GET /demo (and / → /demo), plain HTML/JS/CSS from service/static/."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.errors import NotFoundError

router = APIRouter(tags=["demo"], include_in_schema=False)
STATIC = Path(__file__).resolve().parents[1] / "static"
_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# the only files served: a fixed list, so no request path ever reaches the file system
ASSETS = {p.name: p for p in sorted(STATIC.glob("*")) if p.suffix in _MEDIA_TYPES}


def _file(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise NotFoundError(f"no demo asset {name!r}")
    return FileResponse(
        path, media_type=_MEDIA_TYPES[path.suffix], headers={"cache-control": "no-cache"}
    )


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("demo")  # relative: works behind a path prefix too


@router.get("/demo")
async def demo() -> FileResponse:
    return _file("demo.html")


@router.get("/demo/static/{name}")
async def asset(name: str) -> FileResponse:
    return _file(name)
