"""The FastAPI app: ``POST /predict``, the Open Inference Protocol (v2) endpoints and ``GET /metrics``.

Every client error is a 4xx with ``{"error": ...}``; a runtime failure is a 500 with the same shape and the
server keeps serving. Decoding and inference run off the event loop (thread pool + the batcher's thread).
The routes live in :mod:`edgecv.serve.routes`; they reach the :class:`Service` through ``app.state.svc``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecv import __version__
from edgecv.data.decode import ImageError
from edgecv.serve.batcher import Batcher, QueueFull
from edgecv.serve.metrics import Metrics
from edgecv.serve.predictor import Predictor
from edgecv.serve.v2 import ClientError

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json")  # no API key needed


@dataclass
class ServeConfig:
    max_batch: int = 8
    max_delay_ms: float = 2.0
    max_queue: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int | None = None  # None: edgecv.data.decode.DEFAULT_MAX_PIXELS
    api_key: str | None = None
    model_name: str = "edgecv"
    topk: int = 5


class RuntimeFailure(Exception):
    """The runner raised: 500 for the requests of that batch."""


def error(status: int, msg: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


class Service:
    """What the routes share: predictor, config, batcher, metrics, readiness and the admission count."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig):
        self.predictor, self.cfg = predictor, cfg
        self.metrics = Metrics()
        self.batcher = Batcher(predictor.logits, cfg.max_batch, cfg.max_delay_ms, cfg.max_queue,
                               on_batch=lambda n, s: self.metrics.batch_size.observe(n))
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.metrics.model_load.set(predictor.load_s)
        self.desc = predictor.describe()
        self.ready = False
        self.inflight = 0  # requests inside /predict and /infer (one event loop: no lock needed)

    @contextmanager
    def admitted(self):
        """Refuse (503) at arrival when ``max_queue`` requests are already in progress: requests waiting for
        decoding count too, not only rows in the batcher."""
        if self.inflight >= self.cfg.max_queue:
            raise QueueFull(f"{self.inflight} requests in progress (max {self.cfg.max_queue})")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def read_body(self, request: Request) -> bytes:
        """The request body, refused with 413 beyond the limit (from Content-Length, else while streaming)."""
        limit = self.cfg.max_body_bytes
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                too_big = int(cl) > limit
            except ValueError:
                raise ClientError(400, f"bad Content-Length {cl!r}") from None
            if too_big:
                raise ClientError(413, f"body of {cl} bytes exceeds the limit of {limit}")
        chunks, n = [], 0
        async for c in request.stream():
            n += len(c)
            if n > limit:
                raise ClientError(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(c)
        body = b"".join(chunks)
        request._body = body  # starlette's form parser reads the cached body
        return body

    async def decode_all(self, items: list[tuple[str, bytes]]) -> np.ndarray:
        if not items:
            raise ClientError(400, "no image in the request (multipart file fields, or a raw image body)")
        if len(items) > self.cfg.max_queue:
            raise ClientError(413, f"{len(items)} images in one request; at most {self.cfg.max_queue}")

        def work():
            return np.stack([self.predictor.decode(b, self.cfg.max_pixels, name=n) for n, b in items])

        return await asyncio.to_thread(work)

    async def infer_rows(self, request: Request, x: np.ndarray) -> np.ndarray:
        if await request.is_disconnected():  # the client gave up (timeout): do not spend the runner on it
            raise ClientError(499, "client disconnected before inference")
        try:
            return await self.batcher.submit(x)
        except QueueFull:
            raise
        except Exception as e:  # noqa: BLE001 - runtime failure: 500 JSON, the server keeps serving
            raise RuntimeFailure(f"runtime failure in {self.desc['artifact']}: {type(e).__name__}: {e}") from e

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.cfg.model_name or version not in (None, "", "1"):
            raise ClientError(404, f"unknown model '{name}'" + (f" version {version}" if version else "")
                              + f" (serving '{self.cfg.model_name}' version 1)")

    def authorized(self, request: Request) -> bool:
        if not self.cfg.api_key or request.url.path in OPEN_PATHS:
            return True
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        return hmac.compare_digest(key.encode(), self.cfg.api_key.encode())


def _install_errors(app: FastAPI) -> None:
    def on(exc, status=None, prefix="", headers=None):
        async def handler(request, e):
            return error(status or getattr(e, "status", 500), f"{prefix}{e}", headers)

        app.add_exception_handler(exc, handler)

    on(ClientError)
    on(ImageError, 400)
    on(QueueFull, 503, "server busy: ", {"Retry-After": "1"})
    on(RuntimeFailure, 500)

    async def http(request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail), getattr(e, "headers", None))

    async def invalid(request, e: RequestValidationError):
        return error(400, "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in e.errors()))

    async def unexpected(request, e: Exception):  # a bug, not the client's fault: still one JSON line
        return error(500, f"internal error: {type(e).__name__}: {e}")

    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)


def create_app(predictor: Predictor, cfg: ServeConfig) -> FastAPI:
    from edgecv.serve.routes import router

    svc = Service(predictor, cfg)

    @asynccontextmanager
    async def lifespan(app):
        svc.batcher.start()
        svc.ready = True
        yield
        svc.ready = False
        await asyncio.to_thread(svc.batcher.stop)

    app = FastAPI(title="edgecv serve", version=__version__, lifespan=lifespan,
                  description=f"Image classification with {svc.desc['artifact']} ({svc.desc['runtime']}).")
    app.state.svc = svc

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t = time.perf_counter()
        if not svc.authorized(request):
            svc.metrics.record("unauthorized", 401, time.perf_counter() - t)  # no raw path: bounded labels
            return error(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)")
        resp = await call_next(request)
        route = request.scope.get("route")
        svc.metrics.record(getattr(route, "path", "unmatched"), resp.status_code, time.perf_counter() - t)
        return resp

    _install_errors(app)
    app.include_router(router)
    return app
