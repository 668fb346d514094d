"""edgecv gate: the CI latency/accuracy regression gate."""

from __future__ import annotations

import click

from edgecv.cli._common import duration, emit_json, log, quiet_option
from edgecv.utils import check_writable


@click.command()
@click.option("--baseline", required=True, type=click.Path(),
              help="Baseline bundle, single artifact, or a stored 'edgecv bench --json' file (less reliable).")
@click.option("--candidate", required=True, type=click.Path(), help="Candidate bundle or single artifact.")
@click.option("--max-latency-regression", default=0.10, show_default=True, type=click.FloatRange(0),
              help="Allowed slowdown as a fraction (0.10 = candidate may be up to 10 % slower).")
@click.option("--max-accuracy-drop", default=0.5, show_default=True, type=click.FloatRange(0),
              help="Top-1 points the candidate may lose: it fails only where a paired test on the same images shows "
                   "it worse, by at least this (needs --data).")
@click.option("--metric", type=click.Choice(["p50", "p90"]), default="p50", show_default=True,
              help="Per-round latency statistic compared.")
@click.option("--rounds", default=20, show_default=True, type=click.IntRange(2),
              help="Interleaved A/B rounds before the first decision.")
@click.option("--max-rounds", default=60, show_default=True, type=click.IntRange(2),
              help="Cap when the interval straddles the limit (inconclusive).")
@click.option("--sessions", default=4, show_default=True, type=click.IntRange(1),
              help="Independent session pairs the rounds are spread over (fresh runtime sessions and input per pair: "
                   "a session's memory layout can shift a small model's latency by 10 %+).")
@click.option("--block-time", callback=duration, default="80ms", show_default=True,
              help="Minimum duration of one model's block within a round.")
@click.option("--on-inconclusive", type=click.Choice(["point", "fail", "pass"]), default="point", show_default=True,
              help="Still inconclusive at --max-rounds: decide on the point estimate, or fail / pass.")
@click.option("--data", default=None, help="Validation data for the accuracy check (skipped without it).")
@click.option("--max-images", type=click.IntRange(1), default=None, help="Class-balanced subset for the accuracy check.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images / unlistable folders of --data (listed).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="Runtime threads for both models.")
@click.option("--device", default="cpu", show_default=True, help="Runner device.")
@click.option("--stored-noise", default=1.5, show_default=True, type=click.FloatRange(1),
              help="Extra tolerance factor when the baseline is a stored bench JSON.")
@click.option("--json", "json_out", default=None, metavar="PATH", help="Write the JSON result here ('-' = stdout).")
@quiet_option
def gate(baseline, candidate, max_latency_regression, max_accuracy_drop, metric, rounds, max_rounds, sessions,
         block_time, on_inconclusive, data, max_images, skip_bad, threads, device, stored_noise, json_out):
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
    cfg = G.GateConfig(max_latency_regression=max_latency_regression, max_accuracy_drop=max_accuracy_drop,
                       metric=metric, rounds=rounds, max_rounds=max_rounds, sessions=sessions, block_time_s=block_time,
                       on_inconclusive=on_inconclusive, data=data, max_images=max_images, skip_bad=skip_bad,
                       threads=threads,
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
                acc = r["accuracy"]
                parts.append(f"{r['name']} top-1 -{acc['drop']:.2f} pt"
                             + (f" (candidate is {acc['label']})" if acc.get("label") else ""))
            if r["status"] != "ok":
                parts.append(f"{r['name']} {r['status']}: {r['reason']}")
        raise CheckFailed("regression: " + "; ".join(parts))
    return 0
