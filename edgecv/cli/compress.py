"""edgecv compress: distill, prune and INT8-QAT a student into a run directory."""

from __future__ import annotations

import click

from edgecv.cli._common import (
    config_options,
    emit_json,
    json_option,
    log,
    opt_duration,
    quiet_option,
    target_macs,
)
from edgecv.compress.config import CompressConfig
from edgecv.contracts.rundir import STAGES
from edgecv.utils import check_writable, stderr_console


@click.command()
@config_options(CompressConfig, callbacks={"target_macs": target_macs, "min_time": opt_duration}, before={"skip_bad": [
    click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                 help="YAML file with any of these options (flags given on the command line win)."),
    click.option("--stages", default=None, help=f"Comma-separated subset of {','.join(STAGES)} [default: all]."),
    click.option("--resume", is_flag=True, help="Continue after the last completed stage (mid-stage too)."),
]})
@json_option
@quiet_option
def compress(config_path, stages, resume, as_json, **flags):
    """Distill a student from a teacher, prune it to a MAC target and INT8-QAT it, into RUN_DIR.

    Writes RUN_DIR/distill.pt, prune.pt, quantize.pt, config.yaml and run.json (the export contract).
    With no arguments: the built-in digits data, a resnet18 teacher trained on the fly, all stages.

    \b
    Examples:
      edgecv compress
      edgecv compress --teacher teacher.pt --data ~/data/cifar10 --img-size 64 --target-macs 0.5 --out runs/c1
      edgecv compress --out runs/c1 --resume
      edgecv compress --teacher t.pt --data D --stages distill,prune --out runs/c2
      edgecv compress --config run.yaml --epochs-qat 4
      edgecv compress --teacher t.pt --data D --student auto --target x86 --budget-ms 1.2 --target-macs auto
      edgecv compress --teacher t.pt --data D --student auto --target x86 --select-only --out runs/pick
      torchrun --nproc-per-node 2 -m edgecv compress --teacher t.pt --data D --out runs/c3
    """
    from edgecv import distributed as D
    from edgecv.autotune.run import compress as run_compress
    from edgecv.compress.config import parse_stages, resolve_config

    cfg = resolve_config(flags, config_path, resume)  # a flag not given is None: YAML / the resumed run decide
    stage_list = parse_stages(stages)
    from edgecv.autotune.report import print_selection
    from edgecv.autotune.select import SelectionFailed
    from edgecv.utils import is_quiet

    def on_selection(sel: dict) -> None:
        if not is_quiet() and D.is_main():
            print_selection(sel)

    check_writable(cfg.out, directory=True)  # before any training
    with D.session(cfg.device):
        main_rank = D.is_main()
        try:
            run = run_compress(cfg, stage_list, resume=resume, log=log, on_selection=on_selection)
        except SelectionFailed as e:
            on_selection(e.selection)
            raise
    if not main_rank:
        return
    if as_json:
        emit_json(run)
    if not is_quiet() and not cfg.select_only:
        _print_run_table(run)


def _print_run_table(run: dict) -> None:
    from rich.table import Table

    def pct(v):
        return f"{v:.2f}" if isinstance(v, int | float) else "-"

    t = Table(title=f"edgecv compress: {run['student']} at {run['img_size']}px "
                    f"(teacher {run['teacher'].get('arch') or run['teacher'].get('kind')} "
                    f"{pct(run['teacher'].get('val_top1'))}%)")
    for col in ("stage", "status", "val top-1 %", "PTQ top-1 %", "MACs", "MACs @224", "params", "wall s", "checkpoint"):
        t.add_column(col, justify="left" if col in ("stage", "status", "checkpoint") else "right")
    for name in STAGES:
        s = run["stages"].get(name, {})
        t.add_row(name, s.get("status", "-"), pct(s.get("val_top1")), pct(s.get("ptq_top1")),
                  f"{s['macs']:,}" if "macs" in s else "-", f"{s['macs_224']:,}" if "macs_224" in s else "-",
                  f"{s['params']:,}" if "params" in s else "-", pct(s.get("wall_s")), s.get("checkpoint", "-"))
    from edgecv.compress.judge import gap_line

    if run.get("teacher_gap"):
        t.caption = gap_line(run["teacher_gap"])
    con = stderr_console(160)
    con.print(t)
    recall = _recall_table(run)
    if recall is not None:
        con.print(recall)


MAX_RECALL_ROWS = 20


def _recall_table(run: dict):
    """Per-class val recall and balanced accuracy of the teacher and every judged stage, side by side (with more
    than MAX_RECALL_ROWS classes: those the last stage lost most against the teacher); None before any."""
    from rich.table import Table

    cols = [("teacher", run.get("teacher", {}))] + [(n, run["stages"].get(n, {}))
                                                    for n in STAGES]
    cols = [(n, r) for n, r in cols if r.get("per_class_recall")]
    if not cols:
        return None
    classes = list(cols[0][1]["per_class_recall"])
    if len(classes) > MAX_RECALL_ROWS:
        first, last = cols[0][1]["per_class_recall"], cols[-1][1]["per_class_recall"]
        classes = sorted(classes, key=lambda c: last.get(c, 0.0) - first.get(c, 0.0))[:MAX_RECALL_ROWS]
    shown = "" if len(classes) == len(cols[0][1]["per_class_recall"]) else \
        f" ({len(classes)} classes {cols[-1][0]} lost most against {cols[0][0]})"
    t = Table("class", *(n for n, _ in cols), title=f"val recall %{shown}")

    def cell(v):
        return "-" if v is None else f"[red]{v:.1f}[/]" if v == 0 else f"{v:.1f}"

    for c in classes:
        t.add_row(c, *(cell(r["per_class_recall"].get(c)) for _, r in cols))
    t.add_row("[bold]balanced acc[/]", *(cell(r.get("val_balanced_acc")) for _, r in cols))
    return t
