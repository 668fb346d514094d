"""edgecv eval: accuracy, per-class metrics and confusion matrix of a checkpoint.

The options are generated from the fields of :class:`~edgecv.training.config.EvalConfig` (declared there once);
``--per-class`` (what the table shows), ``--json`` and ``--quiet`` (how the command prints) are written here by
hand.
"""

from __future__ import annotations

import click

from edgecv.cli._common import config_options, emit_json, json_option, log, quiet_option, warn_unlearned
from edgecv.training.config import EvalConfig
from edgecv.utils import check_writable, stderr_console


@click.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@config_options(EvalConfig, defaults={}, before={"skip_bad": [
    click.option("--per-class/--no-per-class", default=True, show_default=True, help="Print per-class P/R/F1."),
]})
@json_option
@quiet_option
def eval_(checkpoint, per_class, as_json, **options):
    """Top-1/top-5, balanced accuracy (mean per-class recall), macro-F1, per-class precision/recall/F1 and the
    confusion matrix of CHECKPOINT on DATA.

    \b
    Examples:
      edgecv eval teacher.pt --data digits
      edgecv eval teacher.pt --data ~/data/cifar10 --confusion cm.png --json > eval.json
    """
    from edgecv.training.evaluate import evaluate_checkpoint

    cfg = EvalConfig(**options)
    if cfg.confusion_png:
        check_writable(cfg.confusion_png)
    rep = evaluate_checkpoint(checkpoint, cfg, log=log)
    warn_unlearned(rep, rep["data_split"])
    if as_json:
        emit_json(rep)
        return
    from rich.table import Table

    con = stderr_console(160)
    con.print(f"[bold]{checkpoint}[/] on {cfg.data} ({rep['data_split']} split): {rep['n']} images  top-1 [bold]{rep['top1']:.2f}%[/]  "
              f"top-5 {rep['top5']:.2f}%  balanced acc {rep['balanced_acc']:.2f}%  macro-F1 {rep['macro_f1']:.2f}%")
    if per_class:
        t = Table("class", "precision", "recall", "F1", "support")
        for name, r in rep["per_class"].items():
            t.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
        con.print(t)
    if cfg.confusion_png:
        con.print(f"confusion matrix: {rep['confusion_png']}")
