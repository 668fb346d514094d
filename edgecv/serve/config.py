"""The HTTP service's configuration (:class:`ServeConfig`), declared once: each field carries its kind, range and
help (edgecv.options), from which ``edgecv serve`` generates its flags; the fields the command takes in other units
or by another name (MB, an environment variable) are API-only with the flag that sets them.

:class:`PredictConfig`: how ``edgecv predict`` (and ``edgecv.predict``) opens a bundle and classifies images;
``edgecv serve`` opens its bundle the same way and takes ``--artifact``, ``--bench-json`` and ``--threads`` from
its fields."""

from __future__ import annotations

from dataclasses import dataclass

from edgecv.options import check_fields, option
from edgecv.serve import limits


@dataclass
class ServeConfig:
    max_batch: int = option(8, kind=int, lo=1, hi=1024,
                            help="Dynamic batching: at most this many images per runner call (1 = no batching).")
    max_delay_ms: float = option(2.0, kind=float, lo=0, hi=10_000,
                                 help="Dynamic batching: how long the oldest request may wait for others.")
    max_queue: int = option(64, kind=int, lo=1, hi=1_000_000,
                            help="Images waiting at most; beyond it requests get 503 + Retry-After.")
    # refuse (503) while max_batch or more requests are in progress and the oldest has been in the server longer
    # than this: under overload the answered requests then take about this long instead of max_queue / throughput;
    # None: the count bound only
    max_wait_ms: float | None = option(
        None, kind=float, lo=0, lo_open=True, optional=True,
        help="Also answer 503 while --max-batch or more requests are in progress and the oldest has been in "
             "the server longer than this: under overload the answered requests then take about this long "
             "(default: the --max-queue bound only).")
    # availability limits (defaults: edgecv.serve.limits); the connection ones act in uvicorn's protocol
    # (edgecv.serve.conn), the others in the app
    body_timeout_s: float = option(
        limits.BODY_TIMEOUT_S, kind=float, lo=0, lo_open=True,
        help="The whole body must arrive within this after the headers (408 and close beyond); a request "
             "counts against --max-queue only once its body is in.")
    header_timeout_s: float = option(
        limits.HEADER_TIMEOUT_S, kind=float, lo=0, lo_open=True,
        help="A request's headers must be complete within this after its first byte (408 and close beyond).")
    keep_alive_s: float = option(
        limits.KEEP_ALIVE_S, kind=float, lo=0, lo_open=True,
        help="Close a connection that sends nothing for this long (before its first request or between two).")
    max_connections: int = option(limits.MAX_CONNECTIONS, kind=int, lo=1, hi=1_000_000,
                                  help="Open connections at most; a new one beyond it closes the longest-idle one.")
    model_name: str = option("edgecv", help="Model name on the v2 endpoints.")
    max_body_bytes: int = option(  # on the wire and after Content-Encoding is decoded
        32 * 1024 * 1024, kind=int, lo=1, api_only="the command takes it in MB: --max-body-mb")
    max_pixels: int | None = option(  # None: edgecv.data.decode.DEFAULT_MAX_PIXELS
        None, kind=int, lo=1, optional=True, api_only="a decoded image's pixel cap; the default suits the service")
    max_decode_bytes: int = option(int(limits.MAX_DECODE_MB * 1024 * 1024), kind=int, lo=1,
                                   api_only="the command takes it in MB: --max-decode-mb")
    api_key: str | None = option(None, optional=True,
                                 api_only="the command reads it from an environment variable: --api-key-env")
    topk: int = option(5, kind=int, lo=1, api_only="labels per answer of /predict (a request may ask for fewer)")

    def validate(self) -> None:
        """Kinds and ranges of every value (the flags' own); UserError (exit 2) naming the first bad one."""
        check_fields(self)


@dataclass
class PredictConfig:
    """Every option of ``edgecv predict``, in the order its --help lists them."""

    artifact: str = option(
        "auto", help="'auto' (fastest validated artifact here, the bench rule) or format-precision, e.g. onnx-int8.")
    bench_json: str | None = option(
        None, optional=True, path="file", exists=True,
        help="With --artifact auto: take the recommendation of this 'edgecv bench --json' result.")
    topk: int = option(5, kind=int, lo=1, hi=1000)
    batch_size: int = option(32, kind=int, lo=1, hi=4096)
    threads: int | None = option(None, kind=int, lo=1, hi=256, optional=True,
                                 help="Runtime threads (default: runtime's).")
    skip_bad: bool = option(
        False, kind=bool,
        help="Unreadable images, folders that cannot be listed and named folders with no image are listed on "
             "stderr but do not make the exit code 2.")

    def validate(self) -> None:
        """Kinds and ranges of every value (the flags' own); UserError (exit 2) naming the first bad one."""
        check_fields(self)
