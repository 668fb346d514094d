"""The FastAPI app: ``POST /predict``, the Open Inference Protocol (v2) endpoints and ``GET /metrics``.

Every client error is a 4xx with ``{"error": ...}``; a runtime failure is a 500 with the same shape and the
server keeps serving. Decoding and inference run off the event loop (thread pool + the batcher's thread).
The routes live in :mod:`edgecv.serve.routes`; they reach the :class:`Service` through ``app.state.svc``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecv import __version__
from edgecv.data.decode import ImageError
from edgecv.serve.batcher import Batcher, BatchRun, QueueFull
from edgecv.serve.body import BodyError, Disconnected, has_body, read_body
from edgecv.serve.config import ServeConfig
from edgecv.serve.limits import DecodeBudget, DecodeBusy, DecodeTooLarge
from edgecv.serve.metrics import Metrics, endpoint_label
from edgecv.serve.predictor import Predictor
from edgecv.serve.stats import SCOPE_KEY, ModelStats, RequestTimes
from edgecv.serve.v2 import ClientError

# bodies up to this size are decoded on the event loop (a small JPEG decodes and resizes in well under a
# millisecond); larger ones in a worker thread, so a big photo never stalls the other connections
INLINE_DECODE_BYTES = 16 * 1024
DOCS_ASSETS = "/docs/assets"  # Swagger UI's script and CSS, served from the package (fastapi-offline)
# no API key needed: the probes and the pages (the try-it page asks for the key when /predict needs one)
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/", "/docs", "/docs/oauth2-redirect", "/redoc",
              "/openapi.json")
log = logging.getLogger("uvicorn.error")  # uvicorn's own log: its format and --quiet apply


class RuntimeFailure(Exception):
    """The runner raised: 500 for the requests of that batch."""


def error(status: int, msg: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


class Service:
    """What the routes share: predictor, config, batcher, metrics, readiness and the admission count."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig):
        cfg.validate()  # the flags' checks, for the Python API too
        self.predictor, self.cfg = predictor, cfg
        self.metrics = Metrics()
        self.stats = ModelStats()  # Triton's statistics extension
        self.route_paths: dict = {}  # endpoint -> path of the routes that carry no template (set by create_app)
        self.batcher = Batcher(predictor.logits, cfg.max_batch, cfg.max_delay_ms, cfg.max_queue,
                               on_batch=self._on_batch)
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.metrics.model_load.set(predictor.load_s)
        self.desc = predictor.describe()
        self.ready = False
        # requests inside /predict and /infer, counted by :class:`Guard` (one event loop: no lock needed); at
        # ``max_queue`` more are refused with 503 at arrival: requests waiting for decoding count, not only rows
        # in the batcher
        self.inflight = 0
        self._arrivals: dict[int, float] = {}  # request in progress -> arrival time; oldest first (insertion order)
        self.budget = DecodeBudget(cfg.max_decode_bytes)

    def _on_batch(self, run: BatchRun) -> None:
        self.metrics.batch_size.observe(run.rows)
        self.stats.batch(run)

    async def decode_all(self, items: list[tuple[str, bytes]]) -> np.ndarray:
        if not items:
            raise ClientError(400, "no image in the request (multipart file fields, or a raw image body)")
        if len(items) > self.cfg.max_queue:
            raise ClientError(413, f"{len(items)} images in one request; at most {self.cfg.max_queue}")
        p, mp = self.predictor, self.cfg.max_pixels

        def work():
            rows = []
            for n, b in items:  # each image holds its share of the decode budget while it is decoded
                with self.budget.hold(p.decode_cost(b, mp, name=n)):
                    rows.append(p.decode(b, mp, name=n))
            return np.stack(rows)

        if sum(len(b) for _, b in items) <= INLINE_DECODE_BYTES:
            return work()  # a thread hop costs more than decoding a thumbnail; the event loop blocks < ~0.2 ms
        return await asyncio.to_thread(work)

    async def infer_rows(self, request: Request, x: np.ndarray) -> np.ndarray:
        if await request.is_disconnected():  # the client gave up (timeout): do not spend the runner on it
            raise ClientError(499, "client disconnected before inference")
        times: RequestTimes | None = request.scope.get(SCOPE_KEY)
        if times is not None:
            times.submitted = time.perf_counter()
        try:
            out = await self.batcher.submit(x)
            if times is not None:
                times.result = time.perf_counter()
            return out
        except QueueFull:
            raise
        except Exception as e:  # noqa: BLE001 - runtime failure: 500 JSON, the server keeps serving
            raise RuntimeFailure(f"runtime failure in {self.desc['artifact']}: {type(e).__name__}: {e}") from e

    def admit(self, key: int, now: float) -> bool:
        """Take request ``key`` (arrived ``now``), or refuse it (503): ``max_queue`` in progress, or at least a
        full batch (``max_batch``) in progress with the oldest of them inside for longer than ``max_wait_ms``: a
        deep queue that no longer drains in time. A short queue that is slow for a moment (a pause of the
        process) is not overload, and refusing would not shorten it."""
        if self.inflight >= self.cfg.max_queue:
            return False
        if self.cfg.max_wait_ms is not None and self.inflight >= self.cfg.max_batch:
            if (now - next(iter(self._arrivals.values()))) * 1e3 > self.cfg.max_wait_ms:
                return False
        self._arrivals[key] = now
        self.inflight += 1
        return True

    def done(self, key: int) -> None:
        del self._arrivals[key]
        self.inflight -= 1

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.cfg.model_name or version not in (None, "", "1"):
            raise ClientError(404, f"unknown model '{name}'" + (f" version {version}" if version else "")
                              + f" (serving '{self.cfg.model_name}' version 1)")

    def serves(self, path: str) -> bool:
        """Whether a POST to ``path`` is an inference request for the served model (its statistics count it)."""
        if path == "/predict":
            return True
        parts = path.split("/")  # "", "v2", "models", NAME, ["versions", VERSION,] "infer"
        if len(parts) not in (5, 7) or parts[1:3] != ["v2", "models"] or parts[-1] != "infer":
            return False
        try:
            self.check_model(parts[3], parts[5] if len(parts) == 7 and parts[4] == "versions" else None)
        except ClientError:
            return False
        return len(parts) == 5 or parts[4] == "versions"

    def authorized(self, path: str, headers: Headers) -> bool:
        if not self.cfg.api_key or path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/"):
            return True
        auth = headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
        return hmac.compare_digest(key.encode(), self.cfg.api_key.encode())


def _install_errors(app: FastAPI) -> None:
    def on(exc, status=None, prefix="", headers=None):
        async def handler(request, e):
            return error(status or getattr(e, "status", 500), f"{prefix}{e}", headers)

        app.add_exception_handler(exc, handler)

    on(ClientError)
    on(ImageError, 400)
    on(QueueFull, 503, "server busy: ", {"Retry-After": "1"})
    on(DecodeBusy, 503, "server busy: ", {"Retry-After": "1"})
    on(DecodeTooLarge, 413)
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


_INFER_SUFFIXES = ("/predict", "/infer")


def _endpoint(scope, counted: bool, route_paths: dict) -> str:
    """Bounded metric label: the route's (:func:`~edgecv.serve.metrics.endpoint_label`); for an inference request
    answered before routing (refused, a bad body), the template its path has."""
    label = endpoint_label(scope, route_paths)
    if label != "unmatched" or not counted:
        return label
    return "/predict" if scope["path"] == "/predict" else "/v2/models/{name}/infer"


def _replay(scope, receive, headers: dict[bytes, bytes], body: bytes):
    """``(scope, receive)`` for the app: the body (decoded) in one message, then the connection's own events (a
    disconnect). A decoded body loses its Content-Encoding and gets its own Content-Length."""
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    if b"content-encoding" in headers:
        kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        scope = {**scope, "headers": [*kept, (b"content-length", str(len(body)).encode())]}
    return scope, again


class Guard:
    """Pure ASGI front door (no per-request task or stream wrapper as ``BaseHTTPMiddleware`` has): the API key,
    the request body (size, deadline, Content-Encoding), admission, the request metrics and the last-resort 500.

    The body is read here, to its end, before admission: a client that stalls mid-body holds no admission slot
    and gets 408 at ``body_timeout_s``. Admission then happens before routing, multipart parsing or decoding:
    under overload a refused request costs only its HTTP parsing and a small JSON 503, so the CPU keeps serving
    the admitted ones. An answer given before the body was read to its end carries ``Connection: close`` (the
    unread rest would be taken for the next request); any other answer, errors included, leaves the keep-alive
    connection usable.
    """

    def __init__(self, app, svc: Service):
        self.app, self.svc = app, svc
        # encoded once: the refusal is the hot path under overload
        why = f"{svc.cfg.max_queue} requests in progress (the maximum)"
        if svc.cfg.max_wait_ms is not None:
            why = f"{svc.cfg.max_queue} requests in progress or the oldest in the server over {svc.cfg.max_wait_ms} ms"
        self.busy = error(503, f"server busy: {why}; retry later", {"Retry-After": "1"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        svc, t, key = self.svc, time.perf_counter(), id(scope)
        headers = dict(scope["headers"])
        state = {"status": 500, "pending": has_body(headers), "started": False, "endpoint": None}
        counted = scope["method"] == "POST" and scope["path"].endswith(_INFER_SUFFIXES)
        times = RequestTimes(t) if counted and svc.serves(scope["path"]) else None  # for the model's statistics

        async def out(msg):
            nonlocal times
            if msg["type"] == "http.response.start":
                state["status"], state["started"] = msg["status"], True
                if state["pending"]:
                    msg = {**msg, "headers": [*msg.get("headers", []), (b"connection", b"close")]}
                if times is not None:  # before the answer leaves: a client that reads the statistics next sees it
                    svc.stats.request(times, 200 <= msg["status"] < 300, time.perf_counter())
                    times = None
            await send(msg)

        admitted = False
        try:
            if svc.cfg.api_key and not svc.authorized(scope["path"], Headers(scope=scope)):
                state["endpoint"] = "unauthorized"  # no raw path: bounded labels
                resp = error(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)")
                return await resp(scope, receive, out)
            if state["pending"]:
                deadline = asyncio.get_running_loop().time() + svc.cfg.body_timeout_s
                body = await read_body(receive, headers, svc.cfg.max_body_bytes, deadline)
                state["pending"] = False
                scope, receive = _replay(scope, receive, headers, body)
            if times is not None:  # compute_input starts once the body is in
                times.body_done = time.perf_counter()
                scope[SCOPE_KEY] = times
            if counted:
                if not svc.admit(key, t):
                    return await self.busy(scope, receive, out)
                admitted = True
            await self.app(scope, receive, out)
        except BodyError as e:
            state["pending"] = not e.body_read
            await error(e.status, str(e))(scope, receive, out)
        except Disconnected as e:
            state["status"] = 499
            client = scope.get("client") or ("?", 0)
            log.warning("client %s:%s disconnected during the body of %s %s (%d bytes received)", client[0],
                        client[1], scope["method"], scope["path"], e.received)
        except Exception as e:  # a bug below the routes: one JSON 500, the connection stays usable
            if state["started"]:
                raise
            log.exception("internal error in %s %s", scope["method"], scope["path"])
            await error(500, f"internal error: {type(e).__name__}: {e}")(scope, receive, out)
        finally:
            if admitted:
                svc.done(key)
            if times is not None:  # no answer started: the client left, or an exception answered outside
                svc.stats.request(times, False, time.perf_counter())
            endpoint = state["endpoint"] or _endpoint(scope, counted, svc.route_paths)
            svc.metrics.record(endpoint, state["status"], time.perf_counter() - t)


def create_app(predictor: Predictor, cfg: ServeConfig) -> FastAPI:
    from fastapi_offline import FastAPIOffline

    from edgecv.serve import pages, triton_ext
    from edgecv.serve.routes import router

    svc = Service(predictor, cfg)

    @asynccontextmanager
    async def lifespan(app):
        svc.batcher.start()
        svc.ready = True
        yield
        svc.ready = False
        await asyncio.to_thread(svc.batcher.stop)

    # /docs and /redoc with Swagger UI / ReDoc served from the package: they render without internet
    app = FastAPIOffline(title="edgecv serve", version=__version__, lifespan=lifespan, static_url=DOCS_ASSETS,
                         description=f"Image classification with {svc.desc['artifact']} ({svc.desc['runtime']}).")
    app.state.svc = svc

    app.add_middleware(Guard, svc=svc)
    _install_errors(app)
    app.include_router(triton_ext.router)  # first: /v2/models/stats before /v2/models/{name}
    app.include_router(router)
    app.include_router(pages.router)
    svc.route_paths = {r.endpoint: r.path for r in app.routes if hasattr(r, "endpoint") and hasattr(r, "path")}
    return app
