"""Run the app under uvicorn: loopback by default, a warning for a public bind without an API key, SIGTERM drains.

Connections are bounded by :mod:`edgecv.serve.conn` (timeouts, a cap that closes the longest-idle connection).
On SIGTERM (or Ctrl-C) readiness turns false, the listening socket closes (no new connections), queued and
in-flight requests are answered, then the process exits 0.
"""

from __future__ import annotations

import ipaddress
import signal
import socket

from edgecv.serve.app import ServeConfig, create_app
from edgecv.serve.conn import protocol_class
from edgecv.serve.limits import connection_cap
from edgecv.serve.predictor import Predictor


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except (OSError, ValueError):
            return False


def bind_warning(host: str, api_key: str | None) -> str | None:
    if api_key or is_loopback(host):
        return None
    return (f"warning: serving on {host} without an API key: anyone who can reach this port can use the model "
            "(pass --api-key-env VAR, or bind 127.0.0.1 behind a proxy)")


def serve(predictor: Predictor, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "warning", log=print) -> None:
    import uvicorn

    app = create_app(predictor, cfg)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.svc.ready = False
            app.state.svc.batcher.flush()  # answer what is queued now instead of waiting out --max-delay-ms
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a graceful drain is a clean exit: uvicorn would re-raise the signal
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    warn = bind_warning(host, cfg.api_key)
    if warn:
        log(warn)
    # Admission is the app's (Guard: 503 + Retry-After on the same keep-alive connection). Connections are bounded
    # by the protocol (edgecv.serve.conn: idle and header timeouts, the longest-idle connection closed at the cap),
    # not by uvicorn's limit_concurrency, which counts idle sockets too: a flood of them made every request a 503.
    cap = connection_cap(cfg.max_connections)
    if cap < cfg.max_connections:
        log(f"warning: --max-connections {cfg.max_connections} lowered to {cap} by the open-file limit (ulimit -n)")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=60, lifespan="on", limit_concurrency=None,
                            timeout_keep_alive=cfg.keep_alive_s,
                            http=protocol_class(cfg.header_timeout_s, cap))
    server = _Server(config)
    d = predictor.describe()
    log(f"serving {d['artifact']} ({d['runtime']}, sha256 {str(d['sha256'])[:12]}) as '{cfg.model_name}' "
        f"on http://{host}:{port} (docs at /docs)")
    try:
        server.run()
    finally:
        predictor.close()
