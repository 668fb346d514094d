"""edgecv eval: accuracy, per-class metrics and confusion matrix of a checkpoint."""

from __future__ import annotations

import click

from edgecv.cli._common import emit_json, json_option, log, quiet_option, warn_unlearned
from edgecv.utils import check_writable, stderr_console


@click.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", default="digits", show_default=True,
              help="DATA/test, else DATA/val (or valid/, validation/), else every image under DATA; or a built-in name.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--confusion", "confusion_png", default=None, type=click.Path(dir_okay=False),
              help="Write the confusion matrix as a PNG here.")
@click.option("--per-class/--no-per-class", default=True, show_default=True, help="Print per-class P/R/F1.")
@click.option("--skip-bad", is_flag=True,
              help="Skip unreadable images and folders that cannot be listed (each listed) instead of stopping.")
@click.option("--allow-duplicates", is_flag=True,
              help="Evaluate even when byte-identical images sit in two splits or classes (recorded in --json).")
@click.option("--trust-pickle", is_flag=True, help="Allow loading pickled Python objects (only for files you trust).")
@click.option("--arch", default=None, help="Architecture of a bare state_dict CHECKPOINT (see 'edgecv archs').")
@json_option
@quiet_option
def eval_(checkpoint, data, batch_size, confusion_png, per_class, skip_bad, allow_duplicates, trust_pickle, arch,
          as_json):
    """Top-1/top-5, balanced accuracy (mean per-class recall), macro-F1, per-class precision/recall/F1 and the
    confusion matrix of CHECKPOINT on DATA.

    \b
    Examples:
      edgecv eval teacher.pt --data digits
      edgecv eval teacher.pt --data ~/data/cifar10 --confusion cm.png --json > eval.json
    """
    from edgecv.training.evaluate import evaluate_checkpoint

    if confusion_png:
        check_writable(confusion_png)
    rep = evaluate_checkpoint(checkpoint, data, batch_size, confusion_png, skip_bad=skip_bad,
                              trust_pickle=trust_pickle, arch=arch, allow_duplicates=allow_duplicates, log=log)
    warn_unlearned(rep, rep["data_split"])
    if as_json:
        emit_json(rep)
        return
    from rich.table import Table

    con = stderr_console(160)
    con.print(f"[bold]{checkpoint}[/] on {data} ({rep['data_split']} split): {rep['n']} images  top-1 [bold]{rep['top1']:.2f}%[/]  "
              f"top-5 {rep['top5']:.2f}%  balanced acc {rep['balanced_acc']:.2f}%  macro-F1 {rep['macro_f1']:.2f}%")
    if per_class:
        t = Table("class", "precision", "recall", "F1", "support")
        for name, r in rep["per_class"].items():
            t.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
        con.print(t)
    if confusion_png:
        con.print(f"confusion matrix: {rep['confusion_png']}")
