"""edgecv predict: classify image files with a bundle's artifact."""

from __future__ import annotations

import csv
from pathlib import Path

import click

from edgecv.cli._common import echo, emit_json, log, quiet_option


def _write_csv(path: Path, rows: list[dict], topk: int) -> None:
    from edgecv.utils import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "index", "score", "topk"])
        for r in rows:
            w.writerow([r["file"], r["label"], r["index"], f"{r['score']:.6f}",
                        ";".join(f"{t['label']}:{t['score']:.6f}" for t in r["topk"][:topk])])


@click.command()
@click.argument("source", type=click.Path())
@click.argument("paths", nargs=-1, required=True)
@click.option("--artifact", default="auto", show_default=True,
              help="'auto' (fastest validated artifact here, the bench rule) or format-precision, e.g. onnx-int8.")
@click.option("--bench-json", type=click.Path(exists=True, dir_okay=False),
              help="With --artifact auto: take the recommendation of this 'edgecv bench --json' result.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="Runtime threads (default: runtime's).")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON on stdout.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the predictions to this CSV file.")
@click.option("--skip-bad", is_flag=True,
              help="Unreadable images, folders that cannot be listed and named folders with no image are listed on "
                   "stderr but do not make the exit code 2.")
@quiet_option
def predict(source, paths, artifact, bench_json, topk, batch_size, threads, as_json, csv_path, skip_bad):
    """Classify images (files, folders searched recursively, globs) with BUNDLE (or an ARTIFACT inside one).

    One row per image: file, label, score. Inside folders, files of a type the decoder does not read are counted
    per folder on stderr. A folder that cannot be listed, a folder or pattern that yields no image and an
    unreadable image are listed on stderr; exit 2 unless --skip-bad.
    """
    from edgecv.data.scan import list_inputs
    from edgecv.errors import UserError
    from edgecv.serve.images import predict_paths
    from edgecv.serve.predictor import load_predictor
    from edgecv.utils import check_writable

    if csv_path:
        check_writable(csv_path)  # fail before loading and predicting
    files, scan = list_inputs(list(paths))
    scan.check(skip_bad)  # before loading the model: one line naming what could not be listed or held nothing
    if not files:
        raise UserError(f"no image to classify in {' '.join(paths)}")
    for line in scan.lines():
        echo(line)
    pred = load_predictor(source, artifact=artifact, threads=threads, bench_json=bench_json, log=log)
    try:
        d = pred.describe()
        log(f"predict: {len(files)} image(s) with {d['artifact']} ({d['runtime']}, sha256 {d['sha256'][:12]})")
        rows, bad = predict_paths(pred, files, batch_size=batch_size, topk=topk)
    finally:
        pred.close()
    if csv_path:
        _write_csv(Path(csv_path), rows, topk)
    if as_json:
        emit_json({"artifact": d["artifact"], "sha256": d["sha256"], "runtime": d["runtime"],
                   "selection": d["selection"], "predictions": rows, "bad": bad, "scan": scan.to_dict()})
    elif not csv_path:
        for r in rows:
            click.echo(f"{r['file']}\t{r['label']}\t{r['score']:.4f}")
    for b in bad:
        echo(f"unreadable: {b['error']}")
    if bad:
        echo(f"{len(bad)} of {len(files)} image(s) could not be read" + ("" if skip_bad else " (exit 2; --skip-bad)"))
        return 0 if skip_bad else 2
    return 0
