"""edgecv compress: distill, prune and INT8-QAT a student into a run directory."""

from __future__ import annotations

import click

from edgecv.cli._common import emit_json, json_option, log, opt_duration, quiet_option, target_macs
from edgecv.utils import check_writable, stderr_console


@click.command()
@click.option("--teacher", default=None, type=click.Path(dir_okay=False),
              help="Teacher: edgecv checkpoint, bare state_dict (with --teacher-arch) or TorchScript file "
                   "[default: train a resnet18 on the fly, cached].")
@click.option("--teacher-arch", default=None, help="Architecture of a bare state_dict teacher.")
@click.option("--allow-weak-teacher", is_flag=True,
              help="Distil from a teacher no better on val than always answering the commonest class (refused "
                   "otherwise, exit 2); a student no better either is then reported, not stopped (docs/errors.md).")
@click.option("--data", default=None, help="ImageFolder root or built-in name [default: digits].")
@click.option("--student", default=None,
              help="Student arch from the registry, or 'auto': measure the candidates on --target's runtime, drop "
                   "those over the budget, pick the best by a short KD probe [default: mobilenet_v3_small].")
@click.option("--student-pretrained", is_flag=True,
              help="Start the student from its published ImageNet weights (docs/finetune.md; offline: one line "
                   "says which file to put where).")
@click.option("--student-init-weights", default=None, type=click.Path(dir_okay=False),
              help="Start the student from a local state_dict / .safetensors / edgecv checkpoint of its arch.")
@click.option("--student-backbone-lr-scale", default=None, type=click.FloatRange(0, min_open=True),
              help="Distill stage: a pretrained student's backbone learns at --lr x this, its head at --lr "
                   "[default: 0.1 with --student-pretrained / --student-init-weights, else 1].")
@click.option("--target-macs", default=None, callback=target_macs,
              help="Pruned MACs as a fraction of the unpruned student's, or 'auto': the amount the measured "
                   "--budget-ms/--budget-fps needs on --target's runtime (floor 0.25) [default: 0.5].")
@click.option("--target", default=None, type=click.Choice(["x86", "android", "jetson"]),
              help="With --student/--target-macs auto: whose runtime latency is measured on "
                   "(x86: OpenVINO CPU; android: ExecuTorch; jetson: ONNX Runtime, host proxy).")
@click.option("--budget-ms", default=None, type=click.FloatRange(0, min_open=True),
              help="p90 latency budget in ms at --deploy-size, batch 1 (as edgecv bench) [default: the target's].")
@click.option("--budget-fps", default=None, type=click.FloatRange(0, min_open=True), help="Frame-rate budget instead.")
@click.option("--deploy-size", default=None, type=click.IntRange(8, 4096),
              help="Input size latency is measured at (separate from --img-size) [default: 224].")
@click.option("--probe-epochs", default=None, type=click.IntRange(0),
              help="--student auto: KD probe epochs per in-budget candidate (0: rank by latency) [default: 2].")
@click.option("--probe-images", default=None, type=click.IntRange(1),
              help="--student auto: training images of each probe (class-balanced subset) [default: 1000].")
@click.option("--probe-val-images", default=None, type=click.IntRange(1),
              help="--student auto: val images each probe is scored on [default: 500].")
@click.option("--candidates", default=None,
              help="--student auto: comma-separated students to consider [default: the six registry students].")
@click.option("--min-time", "min_time", default=None, callback=opt_duration,
              help="Timed duration per candidate and precision (1s, 500ms) [default: 1s].")
@click.option("--select-only", is_flag=True, help="--student auto: measure, probe and record the choice in "
                                                   "RUN_DIR/run.json, run no stage.")
@click.option("--epochs-kd", default=None, type=click.IntRange(0), help="Distillation epochs [default: 10].")
@click.option("--epochs-prune", default=None, type=click.IntRange(0),
              help="Fine-tune epochs of the pruning stage, spread over its steps [default: 6].")
@click.option("--epochs-qat", default=None, type=click.IntRange(0), help="QAT epochs [default: 3].")
@click.option("--img-size", default=None, type=click.IntRange(8, 4096),
              help="Student input size [default: the teacher's, else the data default].")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Per process [default: 64, halved for a small dataset until an epoch has >= 10 steps, min 8].")
@click.option("--lr", default=None, type=click.FloatRange(0, min_open=True),
              help="Learning rate (QAT uses lr x 0.1) [default: 2e-3].")
@click.option("--seed", default=None, type=int, help="[default: 0]")
@click.option("--workers", default=None, type=click.IntRange(0), help="DataLoader workers [default: auto].")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N [default: auto].")
@click.option("--importance", default=None, type=click.Choice(["magnitude", "taylor"]),
              help="Channel importance for pruning [default: magnitude].")
@click.option("--prune-steps", default=None, type=click.IntRange(1),
              help="Pruning rounds [default: 4; fewer where --epochs-prune cannot give each round an epoch].")
@click.option("--prune-bn-batches", default=None, type=click.IntRange(0),
              help="Re-estimate BatchNorm statistics on this many training batches after each prune cut, "
                   "0 = off [default: 32].")
@click.option("--temperature", default=None, type=click.FloatRange(0, min_open=True), help="KD temperature [default: 4].")
@click.option("--alpha", default=None, type=click.FloatRange(0, 1), help="Weight of the KD term [default: 0.8].")
@click.option("--feature-kd", default=None, type=click.FloatRange(0),
              help="Weight of feature-map KD on the last feature map (0 = off) [default: 0].")
@click.option("--decode-cache", default=None, type=click.Choice(["auto", "off"]),
              help="auto: decode + resize every image of a folder dataset once, into a memory-mapped cache under "
                   "$EDGECV_CACHE (augmentation on top); off: decode every epoch [default: auto].")
@click.option("--teacher-cache", default=None, metavar="off|auto|views=K",
              help="Teacher soft labels: K augmented views per training image and the teacher's logits, computed "
                   "once, cached and replayed by every KD stage, --resume and later runs (off: the live teacher "
                   "every batch; auto: K = total epochs / 4, in [2, 8], or / 2, in [2, 16], where the teacher runs "
                   "in bf16) [default: auto].")
@click.option("--teacher-precision", default=None, type=click.Choice(["auto", "fp32", "bf16"]),
              help="The frozen teacher's CPU forward (live, or building the soft labels): auto = bf16 autocast "
                   "where the CPU has AVX512-BF16/AMX (measured 1.95x faster there), else fp32 [default: auto].")
@click.option("--augment", default=None, type=click.Choice(["auto", "none", "light", "standard", "strong"]),
              help="Augmentation preset of the KD, prune fine-tune and QAT stages (see 'edgecv train --help'); auto: "
                   "the one the teacher checkpoint was trained with, else by input size [default: auto].")
@click.option("--balance", default=None, type=click.Choice(["none", "sampler", "weights"]),
              help="Skewed classes: sampler = class-balanced sampling in every stage; weights = inverse-frequency "
                   "class weights on the hard-label part of the KD loss [default: none].")
@click.option("--loss", default=None, type=click.Choice(["ce", "focal"]),
              help="Hard-label part of the KD loss: ce or focal (gamma 2) [default: ce].")
@click.option("--channels-last/--no-channels-last", "channels_last", default=None,
              help="The student's training step (and the live teacher) in channels_last memory format on the CPU "
                   "(measured faster here: docs/compress-speed.md) [default: on].")
@click.option("--calib-size", default=None, type=click.IntRange(1), help="PTQ calibration images [default: 512].")
@click.option("--int8-stem/--float-stem", "int8_stem", default=None,
              help="Quantize the 3-channel stem conv too. Default float: faster INT8 on ONNX Runtime and "
                   "ExecuTorch, slower on OpenVINO (benchmarks/RESULTS.md).")
@click.option("--int8-weight-bits", default=None, type=click.Choice(["auto", "7", "8"]),
              help="INT8 weight range: 7 = within +-63, exact on x86 CPUs without VNNI/AMX (their int8 kernels "
                   "saturate 8-bit weights); auto = 7 on such a CPU, else 8 [default: auto] (docs/int8.md).")
@click.option("--teacher-epochs", default=None, type=click.IntRange(0),
              help="Epochs of the on-the-fly teacher (no --teacher) [default: 3].")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="YAML file with any of these options (flags given on the command line win).")
@click.option("--stages", default=None, help="Comma-separated subset of distill,prune,quantize [default: all].")
@click.option("--resume", is_flag=True, help="Continue after the last completed stage (mid-stage too).")
@click.option("--skip-bad", is_flag=True,
              help="Skip unreadable images and folders that cannot be listed (each listed) instead of stopping.")
@click.option("--allow-duplicates", is_flag=True,
              help="Go on when byte-identical images sit in two splits or classes (recorded in run.json).")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled teacher (only for files you trust).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="RUN_DIR [default: runs/compress].")
@json_option
@quiet_option
def compress(config_path, stages, resume, skip_bad, allow_duplicates, trust_pickle, select_only, student_pretrained,
             allow_weak_teacher, as_json, **flags):
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

    switches = {"skip_bad": skip_bad, "allow_duplicates": allow_duplicates, "trust_pickle": trust_pickle,
                "student_pretrained": student_pretrained, "select_only": select_only,
                "allow_weak_teacher": allow_weak_teacher}  # a flag that is off is "not given": YAML/resume keep theirs
    cfg = resolve_config({**flags, **{k: True for k, on in switches.items() if on}}, config_path, resume)
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
    for name in ("distill", "prune", "quantize"):
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
                                                    for n in ("distill", "prune", "quantize")]
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
