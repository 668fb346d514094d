from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecv.data.datasets import load_eval_dataset, load_train_val, sample_calibration
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from tests.conftest import make_image_folder


def test_imagefolder_train_val(tiny_folder):
    b = load_train_val(str(tiny_folder), img_size=16)
    assert b.class_names == ["blue", "green", "red"]
    assert len(b.train) == 36 and len(b.val) == 12
    x, y = b.train.with_transform(b.preprocess.eval_transform())[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 3


def test_corrupt_image_listed_then_skipped(tiny_folder):
    bad = tiny_folder / "train" / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError) as e:
        load_train_val(str(tiny_folder), img_size=16)
    assert str(bad) in str(e.value) and "--skip-bad" in str(e.value)
    b = load_train_val(str(tiny_folder), img_size=16, skip_bad=True)
    assert len(b.train) == 36
    assert any("broken.jpg" in s for s in b.bad_images)


def test_auto_split_is_deterministic_and_stratified(tmp_path):
    root = make_image_folder(tmp_path / "flat", n_train=16, n_val=4, split=False)
    a = load_train_val(str(root), img_size=16, seed=3)
    b = load_train_val(str(root), img_size=16, seed=3)
    c = load_train_val(str(root), img_size=16, seed=4)
    paths = lambda ds: [str(p) for p, _ in ds.samples]  # noqa: E731
    assert paths(a.val) == paths(b.val) and paths(a.train) == paths(b.train)
    assert paths(a.val) != paths(c.val)
    assert not set(paths(a.val)) & set(paths(a.train))
    assert np.bincount(a.val.targets).tolist() == [4, 4, 4]  # 20 % of 20 per class


def test_empty_class_and_single_class_are_errors(tmp_path):
    root = make_image_folder(tmp_path / "d")
    (root / "train" / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        load_train_val(str(root))
    single = make_image_folder(tmp_path / "s", classes=("only",))
    with pytest.raises(UserError, match="single class"):
        load_train_val(str(single))


def test_bad_data_paths(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_train_val(str(tmp_path / "missing"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        load_train_val(str(f))


def test_digits_builtin():
    b = load_train_val("digits")
    assert b.num_classes == 10 and len(b.train) + len(b.val) == 1797
    assert b.preprocess.input_size == 32 and not b.preprocess.hflip
    x, _ = b.val.with_transform(b.preprocess.eval_transform())[0]
    assert x.shape == (3, 32, 32)


def test_eval_dataset_matches_classes_by_name(tiny_folder):
    # the model knows the classes in another order and one more class: labels follow the names
    names = ["red", "green", "blue", "yellow"]
    ds = load_eval_dataset(str(tiny_folder), names)
    assert len(ds) == 12
    for path, y in ds.samples:
        assert Path(path).parent.name == names[y]
    with pytest.raises(UserError, match="unknown to the model"):
        load_eval_dataset(str(tiny_folder), ["red", "green"])


def test_eval_dataset_without_val_uses_everything(tmp_path):
    root = make_image_folder(tmp_path / "test", n_train=3, n_val=2, split=False)
    assert len(load_eval_dataset(str(root), ["blue", "green", "red"])) == 15


def test_preprocess_roundtrip_and_crop():
    p = Preprocess(input_size=8, crop_pct=0.5, mean=(0.1, 0.2, 0.3))
    q = Preprocess.from_dict(p.to_dict())
    assert q == p and q.resize_size == 16
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 20, 3), dtype=np.uint8))
    a = p.to_array(img)
    assert a.shape == (3, 8, 8) and a.dtype == np.float32
    assert np.array_equal(a, p.eval_transform()(img).numpy())


def test_calibration_sample_is_stratified(tiny_folder):
    b = load_train_val(str(tiny_folder), img_size=16)
    cal = sample_calibration(b.train, 9, seed=0)
    assert len(cal) == 9 and sorted(np.bincount(cal.targets).tolist()) == [3, 3, 3]


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_normalise_table_is_bit_identical_to_the_arithmetic(order):
    """The lookup-table path of ``to_array`` gives exactly ``(v / 255 - mean) / std`` in float32 for every 8-bit
    level of every channel (both channel orders), and a non-default mean/std gets its own table."""
    for mean, std in [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.25, 0.1), (0.3, 0.7, 1.9))]:
        pre = Preprocess(input_size=16, mean=mean, std=std, channel_order=order)
        levels = np.arange(256, dtype=np.uint8)
        a = np.stack([levels, levels[::-1], np.roll(levels, 7)], axis=1).reshape(16, 16, 3)
        got = pre.to_array(Image.fromarray(a))
        f = a.astype(np.float32) / np.float32(255.0)
        if order == "BGR":
            f = f[..., ::-1]
        want = ((f - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)
        assert got.dtype == np.float32 and got.shape == (3, 16, 16) and got.flags["C_CONTIGUOUS"]
        assert np.array_equal(got, want)
