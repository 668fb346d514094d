"""edgecv export: a run directory or checkpoint to a validated bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgecv.cli._common import echo, emit_json, json_option, log, quiet_option
from edgecv.utils import check_writable


@click.command()
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
@click.option("--force", is_flag=True, help="Clear a non-empty --out that is not this source's bundle.")
@click.option("--triton-repo", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also write a Triton model repository from the bundle (with --verify: from SOURCE).")
@json_option
@quiet_option
def export(source, target, precision, img_size, opset, data, num_val, num_calib, stage, threads, simplify, no_validate,
           verify, trust_pickle, out, force, triton_repo, as_json):
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
      edgecv export bundle/ --verify --triton-repo triton_repo/
    """
    from edgecv.errors import CheckFailed, UserError

    if triton_repo:
        check_writable(triton_repo, directory=True)
    if verify:
        from edgecv.contracts.manifest import verify_bundle

        rep = verify_bundle(source)
        if rep["ok"] and triton_repo:
            rep["triton_repo"] = _triton(source, triton_repo)
        if as_json:
            emit_json(rep)
        else:
            for r in rep["artifacts"]:
                echo(f"  {r['artifact']:16s} {r['status']}" + (f": {r['error']}" if r.get("error") else ""))
        if not rep["ok"]:
            # the same meaning as in bench and gate: a bundle that does not match its manifest is bad input (2)
            raise UserError(f"{len(rep['mismatched'])} artifact(s) do not match the manifest: {', '.join(rep['mismatched'])}")
        return
    if not out:
        raise UserError("--out BUNDLE_DIR is required")
    from edgecv.export.bundle import ExportOptions, export_bundle, parse_precisions

    opts = ExportOptions(target=target, precisions=parse_precisions(precision), img_size=img_size, opset=opset,
                         data=data, num_val=num_val, num_calib=num_calib, stage=stage, trust_pickle=trust_pickle,
                         threads=threads, simplify=simplify, validate=not no_validate, force=force)
    res = export_bundle(source, out, opts, log=log)
    made = _triton(res.bundle, triton_repo) if triton_repo else None
    if as_json:
        emit_json(res.to_dict() | ({"triton_repo": made} if triton_repo else {}))
    else:
        n_ok = sum(1 for e in res.manifest.artifacts if e.status == "ok")
        echo(f"bundle {res.bundle}: {n_ok}/{len(res.manifest.artifacts)} artifacts ok, manifest.json written "
             f"({res.wall_s:.1f}s)")
    if res.failed:
        raise CheckFailed(f"{len(res.failed)} artifact(s) failed: {', '.join(res.failed)}")


def _triton(bundle, repo) -> list[str]:
    from edgecv.export.triton import write_triton_repo

    made = [str(d) for d in write_triton_repo(bundle, repo)]
    log(f"triton repository {repo}: {', '.join(Path(d).name for d in made)} (config.pbtxt validated)")
    return made
