"""The try-it page at ``/``: pick or drop an image, see the top-5 labels with their scores, the artifact, its
sha256 and the server-side latency. Plain HTML + JS shipped in the package (``static/try.html``): no CDN, no
build step. It calls ``POST /predict`` (multipart) and ``GET /info`` like any client, with the API key if one is
typed in."""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@functools.cache
def _page() -> str:
    return (resources.files("edgecv.serve") / "static" / "try.html").read_text("utf-8")


@router.get("/", include_in_schema=False)
async def try_it():
    return HTMLResponse(_page())
