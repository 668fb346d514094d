"""edgecv predict: classify image files with a bundle's artifact.

The options are generated from the fields of :class:`~edgecv.serve.config.PredictConfig` (declared there once);
``--json`` and ``--csv`` (what the command prints and writes) are written here by hand.
"""

from __future__ import annotations

import csv
from pathlib import Path

import click

from edgecv.cli._common import config_options, echo, emit_json, log, quiet_option
from edgecv.serve.config import PredictConfig


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
@config_options(PredictConfig, defaults={}, before={"skip_bad": [
    click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON on stdout."),
    click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the predictions to this CSV file."),
]})
@quiet_option
def predict(source, paths, as_json, csv_path, **options):
    """Classify images (files, folders searched recursively, globs) with BUNDLE (or an ARTIFACT inside one).

    One row per image: file, label, score. Inside folders, files of a type the decoder does not read are counted
    per folder on stderr. A folder that cannot be listed, a folder or pattern that yields no image and an
    unreadable image are listed on stderr; exit 2 unless --skip-bad.
    """
    from edgecv.serve.images import classify
    from edgecv.utils import check_writable

    if csv_path:
        check_writable(csv_path)  # fail before loading and predicting
    cfg = PredictConfig(**options)
    res = classify(source, list(paths), cfg, log=log, warn=echo)
    rows, bad, n = res["predictions"], res["bad"], len(res["predictions"]) + len(res["bad"])
    if csv_path:
        _write_csv(Path(csv_path), rows, cfg.topk)
    if as_json:
        emit_json(res)
    elif not csv_path:
        for r in rows:
            click.echo(f"{r['file']}\t{r['label']}\t{r['score']:.4f}")
    for b in bad:
        echo(f"unreadable: {b['error']}")
    if bad:
        echo(f"{len(bad)} of {n} image(s) could not be read" + ("" if cfg.skip_bad else " (exit 2; --skip-bad)"))
        return 0 if cfg.skip_bad else 2
    return 0
