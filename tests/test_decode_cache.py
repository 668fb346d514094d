"""The decode cache (edgecv.data.cache): bit-identical to the live base step, invalidated by every input of
its key, atomic, shared by DataLoader workers and by concurrent processes, capped."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from edgecv.data import cache as C
from edgecv.data.datasets import ImageSamples, load_train_val
from edgecv.data.decode import ImageError, decode_image
from edgecv.data.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    """train/ + val/ of two classes, images of several sizes and aspect ratios (larger than the input size)."""
    monkeypatch.setenv("EDGECV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(C.MAX_GB_ENV, raising=False)
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (25, 50), (33, 33), (61, 20)]
    for split, n in (("train", 6), ("val", 3)):
        for c in ("ants", "bees"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(a).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    return tmp_path / "data"


def _cache_dirs(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache" / "decode"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _bases(ds: ImageSamples, pre: Preprocess) -> list[np.ndarray]:
    return [np.asarray(pre.train_base(ds.load_image(i))) for i in range(len(ds))]


def test_hit_is_bit_identical_to_the_live_base_step_and_transforms(photos, tmp_path):
    live = load_train_val(str(photos), img_size=16)
    pre = live.preprocess
    b = load_train_val(str(photos), img_size=16)
    rec = C.attach(b, "auto")
    assert rec["used"] and rec["splits"]["train"]["built"] and rec["splits"]["val"]["built"]
    assert rec["bytes"] == sum(a.nbytes for a in _bases(live.train, pre) + _bases(live.val, pre)) > 0
    assert b.train.cache is not None and live.train.cache is None
    for split in ("train", "val"):
        for x, y in zip(_bases(getattr(live, split), pre), _bases(getattr(b, split), pre), strict=True):
            assert x.shape == y.shape and min(x.shape[:2]) == pre.resize_size and np.array_equal(x, y)
    # the random training views and the eval inputs: the same tensors given the same RNG
    for i in range(len(b.train)):
        torch.manual_seed(i)
        x = pre.train_transform()(live.train.load_image(i))
        torch.manual_seed(i)
        y = pre.train_transform()(b.train.load_image(i))
        assert torch.equal(x, y)
    for i in range(len(b.val)):
        assert torch.equal(pre.eval_transform()(live.val.load_image(i)), pre.eval_transform()(b.val.load_image(i)))
    # a second run reuses it (no build), and a subset keeps each sample's row
    b2 = load_train_val(str(photos), img_size=16)
    rec2 = C.attach(b2, "auto")
    assert rec2["used"] and not rec2["splits"]["train"]["built"] and rec2["build_s"] == 0
    assert rec2["splits"]["train"]["path"] == rec["splits"]["train"]["path"]
    sub = b2.train.subset([3, 0])
    assert np.array_equal(np.asarray(sub.load_image(0)), _bases(live.train, pre)[3])


def test_invalidation_by_content_mtime_size_and_policy(photos, tmp_path):
    def key(img_size=16, pre=None):
        b = load_train_val(str(photos), img_size=img_size, preprocess=pre)
        return C.attach(b, "auto")["splits"]["train"], b

    first, _ = key()
    f = sorted((photos / "train" / "ants").glob("*.jpg"))[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, newer mtime
    touched, _ = key()
    assert touched["built"] and touched["key"] != first["key"]
    assert Path(first["path"]).name not in _cache_dirs(tmp_path)  # the stale cache of this split is gone
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(f)  # new content
    changed, b = key()
    assert changed["built"] and changed["key"] != touched["key"]
    i = [str(s) for s, _ in b.train.samples].index(str(f))
    assert np.asarray(b.train.load_image(i)).max() == 7  # the new pixels, not the old ones
    resized, b20 = key(img_size=20)
    assert resized["built"] and min(b20.train.load_image(0).size) == 20
    bicubic, _ = key(pre=Preprocess(input_size=16, interpolation="bicubic"))
    assert bicubic["built"] and bicubic["key"] not in (changed["key"], resized["key"])
    again, _ = key()  # the 16 px bilinear cache was kept next to the others
    assert not again["built"] and again["key"] == changed["key"]


def test_build_failure_leaves_no_partial_cache(photos, tmp_path):
    bad = photos / "train" / "ants" / "zz.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    good = [(str(p), 0) for p in sorted((photos / "train" / "bees").iterdir())]
    ds = ImageSamples(good + [(str(bad), 0)], split="train", folder=str(photos / "train"))
    pre = Preprocess(input_size=16)
    with pytest.raises(ImageError, match="zz.jpg"):
        C.open_or_build([s for s, _ in ds.samples], lambda i: pre.train_base(ds.load_image(i)), pre, split="train")
    root = tmp_path / "cache" / "decode"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    # the readable files alone build normally afterwards
    ok = ds.subset(range(len(good)))
    cache, rec = C.open_or_build([s for s, _ in ok.samples], lambda i: pre.train_base(ok.load_image(i)), pre)
    assert rec["built"] and len(cache) == len(good)


def test_dataloader_workers_read_the_same_tensors(photos):
    live = load_train_val(str(photos), img_size=16)
    b = load_train_val(str(photos), img_size=16)
    assert C.attach(b, "auto")["used"]
    tf = b.preprocess.eval_transform()
    ref = torch.cat([x for x, _ in DataLoader(live.train.with_transform(tf), batch_size=4)])
    got = torch.cat([x for x, _ in DataLoader(b.train.with_transform(tf), batch_size=4, num_workers=2)])
    assert torch.equal(ref, got)
    # what a spawned worker receives: the index and the path, not the pixels; it maps the file again
    blob = pickle.dumps(b.train.cache)
    assert len(blob) < b.train.cache.nbytes and pickle.loads(blob).image(1, "x").tobytes() == b.train.load_image(1).tobytes()


_RACER = """
import json, sys, time
from edgecv.data import cache as C
from edgecv.data.datasets import load_train_val
b = load_train_val(sys.argv[1], img_size=16)
pre = b.preprocess
def slow(i):
    time.sleep(0.05)
    return pre.train_base(b.train.load_image(i))
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
cache, rec = C.open_or_build([str(s) for s, _ in b.train.samples], slow, pre, split="train")
print(json.dumps({**rec, "first": list(cache.image(0, "x").getdata())[:4]}))
"""


def test_two_processes_build_it_once(photos, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = str(time.time() + 3.0)  # both start decoding at the same moment (after their imports)
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(photos), start], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    recs = [json.loads(o) for o, _ in outs]
    assert sorted(r["built"] for r in recs) == [False, True]
    assert recs[0]["path"] == recs[1]["path"] and recs[0]["first"] == recs[1]["first"]
    assert len(_cache_dirs(tmp_path)) == 1


def test_size_cap_and_off_fall_back_to_live_decoding(photos, monkeypatch):
    logs: list[str] = []
    monkeypatch.setenv(C.MAX_GB_ENV, "1e-9")
    b = load_train_val(str(photos), img_size=16)
    rec = C.attach(b, "auto", logs.append)
    assert not rec["used"] and C.MAX_GB_ENV in rec["splits"]["train"]["reason"]
    assert b.train.cache is None and len(logs) == 2 and "decoding live" in logs[0]
    monkeypatch.delenv(C.MAX_GB_ENV)
    off = C.attach(b, "off")
    assert not off["used"] and b.train.cache is None
    with pytest.raises(Exception, match="--decode-cache"):
        C.attach(b, "sometimes")


def test_another_resize_policy_decodes_the_file_instead_of_the_cached_base(photos):
    b = load_train_val(str(photos), img_size=16)
    C.attach(b, "auto")
    pre24 = b.preprocess.with_size(24)  # e.g. autotune's latency calibration at the deploy size
    for i in range(len(b.train)):
        live = pre24.to_array(decode_image(b.train.samples[i][0]))
        assert np.array_equal(pre24.to_array(b.train.load_image(i)), live)


def test_train_json_records_the_cache(photos, tmp_path, cli):
    args = ["train", "--data", str(photos), "--arch", "resnet18", "--epochs", "1", "--img-size", "16",
            "--batch-size", "4", "--workers", "0", "--json", "--quiet"]
    env = {"EDGECV_CACHE": str(tmp_path / "cache")}
    on = json.loads(cli(*args, "--out", str(tmp_path / "a.pt"), check=True, env=env).stdout)["decode_cache"]
    assert on["used"] and on["splits"]["train"]["built"] and on["bytes"] > 0
    off = json.loads(cli(*args, "--out", str(tmp_path / "b.pt"), "--decode-cache", "off", check=True,
                         env=env).stdout)["decode_cache"]
    assert not off["used"] and off["mode"] == "off"


def test_compress_config_key_is_checked():
    from edgecv.compress.config import CompressConfig
    from edgecv.errors import UserError

    assert CompressConfig().decode_cache == "auto"
    with pytest.raises(UserError, match="--decode-cache"):
        CompressConfig(decode_cache="sometimes").validate()


_RANKS = """
import hashlib, json, os, sys
from edgecv import distributed as D
from edgecv.data import cache as C
from edgecv.data.datasets import load_train_val
D.init("cpu")
b = load_train_val(sys.argv[1], img_size=16)
rec = C.attach(b, "auto")
h = hashlib.sha256(b"".join(b.train.load_image(i).tobytes() for i in range(len(b.train)))).hexdigest()
print(json.dumps({"rank": D.rank(), "built": rec["splits"]["train"]["built"], "path": rec["splits"]["train"]["path"],
                  "used": rec["used"], "sha": h}), flush=True)
D.shutdown()
"""


@pytest.mark.slow
def test_torchrun_rank0_builds_and_every_rank_maps_the_same_cache(photos, tmp_path):
    from tests.test_distributed import _torchrun

    script = tmp_path / "ranks.py"
    script.write_text(_RANKS)
    p = _torchrun(script, str(photos), timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = sorted((json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in recs] == [0, 1] and all(r["used"] for r in recs)
    assert recs[0]["built"] and not recs[1]["built"]
    assert recs[0]["path"] == recs[1]["path"] and recs[0]["sha"] == recs[1]["sha"]
    assert len(_cache_dirs(tmp_path)) == 2  # train and val, built once
