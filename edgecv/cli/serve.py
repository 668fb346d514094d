"""edgecv serve: a bundle's artifact as an HTTP service (FastAPI + uvicorn).

The service's options are generated from the fields of :class:`~edgecv.serve.config.ServeConfig`; ``--artifact``,
``--bench-json`` and ``--threads`` open the bundle as ``edgecv predict`` does, from
:class:`~edgecv.serve.config.PredictConfig`'s fields. Written here by hand: where to listen (``--host``,
``--port``), the limits the command takes in other units or from the environment than the config holds
(``--max-body-mb``, ``--max-decode-mb``, ``--api-key-env``) and the Ray Serve deployment (``--ray``,
``--replicas``, ``--address``).
"""

from __future__ import annotations

import os

import click

from edgecv.cli._common import config_options, echo, field_option, log, quiet_option
from edgecv.errors import UserError
from edgecv.serve import limits as L
from edgecv.serve.config import PredictConfig, ServeConfig
from edgecv.utils import is_quiet


@click.command()
@click.argument("bundle", type=click.Path())
@field_option(PredictConfig, "artifact")  # the bundle is opened as edgecv predict opens it
@field_option(PredictConfig, "bench_json")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@config_options(ServeConfig, defaults={}, before={"body_timeout_s": [
    click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(0.001, 4096),
                 help="Largest request body, on the wire and after gzip/deflate decoding (413 beyond)."),
], "model_name": [
    click.option("--max-decode-mb", default=L.MAX_DECODE_MB, show_default=True, type=click.FloatRange(1, 1_000_000),
                 help="Decoded image memory in flight across requests (503 + Retry-After beyond it; 413 for one "
                      "image that needs more). Large JPEGs decode at reduced scale toward the model's input size."),
    field_option(PredictConfig, "threads"),
    click.option("--api-key-env", metavar="VAR", help="Require the API key held in this environment variable."),
]})
@click.option("--ray", "use_ray", is_flag=True, help="Serve as a Ray Serve deployment (needs the ray[serve] extra).")
@click.option("--replicas", default=None, type=click.IntRange(1, 1024), help="With --ray: replicas [default: 1].")
@click.option("--address", default=None, metavar="ADDR",
              help="With --ray: join this Ray cluster (e.g. 127.0.0.1:6379 or 'auto') [default: a private local one].")
@quiet_option
def serve(bundle, artifact, bench_json, host, port, max_body_mb, max_decode_mb, threads, api_key_env, use_ray, replicas,
          address, **options):
    """Serve BUNDLE over HTTP: POST /predict, the Open Inference Protocol (v2) and /metrics; OpenAPI at /docs.

    SIGTERM drains: queued and in-flight requests are answered, then exit 0. With --ray the same app runs as
    --replicas Ray Serve replicas behind Ray's HTTP proxy on --host/--port.
    """
    from edgecv.serve.predictor import load_predictor
    from edgecv.serve.server import serve as run_server

    if not use_ray and (replicas is not None or address is not None):
        raise UserError("--replicas and --address need --ray")
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UserError(f"--api-key-env {api_key_env}: the variable is not set or empty")
    cfg = ServeConfig(**options, max_body_bytes=int(max_body_mb * 1024 * 1024), api_key=key,
                      max_decode_bytes=int(max_decode_mb * 1024 * 1024))
    if use_ray:
        from edgecv.serve.ray_app import serve_ray

        serve_ray(bundle, cfg, artifact=artifact, threads=threads, bench_json=bench_json, replicas=replicas or 1,
                  address=address, host=host, port=port, log=echo)
        return 0
    pred = load_predictor(bundle, artifact=artifact, threads=threads, bench_json=bench_json, log=log)
    # --quiet: uvicorn's own warnings (e.g. one per refused connection in a flood) are silenced too
    run_server(pred, cfg, host=host, port=port, log=echo, log_level="error" if is_quiet() else "warning")
    return 0
