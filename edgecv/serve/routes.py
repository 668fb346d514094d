"""The HTTP endpoints of ``edgecv serve`` (see :mod:`edgecv.serve.app` for the app, errors and admission)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from edgecv import __version__
from edgecv.serve import v2
from edgecv.serve.app import Service, error
from edgecv.serve.triton_ext import EXTENSIONS
from edgecv.serve.v2 import ClientError

router = APIRouter()


def _svc(request: Request) -> Service:
    return request.app.state.svc


async def _images(svc: Service, request: Request, body: bytes) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of every image: multipart file fields, or the raw body as one image."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [("request body", body)] if body else []
    try:
        form = await request.form(max_files=svc.cfg.max_queue + 1)
    except Exception as e:  # noqa: BLE001 - malformed multipart, or past max_files
        if "too many files" in str(e).lower():
            raise ClientError(413, f"more than {svc.cfg.max_queue} images in one request") from None
        raise ClientError(400, f"malformed multipart body: {getattr(e, 'detail', e)}") from None
    return [(f.filename or key, await f.read()) for key, f in form.multi_items() if hasattr(f, "read")]


@router.post("/predict", summary="Classify one or more images (multipart files or a raw image body)")
async def predict(request: Request, topk: int | None = None):
    svc = _svc(request)
    t = time.perf_counter()
    body = await request.body()  # read by the front door already (size, deadline, Content-Encoding)
    k = svc.cfg.topk if topk is None else topk
    if not 1 <= k <= 1000:
        raise ClientError(400, f"topk must be 1..1000, got {k}")
    items = await _images(svc, request, body)
    x = await svc.decode_all(items)
    res = svc.predictor.results(await svc.infer_rows(request, x), k)
    for (name, _), r in zip(items, res, strict=True):
        r["file"] = name
    d = svc.desc
    # a JSONResponse straight away: FastAPI would otherwise walk the nested dict through jsonable_encoder
    return JSONResponse({"predictions": res, "artifact": d["artifact"], "sha256": d["sha256"],
                         "runtime": d["runtime"], "latency_ms": round((time.perf_counter() - t) * 1e3, 3)})


@router.get("/v2/health/live")
async def live():
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request):
    return {"ready": True} if _svc(request).ready else error(503, "not ready")


@router.get("/v2")
async def server_metadata():
    return {"name": "edgecv", "version": __version__, "extensions": ["binary_tensor_data", *EXTENSIONS]}


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(name: str, request: Request, version: str | None = None):
    svc = _svc(request)
    svc.check_model(name, version)
    p = svc.predictor
    return v2.metadata(svc.cfg.model_name, svc.desc["runtime"], p.input_shape, p.num_classes)


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(name: str, request: Request, version: str | None = None):
    _svc(request).check_model(name, version)
    return await ready(request)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def infer(name: str, request: Request, version: str | None = None):
    svc = _svc(request)
    svc.check_model(name, version)
    body = await request.body()
    req, (kind, data) = v2.parse_infer(body, request.headers.get("inference-header-content-length"),
                                       svc.predictor.input_shape, svc.cfg.max_queue)
    x = data if kind == "fp32" else await svc.decode_all([(f"image[{i}]", b) for i, b in enumerate(data)])
    payload, headers = v2.encode_response(req, svc.cfg.model_name, await svc.infer_rows(request, x),
                                          svc.predictor.class_names)
    return Response(payload, headers=headers)


@router.get("/metrics")
async def prom(request: Request):
    body, ctype = _svc(request).metrics.render()
    return Response(body, media_type=ctype)


@router.get("/info")
async def info(request: Request):
    svc = _svc(request)
    c = svc.cfg
    return {**svc.desc, "model_name": c.model_name, "max_batch": c.max_batch, "max_delay_ms": c.max_delay_ms,
            "max_queue": c.max_queue}
