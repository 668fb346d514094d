"""``edgecv serve BUNDLE --ray``: the same FastAPI app as a Ray Serve deployment, N replicas.

Each replica builds the app with :func:`edgecv.serve.app.create_app` (same routes, errors, batching, metrics)
through a builder passed to ``@serve.ingress``: the predictor holds a runtime session, which cannot be pickled, so
it is loaded in the replica, not in the driver. The driver resolves ``--artifact auto`` once (same rule as
``edgecv serve``) and every replica loads that one artifact (sha256-verified again there). Every response of a
replica carries ``X-Edgecv-Replica`` (Ray's replica id) and ``X-Edgecv-Pid``, so a client can see the spread.

Ray is an optional extra (``ray[serve]``): it is imported only here, only under ``--ray``.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from edgecv.errors import UserError
from edgecv.serve.app import ServeConfig, create_app
from edgecv.serve.predictor import load_predictor
from edgecv.serve.server import bind_warning

APP_NAME = "edgecv"
# a private local instance serves HTTP only (no large objects): a small object store, not 30 % of the RAM
OBJECT_STORE_BYTES = 256 * 1024 * 1024
REPLICA_HEADER, PID_HEADER = "X-Edgecv-Replica", "X-Edgecv-Pid"


def _import_ray():
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise UserError(f"--ray needs Ray Serve: pip install 'ray[serve]' ({e})") from None
    return ray, serve


def app_builder(bundle: str, artifact: str, threads: int | None, cfg: ServeConfig, selection: dict):
    """A function (run in each replica) returning the FastAPI app for one artifact of ``bundle``."""

    def build():
        from ray import serve

        pred = load_predictor(bundle, artifact=artifact, threads=threads)
        pred.selection = selection  # the driver's choice, not "explicit"
        app = create_app(pred, cfg)
        try:
            rid = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (not expected): the pid still tells them apart
            rid = "unknown"
        pid = str(os.getpid())

        @app.middleware("http")
        async def tag(request, call_next):
            resp = await call_next(request)
            resp.headers[REPLICA_HEADER], resp.headers[PID_HEADER] = rid, pid
            return resp

        return app

    return build


def deployment(bundle: str, artifact: str, threads: int | None, cfg: ServeConfig, selection: dict,
               replicas: int):
    """The bound Ray Serve application: ``replicas`` copies of the edgecv app behind Ray's HTTP proxy."""
    _, serve = _import_ray()

    @serve.deployment(name="EdgecvServe", num_replicas=replicas,
                      ray_actor_options={"num_cpus": threads or 1},
                      # let the app's own admission (503 + Retry-After) and batcher see the requests
                      max_ongoing_requests=cfg.max_queue, max_queued_requests=cfg.max_queue * replicas)
    @serve.ingress(app_builder(bundle, artifact, threads, cfg, selection))
    class EdgecvServe:
        pass

    return EdgecvServe.bind()


def serve_ray(bundle: str | Path, cfg: ServeConfig, artifact: str = "auto", threads: int | None = None,
              bench_json: str | None = None, replicas: int = 1, address: str | None = None,
              host: str = "127.0.0.1", port: int = 8000, log=print) -> None:
    """Run until SIGTERM / Ctrl-C, then delete the application (and stop the local Ray instance we started)."""
    ray, serve = _import_ray()
    warn = bind_warning(host, cfg.api_key)
    if warn:
        log(warn)
    bundle = str(Path(bundle).resolve())
    # resolve the artifact once, here: every replica serves the same one; bad bundles fail before Ray starts
    probe = load_predictor(bundle, artifact=artifact, threads=threads, bench_json=bench_json, log=log)
    name, selection, desc = probe.entry.name, probe.selection, probe.describe()
    probe.close()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    local = address is None
    if local:  # a private single-node instance, stopped on exit
        # Ray's CPUs are logical: enough for every replica even on a small machine (else they wait forever)
        ncpu = max(os.cpu_count() or 1, replicas * (threads or 1))
        ray.init(num_cpus=ncpu, include_dashboard=False, log_to_driver=False,
                 object_store_memory=OBJECT_STORE_BYTES)
    else:
        ray.init(address=address, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init: Ray installs its own SIGTERM handler
        signal.signal(sig, lambda s, f: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(bundle, name, threads, cfg, selection, replicas),
                  name=APP_NAME, route_prefix="/")
        log(f"serving {name} ({desc['runtime']}, sha256 {str(desc['sha256'])[:12]}) as '{cfg.model_name}' with "
            f"{replicas} Ray Serve replica(s) on http://{host}:{port} (docs at /docs)")
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        finally:
            ray.shutdown()
