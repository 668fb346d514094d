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
@click.option("--json", "json_out", default=None, metavar="PATH", help="Write the JSON result here ('-' = stdout).")
@click.option("--markdown", default=None, type=click.Path(dir_okay=False), help="Write a Markdown table here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG accuracy-vs-latency (Pareto) plot here.")
@quiet_option
def bench(bundle, target, data, threads, batches, min_time, min_runs, warmup, rounds, budget_ms, budget_fps,
          artifacts, no_accuracy, max_images, accuracy_tolerance, device, adb_serial, adb_runner, json_out, markdown, plot):
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
                      device=device, adb=adb_serial, adb_runner=adb_runner)
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
def gate(baseline, candidate, max_latency_regression, max_accuracy_drop, metric, rounds, max_rounds, block_time,
         on_inconclusive, data, max_images, threads, device, stored_noise, json_out):
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
                       metric=metric, rounds=rounds, max_rounds=max_rounds, block_time_s=block_time,
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
        click.echo(f"edgecv: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("edgecv: interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
