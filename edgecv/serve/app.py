"""The FastAPI app: ``POST /predict``, the Open Inference Protocol (v2) endpoints and ``GET /metrics``.

Every client error is a 4xx with ``{"error": ...}``; a runtime failure is a 500 with the same shape and the
server keeps serving. Decoding and inference run off the event loop (thread pool + the batcher's thread).
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
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecv import __version__
from edgecv.data.decode import ImageError
from edgecv.serve import v2
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


def _error(status: int, msg: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` (from Content-Length, else while streaming)."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            if int(cl) > limit:
                raise ClientError(413, f"body of {cl} bytes exceeds the limit of {limit}")
        except ValueError:
            raise ClientError(400, f"bad Content-Length {cl!r}") from None
    chunks, n = [], 0
    async for c in request.stream():
        n += len(c)
        if n > limit:
            raise ClientError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(c)
    body = b"".join(chunks)
    request._body = body  # starlette's form parser reads the cached body
    return body


def create_app(predictor: Predictor, cfg: ServeConfig) -> FastAPI:
    metrics = Metrics()
    batcher = Batcher(predictor.logits, cfg.max_batch, cfg.max_delay_ms, cfg.max_queue,
                      on_batch=lambda n, s: metrics.batch_size.observe(n))
    metrics.queue_depth.set_function(lambda: batcher.depth)
    metrics.model_load.set(predictor.load_s)
    desc = predictor.describe()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        app.state.ready = True
        yield
        app.state.ready = False
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="edgecv serve", version=__version__, lifespan=lifespan,
                  description=f"Image classification with {desc['artifact']} ({desc['runtime']}).")
    app.state.ready = False
    app.state.batcher = batcher

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t = time.perf_counter()
        path = request.url.path
        if cfg.api_key and path not in OPEN_PATHS:
            auth = request.headers.get("authorization", "")
            key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
            if not hmac.compare_digest(key.encode(), cfg.api_key.encode()):
                resp = _error(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)")
                metrics.record("unauthorized", 401, time.perf_counter() - t)  # no raw path: bounded labels
                return resp
        resp = await call_next(request)
        route = request.scope.get("route")
        metrics.record(getattr(route, "path", "unmatched"), resp.status_code, time.perf_counter() - t)
        return resp

    @app.exception_handler(ClientError)
    async def _client_error(request, e: ClientError):
        return _error(e.status, str(e))

    @app.exception_handler(ImageError)
    async def _bad_image(request, e: ImageError):
        return _error(400, str(e))

    @app.exception_handler(QueueFull)
    async def _full(request, e: QueueFull):
        return _error(503, f"server busy: {e}", {"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):  # a bug, not the client's fault: still one JSON line
        return _error(500, f"internal error: {type(e).__name__}: {e}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return _error(400, "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in e.errors()))

    inflight = [0]  # requests inside /predict and /infer (one event loop: no lock needed)

    @contextmanager
    def admitted():
        """Refuse (503) at arrival when ``max_queue`` requests are already in progress: requests waiting for
        decoding count too, not only rows in the batcher."""
        if inflight[0] >= cfg.max_queue:
            raise QueueFull(f"{inflight[0]} requests in progress (max {cfg.max_queue})")
        inflight[0] += 1
        try:
            yield
        finally:
            inflight[0] -= 1

    async def infer_rows(request: Request, x: np.ndarray) -> np.ndarray:
        if await request.is_disconnected():  # the client gave up (timeout): do not spend the runner on it
            raise ClientError(499, "client disconnected before inference")
        try:
            return await batcher.submit(x)
        except QueueFull:
            raise
        except Exception as e:  # noqa: BLE001 - runtime failure: 500 JSON, the server keeps serving
            raise _RuntimeFailure(f"runtime failure in {desc['artifact']}: {type(e).__name__}: {e}") from e

    @app.exception_handler(_RuntimeFailure)
    async def _failure(request, e: _RuntimeFailure):
        return _error(500, str(e))

    async def decode_all(items: list[tuple[str, bytes]]) -> np.ndarray:
        if not items:
            raise ClientError(400, "no image in the request (multipart file fields, or a raw image body)")
        if len(items) > cfg.max_queue:
            raise ClientError(413, f"{len(items)} images in one request; at most {cfg.max_queue}")

        def work():
            return np.stack([predictor.decode(b, cfg.max_pixels, name=n) for n, b in items])

        return await asyncio.to_thread(work)

    @app.post("/predict", summary="Classify one or more images (multipart files or a raw image body)")
    async def predict(request: Request, topk: int | None = None):
        with admitted():
            t = time.perf_counter()
            k = cfg.topk if topk is None else topk
            if not 1 <= k <= 1000:
                raise ClientError(400, f"topk must be 1..1000, got {k}")
            body = await _read_body(request, cfg.max_body_bytes)
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("multipart/form-data"):
                try:
                    form = await request.form(max_files=cfg.max_queue + 1)
                except Exception as e:  # noqa: BLE001 - malformed multipart, or past max_files
                    if "too many files" in str(e).lower():
                        raise ClientError(413, f"more than {cfg.max_queue} images in one request") from None
                    raise ClientError(400, f"malformed multipart body: {getattr(e, 'detail', e)}") from None
                items = [(f.filename or key, await f.read()) for key, f in form.multi_items() if hasattr(f, "read")]
            else:
                items = [("request body", body)] if body else []
            x = await decode_all(items)
            res = predictor.results(await infer_rows(request, x), k)
            for (name, _), r in zip(items, res, strict=True):
                r["file"] = name
            return {"predictions": res, "artifact": desc["artifact"], "sha256": desc["sha256"],
                    "runtime": desc["runtime"], "latency_ms": round((time.perf_counter() - t) * 1e3, 3)}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not app.state.ready:
            return _error(503, "not ready")
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "edgecv", "version": __version__, "extensions": ["binary_tensor_data"]}

    def check_model(name: str, version: str | None = None) -> None:
        if name != cfg.model_name or version not in (None, "", "1"):
            raise ClientError(404, f"unknown model '{name}'" + (f" version {version}" if version else "")
                              + f" (serving '{cfg.model_name}' version 1)")

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        check_model(name, version)
        return v2.metadata(cfg.model_name, desc["runtime"], predictor.input_shape, predictor.num_classes)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        check_model(name, version)
        return await ready()

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        with admitted():
            check_model(name, version)
            body = await _read_body(request, cfg.max_body_bytes)
            req, (kind, data) = v2.parse_infer(body, request.headers.get("inference-header-content-length"),
                                               predictor.input_shape, cfg.max_queue)
            x = data if kind == "fp32" else await decode_all([(f"image[{i}]", b) for i, b in enumerate(data)])
            payload, headers = v2.encode_response(req, cfg.model_name, await infer_rows(request, x))
            return Response(payload, headers=headers)

    @app.get("/metrics")
    async def prom():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/info")
    async def info():
        return {**desc, "model_name": cfg.model_name, "max_batch": cfg.max_batch, "max_delay_ms": cfg.max_delay_ms,
                "max_queue": cfg.max_queue}

    return app


class _RuntimeFailure(Exception):
    pass
