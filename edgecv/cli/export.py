"""edgecv export: a run directory or checkpoint to a validated bundle.

The export's options are generated from the fields of :class:`~edgecv.export.config.ExportOptions` (their
defaults, ranges and help are declared there once). Written here by hand, because they are not options of an
export but of the command: ``--verify`` (a different action: re-hash an existing bundle), ``--out`` (the
bundle folder, a positional argument of the library call, and optional with ``--verify``), ``--triton-repo``
(a second writer run on the finished bundle) and ``--json``/``--quiet`` (how the command prints).
"""

from __future__ import annotations

from pathlib import Path

import click

from edgecv.cli._common import config_options, echo, emit_json, json_option, log, quiet_option
from edgecv.export.config import ExportOptions
from edgecv.utils import check_writable


@click.command()
@click.argument("source", type=click.Path())
@config_options(ExportOptions, defaults={}, dests={"precisions": "precision", "validate": "no_validate"}, before={
    "trust_pickle": [click.option("--verify", is_flag=True,
                                  help="SOURCE is an existing bundle: re-hash its artifacts against manifest.json.")],
    "force": [click.option("--out", default=None, type=click.Path(file_okay=False),
                           help="Bundle directory (required unless --verify).")]})
@click.option("--triton-repo", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also write a Triton model repository from the bundle (with --verify: from SOURCE).")
@json_option
@quiet_option
def export(source, verify, out, triton_repo, as_json, **options):
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
    from edgecv.export.bundle import export_bundle

    res = export_bundle(source, out, ExportOptions(**options), log=log)
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
