"""edgecv bench: latency, accuracy, size and budget of every artifact of a bundle."""

from __future__ import annotations

import click

from edgecv.cli._common import duration, int_list, log, quiet_option
from edgecv.targets import TARGET_NAMES
from edgecv.utils import check_writable


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--target", type=click.Choice(TARGET_NAMES), default=None,
              help="Target profile for budgets and threads [default: the bundle's target].")
@click.option("--data", default=None, help="Evaluation data for top-1/top-5 through each runtime (ImageFolder or 'digits').")
@click.option("--threads", callback=int_list, default=None, help="Comma-separated thread counts [default: the target's].")
@click.option("--batch", "batches", callback=int_list, default="1", show_default=True,
              help="Comma-separated batch sizes; the first is the latency/budget batch, the largest gives throughput.")
@click.option("--min-time", callback=duration, default="2s", show_default=True, help="Minimum timed duration per config (5s, 500ms).")
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
              help="Top-1 points an artifact may lose vs the most accurate and still be recommended: refused only "
                   "where a paired test on the same images shows it worse, by at least this.")
@click.option("--device", default="cpu", show_default=True, help="Runner device: cpu, cuda:0, GPU (OpenVINO)...")
@click.option("--adb", "adb_serial", default=None, help="Run .pte artifacts on this Android device (adb serial). Untested on hardware.")
@click.option("--adb-runner", default=None, type=click.Path(dir_okay=False),
              help="ExecuTorch executor_runner built for Android arm64 (or EDGECV_ET_RUNNER).")
@click.option("--skip-bad", is_flag=True,
              help="Skip unreadable images and folders of --data that cannot be listed (each listed) instead of stopping.")
@click.option("--allow-duplicates", is_flag=True,
              help="Score --data even when byte-identical images sit in two of its splits or classes.")
@click.option("--include-failed", is_flag=True,
              help="Also time artifacts whose export validation failed (labelled in the notes, never recommended).")
@click.option("--json", "json_out", default=None, metavar="PATH", help="Write the JSON result here ('-' = stdout).")
@click.option("--markdown", default=None, type=click.Path(dir_okay=False), help="Write a Markdown table here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG accuracy-vs-latency (Pareto) plot here.")
@quiet_option
def bench(bundle, target, data, threads, batches, min_time, min_runs, warmup, rounds, budget_ms, budget_fps,
          artifacts, no_accuracy, max_images, accuracy_tolerance, device, adb_serial, adb_runner, skip_bad, allow_duplicates, include_failed, json_out,
          markdown, plot):
    """Benchmark every artifact of BUNDLE through its real runtime: latency, accuracy, size, budget.

    BUNDLE is an export bundle (folder with manifest.json) or a single artifact file (.onnx, .xml, .pte...).
    Each artifact's sha256 is checked against the manifest first. Runtimes that cannot run here are reported
    as skipped with the reason. Latency on a host that is not the target hardware is labelled a host proxy.

    Exit code 0; 1 when a budget applies and no artifact passes it; 2 bad input (incl. a modified/missing artifact).

    \b
    Examples:
      edgecv bench bundle/ --data ~/data/cifar10 --plot pareto.png --markdown bench.md
      edgecv bench bundle/ --target android --threads 4 --min-time 5s --json bench.json
      edgecv bench bundle/ --target x86 --budget-ms 5 --artifacts onnx-int8,openvino-int8 --no-accuracy
      edgecv bench bundle/ --batch 1,8 --json - > bench.json
      edgecv bench model.onnx --threads 1,2
    """
    from edgecv.bench import report
    from edgecv.bench.bench import BenchConfig, bench_report
    from edgecv.errors import CheckFailed
    from edgecv.targets.policy import exit_code

    for path in (json_out if json_out != "-" else None, markdown, plot):
        if path:
            check_writable(path)  # before the measurement, not after it
    cfg = BenchConfig(target=target, data=data, threads=threads, batches=batches, min_time_s=min_time,
                      min_runs=min_runs, warmup=warmup, rounds=rounds, budget_ms=budget_ms, budget_fps=budget_fps,
                      artifacts=[a.strip() for a in artifacts.split(",") if a.strip()] if artifacts else None,
                      accuracy=not no_accuracy, max_images=max_images, accuracy_tolerance=accuracy_tolerance,
                      device=device, adb=adb_serial, adb_runner=adb_runner, include_failed=include_failed,
                      allow_duplicates=allow_duplicates, skip_bad=skip_bad)
    rep = bench_report(bundle, cfg, log=log)
    result = rep.to_dict()
    from edgecv.utils import is_quiet

    if not is_quiet():
        report.print_table(result)
    if json_out:
        report.write_json(result, json_out)
    if markdown:
        report.write_markdown(result, markdown)
    if plot:
        report.write_plot(result, plot)
    if exit_code(rep.artifacts):
        raise CheckFailed("no artifact passes the latency budget")
    return 0
