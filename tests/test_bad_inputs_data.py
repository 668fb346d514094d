"""Bad data trees, images and checkpoints: one line on stderr, exit 2, no traceback, nothing written; and the one
image decoder converting every Pillow mode correctly (issue 14: symlinks, 16-bit PNGs, truncated JPEGs,
random-bytes checkpoints; issue 13: split folder names)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecv.data.datasets import load_eval_dataset, load_train_val
from edgecv.data.decode import BACKGROUND, ImageError, ImageTooLarge, decode_image, image_problem, probe_image
from edgecv.data.scan import check_disjoint
from edgecv.errors import UserError
from edgecv.models.checkpoint import load_checkpoint
from edgecv.models.registry import create_model
from tests.conftest import make_image_folder, one_line_error, save_untrained_teacher

CLASSES = ["cat", "dog", "fox"]
TRAIN = ["--arch", "resnet18", "--epochs", "1", "--img-size", "16", "--batch-size", "16", "--workers", "0",
         "--quiet"]


def _tree(tmp_path: Path, name: str = "d", **kw) -> Path:
    return make_image_folder(tmp_path / name, classes=tuple(CLASSES), **kw)


def _truncate(path: Path, keep: float = 0.6) -> None:
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])


def _big_jpeg(path: Path) -> Path:
    a = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def teacher16(tmp_path_factory) -> Path:
    return save_untrained_teacher(tmp_path_factory.mktemp("t") / "t.pt", CLASSES, 16)


# ---------------------------------------------------------------------------------------------- CLI: data trees
def test_train_directory_link_back_into_tree(cli, tmp_path):
    """The issue's repro: cat/loop -> .. made 36 files into 1,476 samples; now one line, nothing trained."""
    root = _tree(tmp_path)
    os.symlink("..", root / "train" / "cat" / "loop")
    out = tmp_path / "m.pt"
    line = one_line_error(cli("train", "--data", str(root), *TRAIN, "--out", str(out)), 2, "leads back into the data tree")
    assert "loop" in line
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_eval_directory_link_back_into_tree(cli, tmp_path, teacher16):
    root = _tree(tmp_path)
    os.symlink("../../train", root / "val" / "dog" / "more")
    cm = tmp_path / "cm.png"
    one_line_error(cli("eval", str(teacher16), "--data", str(root), "--confusion", str(cm)), 2, "leads back into")
    assert not cm.exists()


def test_train_file_in_two_classes(cli, tmp_path):
    root = _tree(tmp_path)
    os.symlink(root / "train" / "dog" / "001.jpg", root / "train" / "cat" / "dog1.jpg")
    out = tmp_path / "m.pt"
    line = one_line_error(cli("train", "--data", str(root), *TRAIN, "--out", str(out)), 2, "in both class 'cat' and class 'dog'")
    assert "001.jpg" in line and not out.exists()


def test_train_file_in_two_splits(cli, tmp_path):
    root = _tree(tmp_path)
    os.symlink(root / "val" / "cat" / "001.jpg", root / "train" / "cat" / "v1.jpg")
    one_line_error(cli("train", "--data", str(root), *TRAIN, "--out", str(tmp_path / "m.pt")), 2,
              "in both the train and the val split")


def test_train_unknown_split_folder(cli, tmp_path):
    root = _tree(tmp_path)
    (root / "dev").mkdir()
    line = one_line_error(cli("train", "--data", str(root), *TRAIN, "--out", str(tmp_path / "m.pt")), 2, "unknown: dev")
    assert "train/" in line and "validation/" in line and "test/" in line


def test_train_skip_bad_skips_truncated_jpeg(cli, tmp_path):
    """verify() passes a truncated JPEG; loading fails: the scan must find it, and --skip-bad must skip it."""
    root = _tree(tmp_path, n_train=6, n_val=2)
    bad = _big_jpeg(root / "train" / "dog" / "big.jpg")
    _truncate(bad)
    out = tmp_path / "m.pt"
    line = one_line_error(cli("train", "--data", str(root), *TRAIN, "--out", str(out)), 2, "--skip-bad")
    assert "big.jpg" in line and "truncated" in line and not out.exists()
    r = cli("train", "--data", str(root), *TRAIN, "--skip-bad", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.is_file() and "Traceback" not in r.stderr


def test_eval_skip_bad_skips_truncated_jpeg(cli, tmp_path, teacher16):
    root = _tree(tmp_path)
    _truncate(_big_jpeg(root / "val" / "fox" / "big.jpg"))
    cm = tmp_path / "cm.png"
    one_line_error(cli("eval", str(teacher16), "--data", str(root), "--confusion", str(cm)), 2, "1 unreadable image")
    assert not cm.exists()
    r = cli("eval", str(teacher16), "--data", str(root), "--skip-bad", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["n"] == 12


def test_eval_uses_test_split(cli, tmp_path, teacher16):
    """train/ + validation/ + test/: eval on the root scores test/ (issue 13)."""
    root = _tree(tmp_path)
    (root / "val").rename(root / "validation")
    make_image_folder(tmp_path / "t", classes=tuple(CLASSES), n_train=2, n_val=0, seed=5)
    (tmp_path / "t" / "train").rename(root / "test")
    r = cli("eval", str(teacher16), "--data", str(root), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    assert rep["n"] == 6 and rep["data_split"] == "test"
    r = cli("eval", str(teacher16), "--data", str(root))
    assert r.returncode == 0 and "(test split)" in r.stderr, r.stderr[-3000:]


def test_eval_train_only_has_nothing_to_evaluate(cli, tmp_path, teacher16):
    root = _tree(tmp_path)
    for c in CLASSES:
        for f in (root / "val" / c).iterdir():
            f.unlink()
        (root / "val" / c).rmdir()
    (root / "val").rmdir()
    one_line_error(cli("eval", str(teacher16), "--data", str(root)), 2, "no val/")


# ---------------------------------------------------------------------------------------------- CLI: checkpoints
@pytest.mark.parametrize("trust", [False, True])
def test_random_bytes_checkpoint(cli, tmp_path, trust):
    f = tmp_path / "rand.pt"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    args = ["eval", str(f), "--data", "digits"] + (["--trust-pickle"] if trust else [])
    line = one_line_error(cli(*args), 2, "not a PyTorch checkpoint")
    assert "--trust-pickle" not in line


def test_trusted_pickle_that_cannot_load_is_one_line(cli, tmp_path):
    """A pickle whose class is not importable here: with --trust-pickle, one line (no UnpicklingError trace)."""
    import zipfile

    f = tmp_path / "obj.pt"
    torch.save({"x": 1}, f)
    with zipfile.ZipFile(f) as z:
        contents = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in contents if n.endswith("data.pkl"))
    contents[pkl] = b"\x80\x02cedgecv_missing_module\nGhost\n)\x81."  # an instance of a class not importable here
    with zipfile.ZipFile(f, "w") as z:
        for n, data in contents.items():
            z.writestr(n, data)
    one_line_error(cli("eval", str(f), "--data", "digits"), 2, "--trust-pickle")
    one_line_error(cli("eval", str(f), "--data", "digits", "--trust-pickle"), 2, "cannot load it even with --trust-pickle")


# ---------------------------------------------------------------------------------------------- library: trees
def test_split_aliases_are_the_validation_split(tmp_path):
    for alias in ("valid", "validation"):
        root = _tree(tmp_path, alias)
        (root / "val").rename(root / alias)
        b = load_train_val(str(root), img_size=16)
        assert len(b.train) == 36 and len(b.val) == 12 and b.val.folder.endswith(alias)
        ds = load_eval_dataset(str(root), CLASSES)
        assert ds.split == "val" and len(ds) == 12


def test_two_validation_folders_are_ambiguous(tmp_path):
    root = _tree(tmp_path)
    (root / "valid").mkdir()
    with pytest.raises(UserError, match="keep one validation split"):
        load_train_val(str(root))


def test_test_split_kept_out_of_training_and_disjoint(tmp_path):
    root = _tree(tmp_path, split=True)
    (root / "val").rename(root / "test")  # train/ + test/: validation is split off train, test stays out
    b = load_train_val(str(root), img_size=16)
    assert len(b.train) + len(b.val) == 36
    assert not {p.resolve() for p, _ in b.train.samples} & {p.resolve() for p in (root / "test").rglob("*.*")}
    ds = load_eval_dataset(str(root), CLASSES)
    assert ds.split == "test" and len(ds) == 12
    os.symlink(root / "train" / "cat" / "000.png", root / "test" / "cat" / "leak.png")
    with pytest.raises(UserError, match="in both the"):
        load_eval_dataset(str(root), CLASSES)
    with pytest.raises(UserError, match="in both the"):
        load_train_val(str(root))


def test_links_leading_out_of_the_tree_are_fine(tmp_path):
    root = _tree(tmp_path)
    outside = make_image_folder(tmp_path / "extra", classes=("cat",), n_train=3, n_val=0, seed=1)
    os.symlink(outside / "train" / "cat", root / "train" / "cat" / "more")  # a directory outside the tree
    other = make_image_folder(tmp_path / "extra2", classes=("dog",), n_train=1, n_val=0, seed=2)
    os.symlink(other / "train" / "dog" / "000.png", root / "train" / "dog" / "x.png")  # a file outside
    b = load_train_val(str(root), img_size=16)
    assert len(b.train) == 36 + 3 + 1


def test_second_link_to_one_directory_is_an_error(tmp_path):
    root = _tree(tmp_path)
    outside = make_image_folder(tmp_path / "extra", classes=("cat",), n_train=3, n_val=0)
    os.symlink(outside / "train" / "cat", root / "train" / "cat" / "a")
    os.symlink(outside / "train" / "cat", root / "train" / "dog" / "b")
    with pytest.raises(UserError, match="same directory as"):
        load_train_val(str(root))


def test_same_file_twice_in_one_class_counts_once(tmp_path):
    root = _tree(tmp_path)
    os.symlink(root / "train" / "cat" / "000.png", root / "train" / "cat" / "again.png")
    assert len(load_train_val(str(root), img_size=16).train) == 36


def test_flat_layout_duplicate_across_classes(tmp_path):
    root = _tree(tmp_path, split=False)
    os.link(root / "cat" / "001.jpg", root / "fox" / "hard.jpg")  # a hard link: same file, other class
    with pytest.raises(UserError, match="in both class"):
        load_train_val(str(root))


def test_check_disjoint_names_both_paths(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    with pytest.raises(UserError) as e:
        check_disjoint({"train": [(a, 0)], "val": [(tmp_path / "." / "a.png", 0)]})
    assert "train" in str(e.value) and "val" in str(e.value)


def test_sixteen_bit_pngs_train_on_real_pixels(tmp_path):
    """16-bit PNGs used to become all-white; now they carry the scaled image."""
    root = tmp_path / "d16"
    rng = np.random.default_rng(0)
    for sp, n in (("train", 4), ("val", 2)):
        for ci, c in enumerate(CLASSES):
            (root / sp / c).mkdir(parents=True)
            for i in range(n):
                a = np.clip(rng.normal(10000 * (ci + 1), 2000, (16, 16)), 0, 65535).astype(np.uint16)
                Image.fromarray(a).save(root / sp / c / f"{i}.png")
    b = load_train_val(str(root), img_size=16)
    means = [np.asarray(b.train.load_image(i)).mean() for i in range(len(b.train))]
    assert max(means) < 250 and min(means) > 5
    assert np.mean(means[:4]) < np.mean(means[4:8]) < np.mean(means[8:])  # class brightness survives


# ---------------------------------------------------------------------------------------------- decode_image
def _png_bytes(im: Image.Image) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG")
    return b.getvalue()


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_decode_wide_grey_scales(mode):
    a = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    im = Image.fromarray(a) if mode == "I;16" else (
        Image.frombytes("I;16B", (2, 2), a.astype(">u2").tobytes()) if mode == "I;16B" else
        Image.fromarray(a.astype(np.int32)))
    assert im.mode == mode
    out = np.asarray(decode_image(im))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 100], [255, 200]]


def test_decode_16bit_png_file_is_not_clipped():
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = np.asarray(decode_image(_png_bytes(Image.fromarray(a))))[..., 0]
    assert np.array_equal(out, np.rint(a / 257).astype(np.uint8))


@pytest.mark.parametrize("values,expected", [((0.0, 0.5, 1.0), (0, 128, 255)), ((0.0, 100.0, 255.0), (0, 100, 255)),
                                             ((0.0, 257.0 * 3, 65535.0), (0, 3, 255))])
def test_decode_float_picks_its_range(values, expected):
    im = Image.fromarray(np.array([values], dtype=np.float32))
    assert im.mode == "F"
    assert tuple(np.asarray(decode_image(im))[0, :, 0].tolist()) == expected


def test_decode_alpha_composites_on_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    out = decode_image(_png_bytes(rgba))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == BACKGROUND and out.getpixel((1, 0)) == (255, 0, 0)
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert decode_image(half).getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.parametrize("mode", ["LA", "PA", "La", "RGBa"])
def test_decode_other_alpha_modes(mode):
    im = Image.new("RGBA", (1, 1), (0, 0, 0, 0)).convert(mode) if mode != "La" else Image.new("La", (1, 1), (0, 0))
    assert decode_image(im).getpixel((0, 0)) == BACKGROUND


def test_decode_palette_with_and_without_transparency():
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((1, 0), 1)
    assert decode_image(_png_bytes(p)).getpixel((1, 0)) == (200, 100, 50)
    p.info["transparency"] = 0
    out = decode_image(_png_bytes(p))
    assert out.getpixel((0, 0)) == BACKGROUND and out.getpixel((1, 0)) == (200, 100, 50)


def test_decode_cmyk_one_bit_grey_and_lab():
    assert decode_image(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    b = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(b, "JPEG")
    r, g, _ = decode_image(b.getvalue()).getpixel((4, 4))
    assert r > 200 and g < 60
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    out = decode_image(_png_bytes(one))
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)
    assert decode_image(Image.new("L", (1, 1), 77)).getpixel((0, 0)) == (77, 77, 77)
    lab = decode_image(Image.new("LAB", (1, 1), (255, 128, 128))).getpixel((0, 0))
    assert min(lab) > 245


def test_decode_plain_rgb_is_returned_as_is_and_files_are_copies(tmp_path):
    im = Image.new("RGB", (3, 3), (1, 2, 3))
    assert decode_image(im) is im
    f = tmp_path / "a.png"
    im.save(f)
    out = decode_image(f)
    assert out.getpixel((0, 0)) == (1, 2, 3) and out.load() is not None  # usable after the file is closed


def test_decode_applies_exif_orientation():
    im = Image.new("RGB", (4, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    b = io.BytesIO()
    im.save(b, "JPEG", exif=exif.tobytes())
    assert decode_image(b.getvalue()).size == (2, 4)


def test_decode_errors_are_one_line(tmp_path):
    with pytest.raises(ImageError, match="not an image") as e:
        decode_image(b"definitely not an image", name="upload.jpg")
    assert "upload.jpg" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageError, match="no such file"):
        decode_image(tmp_path / "nope.png")
    t = _big_jpeg(tmp_path / "t.jpg")
    _truncate(t, 0.9)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(t)
    assert "truncated" in image_problem(t)
    assert image_problem(_big_jpeg(tmp_path / "ok.jpg")) is None
    assert issubclass(ImageError, UserError)


def test_probe_reports_size_before_decoding(tmp_path):
    f = _big_jpeg(tmp_path / "p.jpg")
    info = probe_image(f)
    assert (info.width, info.height, info.format, info.pixels) == (80, 64, "JPEG", 80 * 64)
    assert probe_image(f.read_bytes()).width == 80
    with pytest.raises(ImageTooLarge, match="5,120 pixels"):
        probe_image(f, max_pixels=1000)
    with pytest.raises(ImageTooLarge):
        decode_image(f, max_pixels=1000)
    with pytest.raises(ImageError, match="not an image"):
        probe_image(b"\x00" * 100)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_bare_state_dict_message_names_the_callers_flag(tmp_path):
    f = tmp_path / "sd.pt"
    torch.save(create_model("resnet18", 3).state_dict(), f)
    with pytest.raises(UserError, match="pass --teacher-arch"):
        load_checkpoint(f, arch_flag="--teacher-arch")
    with pytest.raises(UserError, match="pass --arch"):
        load_checkpoint(f)


@pytest.mark.parametrize("content,needle", [(b"", "an empty file"), (b"PK\x03\x04truncated zip", "truncated"),
                                            (b"\x80\x04garbage pickle", "not a PyTorch checkpoint")])
def test_non_torch_files(tmp_path, content, needle):
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    for trust in (False, True):
        with pytest.raises(UserError, match=needle) as e:
            load_checkpoint(f, trust_pickle=trust)
        assert "\n" not in str(e.value) and "--trust-pickle" not in str(e.value)


def test_damaged_edgecv_checkpoint(tmp_path):
    from edgecv.models.checkpoint import FORMAT

    f = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "arch": "resnet18"}, f)
    with pytest.raises(UserError, match="damaged edgecv checkpoint"):
        load_checkpoint(f)
