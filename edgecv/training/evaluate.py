"""``edgecv eval``: accuracy of a checkpoint on a dataset, through PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgecv.data.datasets import load_eval_dataset
from edgecv.errors import UserError
from edgecv.models.checkpoint import load_checkpoint
from edgecv.training.config import EvalConfig
from edgecv.training.metrics import classification_report, predict_logits, save_confusion_png


def evaluate_checkpoint(checkpoint: str | Path, cfg: EvalConfig | None = None,
                        log: Callable[[str], None] | None = None) -> dict:
    """Top-1/top-5, balanced accuracy, macro-F1, per-class metrics and the confusion matrix of ``checkpoint`` on
    ``cfg.data`` (:class:`~edgecv.training.config.EvalConfig`, its defaults when None); a bad option is a
    UserError before the checkpoint loads."""
    cfg = cfg or EvalConfig()
    cfg.validate()
    data = cfg.data
    ck = load_checkpoint(checkpoint, arch=cfg.arch, trust_pickle=cfg.trust_pickle)
    if ck.class_names is None or ck.preprocess is None:
        raise UserError(f"{checkpoint}: not an edgecv checkpoint (no class names / preprocessing); "
                        "eval needs one written by 'edgecv train' or 'edgecv compress'")
    ds = load_eval_dataset(data, ck.class_names, skip_bad=cfg.skip_bad, allow_duplicates=cfg.allow_duplicates)
    if ds.scan is not None:
        ds.scan.log(log)
    model = ck.build()
    logits, labels = predict_logits(model, ds.with_transform(ck.preprocess.eval_transform()), cfg.batch_size)
    rep = classification_report(logits, labels, ck.class_names)
    rep.update({"checkpoint": str(checkpoint), "arch": ck.arch, "data": data, "data_split": ds.split or "all",
                "trained_val_top1": ck.metrics.get("val_top1"),
                "data_scan": ds.scan.to_dict() if ds.scan is not None else None})
    if cfg.confusion_png:
        rep["confusion_png"] = str(save_confusion_png(rep["confusion_matrix"], ck.class_names, cfg.confusion_png,
                                                      title=f"{ck.arch} on {data}"))
    return rep
