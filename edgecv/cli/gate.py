"""edgecv gate: the CI latency/accuracy regression gate.

The gate's settings are generated from the fields of :class:`~edgecv.bench.gate.config.GateConfig` (their
defaults, ranges, choices and help are declared there once). Written here by hand, because they are the
command's arguments and output rather than settings of a gate: ``--baseline`` and ``--candidate`` (required
paths, positional in the library call), ``--json`` (a report file) and ``--quiet``.
"""

from __future__ import annotations

import click

from edgecv.bench.gate.config import GateConfig
from edgecv.cli._common import config_options, duration, duration_text, emit_json, log, quiet_option
from edgecv.utils import check_writable


@click.command()
@click.option("--baseline", required=True, type=click.Path(),
              help="Baseline bundle, single artifact, or a stored 'edgecv bench --json' file (less reliable).")
@click.option("--candidate", required=True, type=click.Path(), help="Candidate bundle or single artifact.")
@config_options(GateConfig, callbacks={"block_time_s": duration},
                defaults={"block_time_s": duration_text(GateConfig.block_time_s)}, dests={"block_time_s": "block_time"})
@click.option("--json", "json_out", default=None, metavar="PATH", help="Write the JSON result here ('-' = stdout).")
@quiet_option
def gate(baseline, candidate, json_out, **options):
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
    from edgecv.contracts.bench import validate
    from edgecv.errors import CheckFailed
    from edgecv.utils import dumps_json, is_quiet, write_text_atomic

    if json_out and json_out != "-":
        check_writable(json_out)  # before the measurement, not after it
    result = G.run_gate(baseline, candidate, GateConfig(**options), log=log)
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
                acc = r["accuracy"]
                parts.append(f"{r['name']} top-1 -{acc['drop']:.2f} pt"
                             + (f" (candidate is {acc['label']})" if acc.get("label") else ""))
            if r["status"] != "ok":
                parts.append(f"{r['name']} {r['status']}: {r['reason']}")
        raise CheckFailed("regression: " + "; ".join(parts))
    return 0
