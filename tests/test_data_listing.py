"""One listing rule for every command (issue 25, items 1-3): folders that cannot be listed, named folders with no
image, the decoder's readable types (GIFs inside folders), per-class counts of skipped files, and byte-identical
images under different names in two splits or classes.

Tests run as root here, and root reads a chmod 000 folder anyway. The commands that must fail to list one run
without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (``setpriv``), so the permission check is the kernel's, as for any
user; as a non-root user chmod 000 is enough and they run as they are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecv.data.datasets import load_eval_dataset, load_train_val
from edgecv.data.decode import IMAGE_EXTENSIONS, READABLE_FORMATS, decode_image
from edgecv.data.scan import Tree, list_inputs
from edgecv.errors import UserError
from tests.bench_util import ColourNet, make_bundle
from tests.conftest import make_image_folder, one_line_error, run_cli, save_untrained_teacher

CLASSES = ("red", "green", "blue")
DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]


def unprivileged(*args: str, **kw):
    """``edgecv ARGS`` as a process the file permissions apply to (root: DAC capabilities dropped)."""
    if os.geteuid() != 0:
        return run_cli(*args, **kw)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and util-linux 'setpriv' is missing: cannot make a folder unlistable for root")
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    return subprocess.run([*DROP_DAC, sys.executable, "-m", "edgecv", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(REPO))


@pytest.fixture
def locked(tmp_path):
    """A folder holding one image, chmod 000."""
    d = tmp_path / "locked"
    d.mkdir()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(d / "a.png")
    d.chmod(0)
    return d  # pytest's tmp_path clean-up restores permissions it needs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", model=ColourNet(), size=16)


def _png(path: Path, colour=(200, 40, 40), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), colour, np.uint8)).save(path, format=fmt)
    return path


# ------------------------------------------------------------------------------------ the decoder's types
@pytest.mark.parametrize("fmt", READABLE_FORMATS)
def test_every_listed_type_is_listed_and_decoded(tmp_path, fmt):
    exts = [e for e, f in Image.registered_extensions().items() if f == fmt and e in IMAGE_EXTENSIONS]
    if not exts:
        pytest.skip(f"this Pillow build cannot decode {fmt}")
    for i, ext in enumerate(exts):
        _png(tmp_path / f"{i}{ext.upper() if i % 2 else ext}", fmt=fmt)  # endings match in any case
    files = Tree(tmp_path).images(tmp_path)
    assert len(files) == len(exts)
    for f in files:
        assert decode_image(f).size == (20, 20)


def test_gif_inside_folders_is_read_and_other_types_are_counted_per_class(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    for i in range(4):  # the red class: half of it GIF
        _png(root / "train" / "red" / f"g{i}.gif", (210 + i, 30, 30), fmt="GIF")
    (root / "train" / "red" / "notes.txt").write_text("x")
    (root / "train" / "red" / "photo.heic-not").write_bytes(b"x")
    (root / "val" / "blue" / "labels.csv").write_text("x")
    b = load_train_val(str(root), img_size=16)
    assert sum(1 for p, _ in b.train.samples if p.suffix == ".gif") == 4 and len(b.train) == 16
    assert b.scan.skipped_types == {"train/red": {".heic-not": 1, ".txt": 1}, "val/blue": {".csv": 1}}
    assert any("train/red: .heic-not 1, .txt 1" in line for line in b.scan.lines())


def test_class_folder_with_only_unreadable_types_names_them(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=2, n_val=1)
    for f in (root / "train" / "green").iterdir():
        f.rename(f.with_suffix(".heic"))
    with pytest.raises(UserError, match=r"green holds no images \(skipped: .heic 2\)"):
        load_train_val(str(root))


# ------------------------------------------------------------------------------------ predict
def test_predict_all_gif_folder_and_skipped_types(bundle, tmp_path):
    d = tmp_path / "gifs"
    for i, c in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        _png(d / f"{i}.gif", c, fmt="GIF")
    (d / "readme.txt").write_text("x")
    p = run_cli("predict", str(bundle), str(d), "--json", check=True)
    out = json.loads(p.stdout)
    assert [r["label"] for r in out["predictions"]] == ["red", "green", "blue"]
    assert out["scan"]["skipped_types"] == {str(d): {".txt": 1}} and "readme" not in p.stdout
    assert f"in {d}: .txt 1" in p.stderr


def test_predict_empty_folder_exit_2_naming_it(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    line = one_line_error(run_cli("predict", str(bundle), str(tmp_path / "empty")), 2, "no image in 1 named folder")
    assert str(tmp_path / "empty") in line
    line = one_line_error(run_cli("predict", str(bundle), str(tmp_path / "docs")), 2, "other types: .txt 1")
    good = _png(tmp_path / "g" / "x.png")
    p = run_cli("predict", str(bundle), str(tmp_path / "empty"), str(good.parent), "--skip-bad", "--json")
    assert p.returncode == 0 and len(json.loads(p.stdout)["predictions"]) == 1
    assert f"no image in {tmp_path / 'empty'}" in p.stderr
    one_line_error(run_cli("predict", str(bundle), str(tmp_path / "empty"), "--skip-bad"), 2, "no image to classify")


def test_predict_dangling_link_names_it(bundle, tmp_path):
    os.symlink(tmp_path / "gone", tmp_path / "link")
    one_line_error(run_cli("predict", str(bundle), str(tmp_path / "link")), 2, "which does not exist")


def test_predict_unlistable_folder_and_subfolder(bundle, tmp_path, locked):
    good = _png(tmp_path / "top" / "ok.png")
    sub = tmp_path / "top" / "sub"
    locked.rename(sub)
    line = one_line_error(unprivileged("predict", str(bundle), str(tmp_path / "top")), 2, "cannot list 1 folder")
    assert str(sub) in line and "Permission denied" in line
    line = one_line_error(unprivileged("predict", str(bundle), str(sub)), 2, "cannot list 1 folder")
    assert str(sub) in line
    p = unprivileged("predict", str(bundle), str(tmp_path / "top"), "--skip-bad", "--json")
    assert p.returncode == 0, p.stderr
    assert [r["file"] for r in json.loads(p.stdout)["predictions"]] == [str(good)]
    assert f"skipped (--skip-bad): cannot list {sub}" in p.stderr


# ------------------------------------------------------------------------------------ train / eval
def test_train_and_eval_unlistable_subfolder_exit_2_then_skip_bad(tmp_path, locked):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    sub = root / "train" / "red" / "more"
    locked.rename(sub)
    args = ["--epochs", "0", "--img-size", "16", "--out", str(tmp_path / "m.pt")]
    line = one_line_error(unprivileged("train", "--data", str(root), *args), 2, "cannot list 1 folder")
    assert str(sub) in line
    p = unprivileged("train", "--data", str(root), *args, "--skip-bad")
    assert p.returncode == 2 and "no epoch to train" in p.stderr  # the data scan went on
    assert f"skipped (--skip-bad): cannot list {sub}" in p.stderr
    ck = save_untrained_teacher(tmp_path / "t.pt", sorted(CLASSES), 16)
    vsub = root / "val" / "green" / "more"
    sub.rename(vsub)
    line = one_line_error(unprivileged("eval", str(ck), "--data", str(root / "val")), 2, "cannot list 1 folder")
    assert str(vsub) in line


def test_unlistable_class_folder_is_an_error_even_with_skip_bad(tmp_path, locked):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=2, n_val=1)
    shutil.rmtree(root / "train" / "red")
    locked.rename(root / "train" / "red")
    one_line_error(unprivileged("train", "--data", str(root), "--epochs", "0", "--skip-bad"), 2,
                   f"class folder {root / 'train' / 'red'} cannot list")


# ------------------------------------------------------------------------------------ duplicates by content
def _copy(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())  # another file (inode), the same bytes


def test_byte_identical_train_val_copy_stops_unless_allowed(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    _copy(root / "train" / "red" / "001.jpg", root / "val" / "red" / "renamed.jpg")
    with pytest.raises(UserError) as e:
        load_train_val(str(root))
    msg = str(e.value)
    assert "1 byte-identical image(s)" in msg and "001.jpg (train/red)" in msg and "renamed.jpg (val/red)" in msg
    assert "--allow-duplicates" in msg
    b = load_train_val(str(root), allow_duplicates=True)
    d = b.scan.to_dict()
    assert d["duplicates"] == 1 and d["allow_duplicates"] and d["hashed"] == 3 * 6 + 1
    assert any("kept (--allow-duplicates)" in line for line in b.scan.lines())


def test_byte_identical_across_classes_and_test_split(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    _copy(root / "train" / "red" / "001.jpg", root / "train" / "blue" / "x.jpg")
    with pytest.raises(UserError, match=r"x.jpg \(train/blue\) = .*001.jpg \(train/red\)"):  # in scan order
        load_train_val(str(root))
    (root / "train" / "blue" / "x.jpg").unlink()
    (root / "test" / "red").mkdir(parents=True)
    _copy(root / "val" / "green" / "000.png", root / "test" / "red" / "t.png")
    for d in ("green", "blue"):
        _png(root / "test" / d / "t.png", (1, 2, 3) if d == "green" else (3, 2, 1))
    with pytest.raises(UserError, match=r"\(val/green\) = .*t.png \(test/red\)"):
        load_train_val(str(root))
    ck = ["red", "green", "blue"]
    with pytest.raises(UserError, match=r"\(test/red\) = .*\(val\)|\(val\) = .*\(test/red\)"):
        load_eval_dataset(str(root), ck)  # eval on test/: a copy of a val image
    assert len(load_eval_dataset(str(root), ck, allow_duplicates=True)) == 3


def test_auto_split_duplicates_in_one_class_are_caught_when_split_apart(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=10, n_val=0, split=False)
    for i in range(10):  # ten copies: the seeded split puts some in train, some in val
        _copy(root / "red" / "000.png", root / "red" / f"copy{i}.png")
    with pytest.raises(UserError, match=r"\(train/red\) = .*\(val/red\)|\(val/red\) = .*\(train/red\)"):
        load_train_val(str(root))


def test_same_bytes_in_one_class_of_one_split_are_fine(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    _copy(root / "train" / "red" / "001.jpg", root / "train" / "red" / "again.jpg")
    assert load_train_val(str(root)).scan.duplicates == []


def test_train_cli_duplicates_one_line_then_allowed_and_recorded(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    _copy(root / "train" / "red" / "001.jpg", root / "val" / "red" / "renamed.jpg")
    out = tmp_path / "m.pt"
    args = ["--data", str(root), "--arch", "resnet18", "--epochs", "1", "--img-size", "16", "--batch-size", "8",
            "--workers", "0", "--out", str(out), "--quiet"]
    one_line_error(run_cli("train", *args), 2, "byte-identical")
    assert not out.exists()
    res = json.loads(run_cli("train", *args, "--allow-duplicates", "--json", check=True).stdout)
    assert res["data_scan"]["allow_duplicates"] and res["data_scan"]["duplicates"] == 1
    from edgecv.models.checkpoint import load_checkpoint

    meta = load_checkpoint(out).meta["data_scan"]
    assert meta["allow_duplicates"] and "renamed.jpg" in meta["duplicate_pairs"][0][1]


def test_list_inputs_takes_named_files_whatever_their_name(tmp_path):
    f = _png(tmp_path / "photo.data", fmt="PNG")
    files, rep = list_inputs([str(f)])
    assert files == [f] and rep.empty == [] and rep.unlisted == []


def test_compress_and_eval_cli_duplicates_one_line(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    _copy(root / "train" / "red" / "001.jpg", root / "val" / "blue" / "renamed.jpg")
    out = tmp_path / "run"
    one_line_error(run_cli("compress", "--data", str(root), "--img-size", "16", "--out", str(out)), 2,
                   "--allow-duplicates")
    assert not (out / "run.json").exists()
    ck = save_untrained_teacher(tmp_path / "t.pt", sorted(CLASSES), 16)
    one_line_error(run_cli("eval", str(ck), "--data", str(root)), 2, "(val/blue)")
    rep = json.loads(run_cli("eval", str(ck), "--data", str(root), "--allow-duplicates", "--json", check=True).stdout)
    assert rep["data_scan"]["duplicates"] == 1 and rep["n"] == 7


@pytest.mark.parametrize("cmd", ["bench", "gate"])
def test_bench_and_gate_unlistable_subfolder_exit_2_then_skip_bad(cmd, bundle, tmp_path, locked):
    """bench and gate list --data by the rule of every command, with the --skip-bad their error line names."""
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=1, n_val=2, size=16)
    sub = root / "val" / "red" / "more"
    locked.rename(sub)
    run = {"bench": ["bench", str(bundle), "--min-time", "10ms", "--min-runs", "1", "--warmup", "0", "--rounds", "1"],
           "gate": ["gate", "--baseline", str(bundle), "--candidate", str(bundle), "--rounds", "2", "--max-rounds",
                    "2", "--sessions", "1", "--max-latency-regression", "100"]}[cmd]  # listing decides, not timing
    args = [*run, "--data", str(root), "--json", "-"]
    line = one_line_error(unprivileged(*args, "-q"), 2, "cannot list 1 folder")
    assert str(sub) in line and "--skip-bad" in line
    p = unprivileged(*args, "--skip-bad")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["artifacts"][0]["accuracy"]["n"] == 6
    assert f"skipped (--skip-bad): cannot list {sub}" in p.stderr


def test_compress_run_json_records_the_scan(tmp_path):
    """run.json (and --json) of a compress run carry the scan report: skipped types per class, duplicates kept."""
    root = make_image_folder(tmp_path / "d", classes=CLASSES, n_train=4, n_val=2)
    _png(root / "train" / "red" / "g.gif", (201, 40, 40), fmt="GIF")
    (root / "train" / "red" / "notes.txt").write_text("x")
    _copy(root / "train" / "red" / "001.jpg", root / "val" / "red" / "renamed.jpg")
    t = save_untrained_teacher(tmp_path / "t.pt", sorted(CLASSES), 16)
    out = tmp_path / "run"
    p = run_cli("compress", "--teacher", str(t), "--data", str(root), "--img-size", "16", "--stages", "distill",
                "--epochs-kd", "0", "--teacher-cache", "off", "--batch-size", "8", "--workers", "0",
                "--allow-duplicates", "--allow-weak-teacher", "--out", str(out), "--json", check=True)
    run = json.loads((out / "run.json").read_text())
    assert json.loads(p.stdout)["data_scan"] == run["data_scan"]
    scan = run["data_scan"]
    assert scan["skipped_types"] == {"train/red": {".txt": 1}} and scan["hashed"] == 3 * 6 + 2
    assert scan["allow_duplicates"] and scan["duplicates"] == 1 and run["config"]["allow_duplicates"]
    assert "data: skipped 1 file(s) of a type the decoder does not read in train/red: .txt 1" in p.stderr
