"""Triton's HTTP extensions beyond the core Open Inference Protocol: model configuration, model repository
(index) and statistics, answered as Triton answers them so that clients and dashboards written for Triton work.

The served model is fixed at start: the repository holds that one model, and load/unload answer 501, as Triton
answers an unsupported request.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from edgecv.serve import v2
from edgecv.serve.app import Service, error
from edgecv.serve.v2 import ClientError

router = APIRouter(tags=["Triton extensions"])
EXTENSIONS = ("model_configuration", "model_repository", "statistics")


def _svc(request: Request) -> Service:
    return request.app.state.svc


@router.get("/v2/models/{name}/config")
@router.get("/v2/models/{name}/versions/{version}/config")
async def model_config(name: str, request: Request, version: str | None = None):
    svc = _svc(request)
    svc.check_model(name, version)
    p, c, d = svc.predictor, svc.cfg, svc.desc
    return v2.model_config(c.model_name, d["runtime"], p.input_shape, p.num_classes, max_rows=c.max_queue,
                           max_batch=c.max_batch, max_delay_us=round(c.max_delay_ms * 1e3), max_queue=c.max_queue,
                           gpu=str(d["device"]).startswith(("cuda", "gpu")), model_file=d["file"],
                           parameters={"artifact": d["artifact"], "sha256": d["sha256"], "runtime": d["runtime"]})


@router.post("/v2/repository/index")
async def repository_index(request: Request):
    svc = _svc(request)
    body = await request.body()  # read by the front door already (size, deadline, Content-Encoding)
    try:
        req = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClientError(400, f"repository index request is not valid JSON ({e})") from None
    if not isinstance(req, dict) or not isinstance(req.get("ready", False), bool):
        raise ClientError(400, 'repository index request must be an object, {"ready": true|false}')
    if req.get("ready") and not svc.ready:
        return []
    state = ("READY", "") if svc.ready else ("UNAVAILABLE", "the server is shutting down")
    return [{"name": svc.cfg.model_name, "version": "1", "state": state[0], "reason": state[1]}]


@router.post("/v2/repository/models/{name}/load")
@router.post("/v2/repository/models/{name}/unload")
async def repository_load(name: str, request: Request):
    await request.body()
    return error(501, "edgecv serve serves one model, fixed at start: load and unload are not supported "
                      "(start the server with another bundle)")


@router.get("/v2/models/stats")
@router.get("/v2/models/{name}/stats")
@router.get("/v2/models/{name}/versions/{version}/stats")
async def statistics(request: Request, name: str | None = None, version: str | None = None):
    svc = _svc(request)
    if name is not None:
        svc.check_model(name, version)
    return {"model_stats": [svc.stats.to_json(svc.cfg.model_name)]}
