"""edgecv command line. Thin: parse flags, call the library, print.

Exit codes: 0 ok, 1 a check failed (budget, regression, validation, diverged training), 2 bad input.
Human output goes to stderr, ``--json`` output to stdout.
"""

from __future__ import annotations

import sys

import click

from edgecv import __version__
from edgecv.errors import EdgecvError
from edgecv.utils import dumps_json, set_quiet, stderr_console


def echo(msg: str = "") -> None:
    click.echo(msg, err=True)


def emit_json(obj) -> None:
    click.echo(dumps_json(obj))


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def quiet_option(f):
    def cb(ctx, param, value):
        set_quiet(value)
        return value

    return click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=cb, is_eager=True,
                        help="No progress bars or log lines.")(f)


def log(msg: str) -> None:
    from edgecv.utils import is_quiet

    if not is_quiet() and _rank() == 0:  # under torchrun only rank 0 logs
        echo(msg)


def _rank() -> int:
    import os

    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _launched_by_torchrun() -> bool:
    import os

    return os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edgecv")
def cli() -> None:
    """edgecv: turn a trained image classifier into fast, small models for edge targets.

    \b
    Typical flow:
      edgecv train    --data DATA --arch resnet18 --out teacher.pt
      edgecv compress --teacher teacher.pt --data DATA --out runs/r1
      edgecv export   runs/r1 --target all --out bundle/
      edgecv bench    bundle/ --data DATA
      edgecv gate     --baseline main_bundle/ --candidate bundle/
    """


# ---------------------------------------------------------------------------------------------- train
@cli.command()
@click.option("--data", default="digits", show_default=True,
              help="ImageFolder root (train/ + val/, or class folders) or a built-in dataset name (digits).")
@click.option("--arch", default="resnet18", show_default=True, help="Architecture from the registry (see 'edgecv archs').")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(0))
@click.option("--img-size", type=click.IntRange(8, 4096), default=None, help="Input size [default: 32 for digits, 224 otherwise].")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1), help="Per process (torchrun: x world size).")
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Peak learning rate (AdamW). Scale it with the effective batch: see docs/distributed.md.")
@click.option("--warmup-epochs", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Linear learning-rate warm-up before the cosine decay (use more with large effective batches).")
@click.option("--weight-decay", default=0.05, show_default=True, type=click.FloatRange(0))
@click.option("--label-smoothing", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--workers", default=None, type=click.IntRange(0), help="DataLoader workers [default: auto].")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of stopping.")
@click.option("--resume", is_flag=True, help="Continue from OUT.state left by an interrupted run.")
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None, help="Write TensorBoard scalars here.")
@click.option("--out", default="teacher.pt", show_default=True, type=click.Path(dir_okay=False))
@json_option
@quiet_option
def train(data, arch, epochs, img_size, batch_size, lr, warmup_epochs, weight_decay, label_smoothing, workers, seed, device,
          skip_bad, resume, tensorboard, out, as_json):
    """Train a classifier (the teacher) on DATA.

    \b
    Examples:
      edgecv train --data digits --epochs 3
      edgecv train --data ~/data/cifar10 --arch resnet18 --img-size 64 --epochs 30 --out teacher.pt
      torchrun --nproc-per-node 2 -m edgecv train --data ~/data/cifar10 --batch-size 64
      # 8 GPUs x 64 = effective batch 512: linear LR scaling 2e-3 x 512/64 (docs/distributed.md)
      torchrun --standalone --nproc-per-node 8 -m edgecv train --data /data/imagenet --arch resnet50
          --batch-size 64 --lr 1.6e-2 --warmup-epochs 5 --epochs 90 --out r50.pt
    """
    from edgecv import distributed as D
    from edgecv.training.loop import TrainConfig
    from edgecv.training.teacher import train_classifier

    D.init(device)
    try:
        main_rank = D.is_main()  # ask before shutdown(): afterwards every process would look like rank 0
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs,
                          weight_decay=weight_decay, label_smoothing=label_smoothing, workers=workers, seed=seed, device=device,
                          tensorboard=tensorboard, desc=arch)
        res = train_classifier(data, arch, out, cfg, img_size=img_size, skip_bad=skip_bad, resume=resume, log=log)
    finally:
        D.shutdown()
    if not main_rank:  # under torchrun only rank 0 prints the result / --json
        return
    d = res.to_dict()
    if as_json:
        emit_json(d)
    else:
        echo(f"saved {res.checkpoint}: {arch}, best val top-1 {d['best_val_top1']:.2f}% (epoch {d['best_epoch']}), "
             f"{d['wall_s']:.1f}s, effective batch {d['effective_batch']} "
             f"({batch_size} x {d['world_size']} process{'es' if d['world_size'] > 1 else ''})")


# ---------------------------------------------------------------------------------------------- eval
@cli.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", default="digits", show_default=True,
              help="DATA/val if it exists, else every image under DATA; or a built-in name.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--confusion", "confusion_png", default=None, type=click.Path(dir_okay=False),
              help="Write the confusion matrix as a PNG here.")
@click.option("--per-class/--no-per-class", default=True, show_default=True, help="Print per-class P/R/F1.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of stopping.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading pickled Python objects (only for files you trust).")
@json_option
@quiet_option
def eval_(checkpoint, data, batch_size, confusion_png, per_class, skip_bad, trust_pickle, as_json):
    """Top-1/top-5, per-class precision/recall/F1 and the confusion matrix of CHECKPOINT on DATA.

    \b
    Examples:
      edgecv eval teacher.pt --data digits
      edgecv eval teacher.pt --data ~/data/cifar10 --confusion cm.png --json > eval.json
    """
    from edgecv.training.evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(checkpoint, data, batch_size, confusion_png, skip_bad=skip_bad,
                              trust_pickle=trust_pickle)
    if as_json:
        emit_json(rep)
        return
    from rich.table import Table

    con = stderr_console(160)
    con.print(f"[bold]{checkpoint}[/] on {data}: {rep['n']} images  top-1 [bold]{rep['top1']:.2f}%[/]  "
              f"top-5 {rep['top5']:.2f}%  macro-F1 {rep['macro_f1']:.2f}%")
    if per_class:
        t = Table("class", "precision", "recall", "F1", "support")
        for name, r in rep["per_class"].items():
            t.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
        con.print(t)
    if confusion_png:
        con.print(f"confusion matrix: {rep['confusion_png']}")


# ---------------------------------------------------------------------------------------------- compress
def _target_macs(ctx, param, value):
    if value is None or str(value).strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"expected a fraction in (0, 1] or 'auto', got {value!r}") from None


def _opt_duration(ctx, param, value):
    return None if value is None else _duration(ctx, param, value)


@cli.command()
@click.option("--teacher", default=None, type=click.Path(dir_okay=False),
              help="Teacher: edgecv checkpoint, bare state_dict (with --teacher-arch) or TorchScript file "
                   "[default: train a resnet18 on the fly, cached].")
@click.option("--teacher-arch", default=None, help="Architecture of a bare state_dict teacher.")
@click.option("--data", default=None, help="ImageFolder root or built-in name [default: digits].")
@click.option("--student", default=None,
              help="Student arch from the registry, or 'auto': measure the candidates on --target's runtime, drop "
                   "those over the budget, pick the best by a short KD probe [default: mobilenet_v3_small].")
@click.option("--target-macs", default=None, callback=_target_macs,
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
@click.option("--min-time", "min_time", default=None, callback=_opt_duration,
              help="Timed duration per candidate and precision (1s, 500ms) [default: 1s].")
@click.option("--select-only", is_flag=True, help="--student auto: measure, probe and record the choice in "
                                                   "RUN_DIR/run.json, run no stage.")
@click.option("--epochs-kd", default=None, type=click.IntRange(0), help="Distillation epochs [default: 10].")
@click.option("--epochs-prune", default=None, type=click.IntRange(0),
              help="Fine-tune epochs of the pruning stage, spread over its steps [default: 6].")
@click.option("--epochs-qat", default=None, type=click.IntRange(0), help="QAT epochs [default: 3].")
@click.option("--img-size", default=None, type=click.IntRange(8, 4096),
              help="Student input size [default: the teacher's, else the data default].")
@click.option("--batch-size", default=None, type=click.IntRange(1), help="Per process [default: 64].")
@click.option("--lr", default=None, type=click.FloatRange(0, min_open=True),
              help="Learning rate (QAT uses lr x 0.1) [default: 2e-3].")
@click.option("--seed", default=None, type=int, help="[default: 0]")
@click.option("--workers", default=None, type=click.IntRange(0), help="DataLoader workers [default: auto].")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N [default: auto].")
@click.option("--importance", default=None, type=click.Choice(["magnitude", "taylor"]),
              help="Channel importance for pruning [default: magnitude].")
@click.option("--prune-steps", default=None, type=click.IntRange(1), help="Pruning rounds [default: 4].")
@click.option("--temperature", default=None, type=click.FloatRange(0, min_open=True), help="KD temperature [default: 4].")
@click.option("--alpha", default=None, type=click.FloatRange(0, 1), help="Weight of the KD term [default: 0.8].")
@click.option("--feature-kd", default=None, type=click.FloatRange(0),
              help="Weight of feature-map KD on the last feature map (0 = off) [default: 0].")
@click.option("--calib-size", default=None, type=click.IntRange(1), help="PTQ calibration images [default: 512].")
@click.option("--int8-stem/--float-stem", "int8_stem", default=None,
              help="Quantize the 3-channel stem conv too. Default float: faster INT8 on ONNX Runtime and "
                   "ExecuTorch, slower on OpenVINO (benchmarks/RESULTS.md).")
@click.option("--teacher-epochs", default=None, type=click.IntRange(0),
              help="Epochs of the on-the-fly teacher (no --teacher) [default: 3].")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="YAML file with any of these options (flags given on the command line win).")
@click.option("--stages", default=None, help="Comma-separated subset of distill,prune,quantize [default: all].")
@click.option("--resume", is_flag=True, help="Continue after the last completed stage (mid-stage too).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of stopping.")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled teacher (only for files you trust).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="RUN_DIR [default: runs/compress].")
@json_option
@quiet_option
def compress(config_path, stages, resume, skip_bad, trust_pickle, select_only, as_json, **flags):
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
    from pathlib import Path

    from edgecv import distributed as D
    from edgecv.compress.pipeline import CompressConfig, load_config_file, parse_stages
    from edgecv.compress.pipeline import compress as run_compress

    merged: dict = {}
    out_flag = flags.get("out")
    if resume and config_path is None:
        # resuming: the run's own effective config is the base
        saved = Path(out_flag or CompressConfig.out) / "config.yaml"
        if saved.is_file():
            merged.update({k: v for k, v in load_config_file(saved).items() if k != "img_size" or v})
    if config_path:
        merged.update(load_config_file(config_path))
    merged.update({k: v for k, v in flags.items() if v is not None})
    if skip_bad:
        merged["skip_bad"] = True
    if trust_pickle:
        merged["trust_pickle"] = True
    if select_only:
        merged["select_only"] = True
    cfg = CompressConfig.from_dict(merged)
    stage_list = parse_stages(stages)
    from edgecv.autotune.select import SelectionFailed, print_selection
    from edgecv.utils import is_quiet

    def on_selection(sel: dict) -> None:
        if not is_quiet() and D.is_main():
            print_selection(sel)

    D.init(cfg.device)
    main_rank = D.is_main()  # ask before shutdown(): afterwards every process would look like rank 0
    try:
        run = run_compress(cfg, stage_list, resume=resume, log=log, on_selection=on_selection)
    except SelectionFailed as e:
        on_selection(e.selection)
        raise
    finally:
        D.shutdown()
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
    stderr_console(160).print(t)


# ---------------------------------------------------------------------------------------------- archs
@cli.command()
@json_option
def archs(as_json):
    """List the registered teacher and student architectures."""
    from edgecv.models.registry import ARCHS, arch_info

    rows = [{"arch": a, "role": arch_info(a).role, "source": arch_info(a).source,
             "int8_friendly": arch_info(a).int8_friendly, "note": arch_info(a).note} for a in ARCHS]
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            click.echo(f"{r['arch']:36s} {r['role']:8s} {r['source']:12s} {r['note']}")


# ---------------------------------------------------------------------------------------------- export
@cli.command()
@click.argument("source", type=click.Path())
@click.option("--target", default="x86", show_default=True, help="android | jetson | x86 | all")
@click.option("--precision", default=None, help="Comma-separated filter: fp32,fp16,int8 [default: all of the target's].")
@click.option("--img-size", type=click.IntRange(8, 4096), default=None, help="Input size [default: the source's].")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(13, 23), help="ONNX opset (QDQ per-channel needs >= 13).")
@click.option("--data", default=None, help="Validation/calibration images [default: the data the source was trained on].")
@click.option("--num-val", default=256, show_default=True, type=click.IntRange(1), help="Validation images per artifact.")
@click.option("--num-calib", default=512, show_default=True, type=click.IntRange(1),
              help="Calibration images (PTQ of a float source, ExecuTorch INT8, ONNX conv-output ranges).")
@click.option("--stage", default=None, help="Run directory: export this stage (distill | prune | quantize) instead of the best.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="Runtime threads for validation.")
@click.option("--simplify", is_flag=True, help="Clean the ONNX graphs with onnxscript's optimizer.")
@click.option("--no-validate", is_flag=True, help="Skip runtime validation (artifacts are still hashed).")
@click.option("--verify", is_flag=True, help="SOURCE is an existing bundle: re-hash its artifacts against manifest.json.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading pickled Python objects (only for files you trust).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Bundle directory (required unless --verify).")
@json_option
@quiet_option
def export(source, target, precision, img_size, opset, data, num_val, num_calib, stage, threads, simplify, no_validate,
           verify, trust_pickle, out, as_json):
    """Export SOURCE (a compress run directory or a checkpoint) to a validated bundle for a target.

    \b
    Every artifact is written atomically, run through its real runtime on --num-val validation images and
    compared with the PyTorch model it came from (top-1 agreement, max |logit diff|; INT8 must also run int8
    kernels). manifest.json (sha256 of every file) is written last. Exit 1 if any artifact failed.
    \b
    Examples:
      edgecv export runs/r1 --target all --out bundle/
      edgecv export runs/r1 --target x86 --precision int8 --data ~/data/cifar10 --out bundle_x86/
      edgecv export student.pt --target android --img-size 64 --out bundle_android/ --json
      edgecv export bundle/ --verify
    """
    from edgecv.errors import CheckFailed, UserError

    if verify:
        from edgecv.export.bundle import verify_bundle

        rep = verify_bundle(source)
        if as_json:
            emit_json(rep)
        else:
            for r in rep["artifacts"]:
                echo(f"  {r['artifact']:16s} {r['status']}" + (f": {r['error']}" if r.get("error") else ""))
        if not rep["ok"]:
            raise CheckFailed(f"{len(rep['mismatched'])} artifact(s) do not match the manifest: {', '.join(rep['mismatched'])}")
        return
    if not out:
        raise UserError("--out BUNDLE_DIR is required")
    from edgecv.export.bundle import ExportOptions, export_bundle, parse_precisions
    from edgecv.targets import get_target

    get_target(target)  # unknown target -> exit 2 before any work
    opts = ExportOptions(target=target, precisions=parse_precisions(precision), img_size=img_size, opset=opset,
                         data=data, num_val=num_val, num_calib=num_calib, stage=stage, trust_pickle=trust_pickle,
                         threads=threads, simplify=simplify, validate=not no_validate)
    res = export_bundle(source, out, opts, log=log)
    if as_json:
        emit_json(res.to_dict())
    else:
        n_ok = sum(1 for e in res.manifest.artifacts if e.status == "ok")
        echo(f"bundle {res.bundle}: {n_ok}/{len(res.manifest.artifacts)} artifacts ok, manifest.json written "
             f"({res.wall_s:.1f}s)")
    if res.failed:
        raise CheckFailed(f"{len(res.failed)} artifact(s) failed: {', '.join(res.failed)}")


# ---------------------------------------------------------------------------------------------- bench
def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        out = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected integers >= 1, got {value!r}")
    return out


def _duration(ctx, param, value):
    from edgecv.bench.latency import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--target", type=click.Choice(["android", "jetson", "x86", "all"]), default=None,
              help="Target profile for budgets and threads [default: the bundle's target].")
@click.option("--data", default=None, help="Evaluation data for top-1/top-5 through each runtime (ImageFolder or 'digits').")
@click.option("--threads", callback=_int_list, default=None, help="Comma-separated thread counts [default: the target's].")
@click.option("--batch", "batches", callback=_int_list, default="1", show_default=True,
              help="Comma-separated batch sizes; the first is the latency/budget batch, the largest gives throughput.")
@click.option("--min-time", callback=_duration, default="2s", show_default=True, help="Minimum timed duration per config (5s, 500ms).")
@click.option("--min-runs", default=50, show_default=True, type=click.IntRange(1), help="Minimum timed calls per config.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0), help="Untimed warm-up calls.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1),
              help="Interleaved rounds (artifacts alternate, robust to bursts of load).")
@click.option("--budget-ms", type=click.FloatRange(0, min_open=True), default=None, help="p90 latency budget in ms (overrides the target's).")
@click.option("--budget-fps", type=click.FloatRange(0, min_open=True), default=None, help="Frame-rate budget (overrides the target's).")
@click.option("--artifacts", default=None, help="Only these artifacts, comma-separated format-precision (onnx-int8,openvino-fp32).")
@click.option("--no-accuracy", is_flag=True, help="Latency only.")
@click.option("--max-images", type=click.IntRange(1), default=None, help="Evaluate on a class-balanced subset of this many images.")
@click.option("--accuracy-tolerance", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Top-1 points an artifact may lose vs the best and still be recommended.")
@click.option("--device", default="cpu", show_default=True, help="Runner device: cpu, cuda:0, GPU (OpenVINO)...")
@click.option("--adb", "adb_serial", default=None, help="Run .pte artifacts on this Android device (adb serial). Untested on hardware.")
@click.option("--adb-runner", default=None, type=click.Path(dir_okay=False),
              help="ExecuTorch executor_runner built for Android arm64 (or EDGECV_ET_RUNNER).")
@click.option("--include-failed", is_flag=True,
              help="Also time artifacts whose export validation failed (labelled in the notes, never recommended).")
@click.option("--json", "json_out", default=None, metavar="PATH", help="Write the JSON result here ('-' = stdout).")
@click.option("--markdown", default=None, type=click.Path(dir_okay=False), help="Write a Markdown table here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG accuracy-vs-latency (Pareto) plot here.")
@quiet_option
def bench(bundle, target, data, threads, batches, min_time, min_runs, warmup, rounds, budget_ms, budget_fps,
          artifacts, no_accuracy, max_images, accuracy_tolerance, device, adb_serial, adb_runner, include_failed, json_out,
          markdown, plot):
    """Benchmark every artifact of BUNDLE through its real runtime: latency, accuracy, size, budget.

    BUNDLE is an export bundle (folder with manifest.json) or a single artifact file (.onnx, .xml, .pte...).
    Each artifact's sha256 is checked against the manifest first. Runtimes that cannot run here are reported
    as skipped with the reason. Latency on a host that is not the target hardware is labelled a host proxy.

    Exit code 0; 1 when an artifact is modified/corrupt or a budget applies and no artifact passes it; 2 bad input.

    \b
    Examples:
      edgecv bench bundle/ --data ~/data/cifar10 --plot pareto.png --markdown bench.md
      edgecv bench bundle/ --target android --threads 4 --min-time 5s --json bench.json
      edgecv bench bundle/ --target x86 --budget-ms 5 --artifacts onnx-int8,openvino-int8 --no-accuracy
      edgecv bench bundle/ --batch 1,8 --json - > bench.json
      edgecv bench model.onnx --threads 1,2
    """
    from edgecv.bench import report
    from edgecv.bench.bench import BenchConfig, exit_code, run_bench
    from edgecv.errors import CheckFailed, UserError

    if budget_ms is not None and budget_fps is not None:
        raise UserError("give --budget-ms or --budget-fps, not both")
    cfg = BenchConfig(target=target, data=data, threads=threads, batches=batches, min_time_s=min_time,
                      min_runs=min_runs, warmup=warmup, rounds=rounds, budget_ms=budget_ms, budget_fps=budget_fps,
                      artifacts=[a.strip() for a in artifacts.split(",") if a.strip()] if artifacts else None,
                      accuracy=not no_accuracy, max_images=max_images, accuracy_tolerance=accuracy_tolerance,
                      device=device, adb=adb_serial, adb_runner=adb_runner, include_failed=include_failed)
    result = run_bench(bundle, cfg, log=log)
    from edgecv.utils import is_quiet

    if not is_quiet():
        report.print_table(result)
    if json_out:
        report.write_json(result, json_out)
    if markdown:
        report.write_markdown(result, markdown)
    if plot:
        report.write_plot(result, plot)
    rc = exit_code(result)
    if rc:
        bad = [a["name"] for a in result["artifacts"] if a["status"] == "invalid"]
        raise CheckFailed(f"modified or missing artifact(s): {', '.join(bad)}" if bad
                          else "no artifact passes the latency budget")
    return 0


# ---------------------------------------------------------------------------------------------- gate
@cli.command()
@click.option("--baseline", required=True, type=click.Path(),
              help="Baseline bundle, single artifact, or a stored 'edgecv bench --json' file (less reliable).")
@click.option("--candidate", required=True, type=click.Path(), help="Candidate bundle or single artifact.")
@click.option("--max-latency-regression", default=0.10, show_default=True, type=click.FloatRange(0),
              help="Allowed slowdown as a fraction (0.10 = candidate may be up to 10 % slower).")
@click.option("--max-accuracy-drop", default=0.5, show_default=True, type=click.FloatRange(0),
              help="Allowed top-1 drop in percentage points (needs --data).")
@click.option("--metric", type=click.Choice(["p50", "p90"]), default="p50", show_default=True,
              help="Per-round latency statistic compared.")
@click.option("--rounds", default=20, show_default=True, type=click.IntRange(2),
              help="Interleaved A/B rounds before the first decision.")
@click.option("--max-rounds", default=60, show_default=True, type=click.IntRange(2),
              help="Cap when the interval straddles the limit (inconclusive).")
@click.option("--sessions", default=4, show_default=True, type=click.IntRange(1),
              help="Independent session pairs the rounds are spread over (fresh runtime sessions and input per pair: "
                   "a session's memory layout can shift a small model's latency by 10 %+).")
@click.option("--block-time", callback=_duration, default="80ms", show_default=True,
              help="Minimum duration of one model's block within a round.")
@click.option("--on-inconclusive", type=click.Choice(["point", "fail", "pass"]), default="point", show_default=True,
              help="Still inconclusive at --max-rounds: decide on the point estimate, or fail / pass.")
@click.option("--data", default=None, help="Validation data for the accuracy check (skipped without it).")
@click.option("--max-images", type=click.IntRange(1), default=None, help="Class-balanced subset for the accuracy check.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="Runtime threads for both models.")
@click.option("--device", default="cpu", show_default=True, help="Runner device.")
@click.option("--stored-noise", default=1.5, show_default=True, type=click.FloatRange(1),
              help="Extra tolerance factor when the baseline is a stored bench JSON.")
@click.option("--json", "json_out", default=None, metavar="PATH", help="Write the JSON result here ('-' = stdout).")
@quiet_option
def gate(baseline, candidate, max_latency_regression, max_accuracy_drop, metric, rounds, max_rounds, sessions,
         block_time, on_inconclusive, data, max_images, threads, device, stored_noise, json_out):
    """CI gate: fail when CANDIDATE is slower or less accurate than BASELINE beyond the thresholds.

    Both are measured in this process, interleaved (A B, B A, ... in short blocks), and the decision is made on
    the candidate/baseline latency ratio with a 95 % bootstrap confidence interval: pass when the interval is
    below 1 + max-latency-regression, regression when it is above; in between ("inconclusive") more rounds are
    run up to --max-rounds, then --on-inconclusive decides. Bundles are matched artifact by artifact
    (format + precision). See docs/ci-gate.md.

    Exit code 0 pass, 1 regression (the table says which artifact, by how much, with the interval), 2 bad input.

    \b
    Examples:
      edgecv gate --baseline main_bundle/ --candidate bundle/ --data ~/data/cifar10/val
      edgecv gate --baseline base.onnx --candidate cand.onnx --max-latency-regression 0.05 --json gate.json
      edgecv gate --baseline bench_main.json --candidate bundle/     # stored baseline: less reliable
    """
    from edgecv.bench import gate as G
    from edgecv.bench.report import validate
    from edgecv.errors import CheckFailed
    from edgecv.utils import dumps_json, is_quiet, write_text_atomic

    if max_rounds < rounds:
        max_rounds = rounds
    cfg = G.GateConfig(max_latency_regression=max_latency_regression, max_accuracy_drop=max_accuracy_drop,
                       metric=metric, rounds=rounds, max_rounds=max_rounds, sessions=sessions, block_time_s=block_time,
                       on_inconclusive=on_inconclusive, data=data, max_images=max_images, threads=threads,
                       device=device, stored_noise=stored_noise)
    result = G.run_gate(baseline, candidate, cfg, log=log)
    validate(result, "gate")
    if not is_quiet():
        G.print_gate(result)
    if json_out == "-":
        emit_json(result)
    elif json_out:
        write_text_atomic(json_out, dumps_json(result) + "\n")
    if not result["passed"]:
        parts = []
        for r in result["artifacts"]:
            if r["verdict"] != "regression":
                continue
            if r.get("latency") and r["latency"]["verdict"] == "regression":
                lat = r["latency"]
                parts.append(f"{r['name']} latency {lat['ratio']:.3f}x [{lat['ci_low']:.3f}, {lat['ci_high']:.3f}] "
                             f"> {lat['limit']:.3f}")
            if r.get("accuracy") and r["accuracy"].get("verdict") == "regression":
                parts.append(f"{r['name']} top-1 -{r['accuracy']['drop']:.2f} pt")
            if r["status"] != "ok":
                parts.append(f"{r['name']} {r['status']}: {r['reason']}")
        raise CheckFailed("regression: " + "; ".join(parts))
    return 0


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="edgecv", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("edgecv: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # usage errors: one line, exit 2
        click.echo(f"edgecv: error: {e.format_message()}", err=True)
        sys.exit(2)
    except EdgecvError as e:
        where = f" [rank {_rank()}]" if _launched_by_torchrun() else ""
        click.echo(f"edgecv: error{where}: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("edgecv: interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
