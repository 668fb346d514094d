"""The bundle folder export writes into: what it may overwrite, leftovers of an interrupted export, stale files.

A non-empty ``--out`` must be a bundle (or an interrupted export) of the same source: its ``manifest.json``
(or the ``.tmp/source.json`` an export writes first) names the source by path or sha256. Anything else is
refused unless ``force`` (``--force``), which clears the folder. A re-export removes the previous bundle's
files that the new manifest no longer lists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgecv.contracts.formats import subdirs
from edgecv.contracts.manifest import MANIFEST, Manifest
from edgecv.errors import UserError

TMP = ".tmp"
SOURCE_MARK = f"{TMP}/source.json"


def _owner(out: Path) -> dict | None:
    """The source recorded by the bundle (or interrupted export) in ``out``, if any."""
    for f, key in ((out / MANIFEST, "source"), (out / SOURCE_MARK, None)):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        d = d.get(key) if key else d
        if isinstance(d, dict):
            return d
    return None


def _same_source(owner: dict, src) -> bool:
    if owner.get("sha256") and owner.get("sha256") == src.sha256:
        return True
    try:
        return Path(str(owner.get("path"))).resolve() == Path(src.path).resolve()
    except (OSError, ValueError):
        return False


def check_out_dir(out: Path, src, force: bool) -> None:
    """Refuse an ``out`` export must not write into (before any work)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    rsrc, rout = Path(src.path).resolve(), out.resolve()
    if rsrc == rout or rout in rsrc.parents:
        raise UserError(f"--out {out}: the source {src.path} is inside it; choose another --out")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    owner = _owner(out)
    if owner is None:
        raise UserError(f"--out {out}: not empty and not an edgecv export bundle; choose another --out "
                        f"(or pass --force to clear it)")
    if not _same_source(owner, src):
        raise UserError(f"--out {out}: holds the export bundle of another model ({owner.get('path')}); choose "
                        f"another --out (or pass --force to replace it)")


def clean_leftovers(out: Path) -> None:
    """Temp files and folders an interrupted export (kill -9) leaves behind."""
    shutil.rmtree(out / TMP, ignore_errors=True)
    for sub in subdirs():
        d = out / sub
        if not d.is_dir():
            continue
        for p in d.glob(".ov.*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in (*d.glob(".*.tmp"), *d.glob("*.raw.onnx")):
            if p.is_file():
                p.unlink(missing_ok=True)


def prepare_out_dir(out: Path, src, force: bool) -> set[str]:
    """Create / clear ``out`` for a new export; returns the files of the bundle it replaces (relative paths)."""
    out.mkdir(parents=True, exist_ok=True)
    old: set[str] = set()
    if force:
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    elif (out / MANIFEST).is_file():
        try:
            man = Manifest.from_dict(json.loads((out / MANIFEST).read_text()))
            old = {f for a in man.artifacts for f in a.files()}
        except (ValueError, TypeError, UserError):
            pass
        (out / MANIFEST).unlink()  # a half-finished re-export must not look like a valid bundle
    clean_leftovers(out)
    (out / TMP).mkdir()
    (out / SOURCE_MARK).write_text(json.dumps({"path": str(src.path), "sha256": src.sha256}))
    return old


def remove_stale(out: Path, old: set[str], man: Manifest) -> None:
    """Delete the replaced bundle's files the new manifest does not list."""
    new = {f for a in man.artifacts for f in a.files()}
    for f in old - new:
        p = (out / f).resolve()
        if p.is_file() and out.resolve() in p.parents:
            p.unlink()
