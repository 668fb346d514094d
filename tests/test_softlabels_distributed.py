"""Teacher soft labels under torchrun: rank 0 builds the cache, the other rank waits, then both read the same
file (2 gloo processes, slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]

_RANKS_SCRIPT = """
import hashlib, json, os, sys, torch
from edgecv import distributed as D
from edgecv.compress import softlabels as SL
from edgecv.data.datasets import load_train_val
from edgecv.data.preprocess import Preprocess
D.init("cpu")
data, out = sys.argv[1], sys.argv[2]
b = load_train_val(data)
pre = Preprocess(input_size=16, augment="standard")
torch.manual_seed(0)
teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3)).eval()
key = SL.cache_key("t" * 64, SL.data_fingerprint(b.train, b.val), pre, pre, 2, 3)
built = []
def build_fn():
    built.append(D.rank())
    return SL.build(b.train, pre, lambda x: teacher(x).detach(), 3, 2, 3, 8, 0, torch.device("cpu"))
sl, rec = SL.obtain(key, build_fn, print)
ds = SL.SoftLabelDataset(b.train, pre, sl, seed=0)
h = hashlib.sha256(sl.logits.numpy().tobytes() + sl.params.numpy().tobytes() + ds[3][0].numpy().tobytes())
with open(os.path.join(out, f"rank{D.rank()}.json"), "w") as f:
    json.dump({"built": built, "sha": h.hexdigest(), "path": rec["path"]}, f)
D.shutdown()
"""


@pytest.mark.slow
def test_torchrun_ranks_read_the_cache_rank0_built(tmp_path):
    cache = tmp_path / "cache"
    data = make_image_folder(tmp_path / "data", n_train=4, n_val=2, size=20)
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS_SCRIPT)
    out = tmp_path / "dumps"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "EDGECV_CACHE": str(cache)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), str(data), str(out)], capture_output=True, text=True, timeout=300, env=env,
                       cwd=str(REPO), start_new_session=True)
    assert p.returncode == 0, p.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["built"] == [0] and r1["built"] == []  # rank 0 built, rank 1 only read
    assert r0["sha"] == r1["sha"] and r0["path"] == r1["path"]
    assert len(list((cache / "softlabels").iterdir())) == 1
