"""edgecv bench: latency, accuracy, size and budget of every artifact of a bundle.

The bench settings are generated from the fields of :class:`~edgecv.bench.config.BenchConfig` (their defaults,
ranges, choices and help are declared there once). Written here by hand, because they say what the command
writes, not how the bundle is measured: ``--json``, ``--markdown`` and ``--plot`` (report files, checked for
writability before the measurement) and ``--quiet``.
"""

from __future__ import annotations

import click

from edgecv.bench.config import BenchConfig
from edgecv.cli._common import config_options, duration, duration_text, int_list, log, quiet_option
from edgecv.utils import check_writable


@click.command()
@click.argument("bundle", type=click.Path())
@config_options(BenchConfig, callbacks={"threads": int_list, "batches": int_list, "min_time_s": duration},
                defaults={"min_time_s": duration_text(BenchConfig.min_time_s)},
                dests={"min_time_s": "min_time", "accuracy": "no_accuracy", "adb": "adb_serial"})
@click.option("--json", "json_out", default=None, metavar="PATH", help="Write the JSON result here ('-' = stdout).")
@click.option("--markdown", default=None, type=click.Path(dir_okay=False), help="Write a Markdown table here.")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write a PNG accuracy-vs-latency (Pareto) plot here.")
@quiet_option
def bench(bundle, json_out, markdown, plot, **options):
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
    from edgecv.bench.bench import bench_report
    from edgecv.errors import CheckFailed
    from edgecv.targets.policy import exit_code

    for path in (json_out if json_out != "-" else None, markdown, plot):
        if path:
            check_writable(path)  # before the measurement, not after it
    rep = bench_report(bundle, BenchConfig(**options), log=log)
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
