"""edgecv command line. Thin: parse flags, call the library, print.

Exit codes: 0 ok, 1 a check failed (budget, regression, validation, diverged training), 2 bad input.
Human output goes to stderr, ``--json`` output to stdout.
"""

from __future__ import annotations

import json
import sys

import click

from edgecv import __version__
from edgecv.errors import EdgecvError
from edgecv.utils import dumps_json, set_quiet


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

    if not is_quiet():
        echo(msg)


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
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(0, min_open=True))
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
def train(data, arch, epochs, img_size, batch_size, lr, weight_decay, label_smoothing, workers, seed, device,
          skip_bad, resume, tensorboard, out, as_json):
    """Train a classifier (the teacher) on DATA.

    \b
    Examples:
      edgecv train --data digits --epochs 3
      edgecv train --data ~/data/cifar10 --arch resnet18 --img-size 64 --epochs 30 --out teacher.pt
      torchrun --nproc-per-node 2 -m edgecv train --data ~/data/cifar10 --batch-size 64
    """
    from edgecv import distributed as D
    from edgecv.compress.teacher import train_classifier
    from edgecv.compress.train import TrainConfig

    D.init(device)
    try:
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          label_smoothing=label_smoothing, workers=workers, seed=seed, device=device,
                          tensorboard=tensorboard, desc=arch)
        res = train_classifier(data, arch, out, cfg, img_size=img_size, skip_bad=skip_bad, resume=resume, log=log)
    finally:
        D.shutdown()
    if not D.is_main():
        return
    d = res.to_dict()
    if as_json:
        emit_json(d)
    else:
        echo(f"saved {res.checkpoint}: {arch}, best val top-1 {d['best_val_top1']:.2f}% (epoch {d['best_epoch']}), "
             f"{d['wall_s']:.1f}s, effective batch {d['effective_batch']}")


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
    from edgecv.evaluate import evaluate_checkpoint

    rep = evaluate_checkpoint(checkpoint, data, batch_size, confusion_png, skip_bad=skip_bad,
                              trust_pickle=trust_pickle)
    if as_json:
        emit_json(rep)
        return
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    con.print(f"[bold]{checkpoint}[/] on {data}: {rep['n']} images  top-1 [bold]{rep['top1']:.2f}%[/]  "
              f"top-5 {rep['top5']:.2f}%  macro-F1 {rep['macro_f1']:.2f}%")
    if per_class:
        t = Table("class", "precision", "recall", "F1", "support")
        for name, r in rep["per_class"].items():
            t.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
        con.print(t)
    if confusion_png:
        con.print(f"confusion matrix: {rep['confusion_png']}")


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
@click.option("--num-calib", default=128, show_default=True, type=click.IntRange(1),
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
        click.echo(f"edgecv: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("edgecv: interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
