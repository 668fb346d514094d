"""The public Python API: ``edgecv.train``, ``compress``, ``export``, ``bench``, ``gate``, ``predict``,
``load_predictor`` and ``serve`` (docs/api.md).

Each function is a thin layer over the library entry point its CLI command calls, with that command's defaults:
it takes the entry point's config dataclass, or keywords naming its fields, and returns the entry point's own
typed result. Bad input raises :class:`~edgecv.errors.UserError` (an unknown keyword included), a failed check
:class:`~edgecv.errors.CheckFailed` only where the function says so; nothing calls ``sys.exit``. Heavy modules
(torch, the runtimes) are imported when a function runs, so ``import edgecv`` stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecv.errors import UserError

if TYPE_CHECKING:
    from edgecv.bench.config import BenchConfig
    from edgecv.bench.gate.config import GateConfig
    from edgecv.compress.config import CompressConfig
    from edgecv.export.bundle import ExportResult
    from edgecv.export.config import ExportOptions
    from edgecv.serve.config import PredictConfig, ServeConfig
    from edgecv.serve.predictor import Predictor
    from edgecv.training.config import TrainConfig
    from edgecv.training.teacher import StartWeights, TrainOutcome

Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _config(cls: type, base: Any, options: dict[str, Any]) -> Any:
    """``base`` (or ``cls()``) with ``options`` (field name -> value) replaced; an unknown name is a UserError."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return replace(base if base is not None else cls(), **options)


def train(data: str = "digits", arch: str = "resnet18", out: str | Path = "teacher.pt",
          config: TrainConfig | None = None, *, img_size: int | None = None, start: StartWeights | None = None,
          skip_bad: bool = False, allow_duplicates: bool = False, resume: bool = False, decode_cache: str = "auto",
          log: Log = _quiet, **options) -> TrainOutcome:
    """``edgecv train``: train ``arch`` on ``data`` into the checkpoint ``out``.

    ``config`` (or keywords naming :class:`~edgecv.training.config.TrainConfig` fields: ``epochs``, ``lr``,
    ``batch_size``, ``augment``, ``balance``, ``loss``, ``device``, ``seed``...) sets the training; ``start``
    (:class:`~edgecv.training.teacher.StartWeights`) pretrained / local weights and the fine-tuning policy.
    Under torchrun every process calls it (DDP); only rank 0 writes. Returns a
    :class:`~edgecv.training.teacher.TrainOutcome` (``.to_dict()`` is ``edgecv train --json``).

    >>> res = edgecv.train("digits", "resnet18", "teacher.pt", epochs=3)
    >>> res.fit.best_top1
    """
    from edgecv import distributed as D
    from edgecv.training.config import COMMAND_DEFAULTS, TrainConfig
    from edgecv.training.teacher import train_classifier
    from edgecv.utils import check_writable

    if config is None:  # the command's defaults (tests/test_api.py compares them with its flags)
        config = TrainConfig(desc=arch, **COMMAND_DEFAULTS)
    cfg = _config(TrainConfig, config, options)
    check_writable(out)
    if cfg.tensorboard:
        check_writable(cfg.tensorboard, directory=True)
    with D.session(cfg.device):
        return train_classifier(data, arch, out, cfg, img_size=img_size, skip_bad=skip_bad, resume=resume, log=log,
                                start=start, decode_cache=decode_cache, allow_duplicates=allow_duplicates)


def compress(config: CompressConfig | None = None, *, stages: str | list[str] | None = None, resume: bool = False,
             config_file: str | Path | None = None, log: Log = _quiet,
             on_selection: Callable[[dict], None] | None = None, **options) -> dict:
    """``edgecv compress``: distil, prune and INT8-QAT a student from a teacher into ``out`` (a run directory).

    ``config`` (a :class:`~edgecv.compress.config.CompressConfig`) or keywords naming its fields (``teacher``,
    ``data``, ``student``, ``target_macs``, ``epochs_kd``, ``epochs_prune``, ``epochs_qat``, ``out``...);
    without ``config`` they are merged as the command merges its flags: the run's saved config when resuming,
    then ``config_file`` (YAML), then the keywords. ``stages``: a subset of distill, prune, quantize.
    Returns run.json's content (``edgecv compress --json``).

    >>> run = edgecv.compress(teacher="teacher.pt", data="digits", out="runs/r1", epochs_kd=2)
    >>> run["stages"]["quantize"]["val_top1"]
    """
    from edgecv import distributed as D
    from edgecv.autotune.run import compress as run_compress
    from edgecv.compress.config import CompressConfig, parse_stages, resolve_config
    from edgecv.utils import check_writable

    if config is not None and config_file is not None:
        raise UserError("give a CompressConfig or a config_file, not both")
    cfg = (_config(CompressConfig, config, options) if config is not None
           else resolve_config(options, config_file, resume))
    stage_list = parse_stages(",".join(stages) if isinstance(stages, list | tuple) else stages)
    check_writable(cfg.out, directory=True)  # before any training
    with D.session(cfg.device):
        return run_compress(cfg, stage_list, resume=resume, log=log, on_selection=on_selection)


def export(source: str | Path, out: str | Path, options: ExportOptions | None = None, *, log: Log = _quiet,
           **keywords) -> ExportResult:
    """``edgecv export``: a compress run directory or a checkpoint to a validated bundle folder ``out``.

    ``options`` (an :class:`~edgecv.export.config.ExportOptions`) or keywords naming its fields (``target``,
    ``precisions`` as a tuple or "int8,fp32", ``img_size``, ``data``, ``num_val``...). Returns an
    :class:`~edgecv.export.bundle.ExportResult`; an artifact that failed validation is named in ``.failed``
    (the command exits 1 on it), not raised.

    >>> res = edgecv.export("runs/r1", "bundle", target="x86", precisions="int8,fp32")
    >>> [(e.name, e.status) for e in res.manifest.artifacts]
    """
    from edgecv.export.bundle import export_bundle
    from edgecv.export.config import ExportOptions

    return export_bundle(source, out, _config(ExportOptions, options, keywords), log=log)


def bench(bundle: str | Path, config: BenchConfig | None = None, *, log: Log = _quiet, **options) -> dict:
    """``edgecv bench``: time every artifact of ``bundle`` through its runtime, score it on ``data``.

    ``config`` (a :class:`~edgecv.bench.config.BenchConfig`) or keywords naming its fields (``data``,
    ``target``, ``threads`` and ``batches`` as lists, ``min_time_s``, ``budget_ms``, ``max_images``...).
    Returns the bench result (``edgecv bench --json -``): ``artifacts`` rows and ``recommended``, the
    pick per target. A missed budget is in the result, not raised.

    >>> result = edgecv.bench("bundle", data="digits", min_time_s=0.5)
    >>> result["recommended"]["x86"]["name"]
    """
    from edgecv.bench.bench import run_bench
    from edgecv.bench.config import BenchConfig

    return run_bench(str(bundle), _config(BenchConfig, config, options), log=log)


def gate(baseline: str | Path, candidate: str | Path, config: GateConfig | None = None, *, log: Log = _quiet,
         **options) -> dict:
    """``edgecv gate``: measure two bundles interleaved and decide whether the candidate regressed.

    ``config`` (a :class:`~edgecv.bench.gate.config.GateConfig`) or keywords naming its fields
    (``max_latency_regression``, ``max_accuracy_drop``, ``rounds``, ``data``...). Returns the ``edgecv.gate/1``
    result; ``result["passed"]`` is the verdict (the command exits 1 when it is false).

    >>> edgecv.gate("main_bundle", "bundle", rounds=10)["passed"]
    """
    from edgecv.bench.gate import GateConfig, run_gate

    return run_gate(str(baseline), str(candidate), _config(GateConfig, config, options), log=log)


def load_predictor(source: str | Path, artifact: str = "auto", threads: int | None = None,
                   bench_json: str | Path | None = None, log: Log = _quiet) -> Predictor:
    """Open a bundle (or one artifact file of a bundle) for inference: a
    :class:`~edgecv.serve.predictor.Predictor` with ``predict_images`` / ``logits`` / ``results``; ``close()``
    it when done. ``artifact``: ``auto`` (the fastest validated artifact here, the bench rule) or
    ``format-precision``, e.g. ``onnx-int8``.

    >>> pred = edgecv.load_predictor("bundle", artifact="onnx-fp32")
    """
    from edgecv.serve.predictor import load_predictor as load

    return load(source, artifact=artifact, threads=threads, bench_json=bench_json, log=log)


def predict(source: str | Path, paths: str | Path | list[str | Path], config: PredictConfig | None = None, *,
            log: Log = _quiet, warn: Log = _quiet, **options) -> dict:
    """``edgecv predict``: classify image files, folders or glob patterns with a bundle.

    ``config`` (a :class:`~edgecv.serve.config.PredictConfig`) or keywords naming its fields (``artifact``,
    ``bench_json``, ``threads``, ``batch_size``, ``topk``, ``skip_bad``). Returns ``edgecv predict --json``'s
    content: ``predictions`` (``file``, ``label``, ``index``, ``score``, ``topk`` per image), ``bad`` (images that
    could not be decoded), the ``artifact`` used and the listing.

    >>> edgecv.predict("bundle", ["photos/"])["predictions"][0]["label"]
    """
    from edgecv.serve.config import PredictConfig
    from edgecv.serve.images import classify

    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    return classify(source, [str(p) for p in paths], _config(PredictConfig, config, options), log=log, warn=warn)


def serve(bundle: str | Path, config: ServeConfig | None = None, *, artifact: str = "auto",
          bench_json: str | Path | None = None, threads: int | None = None, host: str = "127.0.0.1", port: int = 8000,
          log: Log = _stderr, **options) -> None:
    """``edgecv serve`` (without ``--ray``): serve a bundle over HTTP until SIGINT/SIGTERM (which drain).

    ``config`` (a :class:`~edgecv.serve.config.ServeConfig`) or keywords naming its fields (``max_batch``,
    ``max_delay_ms``, ``max_queue``, ``api_key``...). Blocks; returns when the server has stopped.

    >>> edgecv.serve("bundle", port=8000, max_batch=16)
    """
    from edgecv.serve.config import ServeConfig
    from edgecv.serve.server import serve as run_server

    cfg = _config(ServeConfig, config, options)
    pred = load_predictor(bundle, artifact=artifact, threads=threads, bench_json=bench_json, log=log)
    run_server(pred, cfg, host=host, port=port, log=log)
