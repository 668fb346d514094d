"""edgecv.distributed and DDP in the training loop.

Single-process unit tests of the helpers (fast), and real 2-process gloo runs under ``torchrun --standalone``
(slow): collective helpers, DDP weight sync, sharding, resume from rank 0's state, ``edgecv train`` ending with
identical weights on every rank and only rank 0's files, and a UserError on one rank not hanging the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from edgecv import distributed as D
from edgecv.errors import UserError
from edgecv.training.loop import epoch_seed, make_loader
from edgecv.training.metrics import Shard

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- single process
@pytest.fixture
def no_torchrun_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)


def test_helpers_are_identity_in_a_single_process(no_torchrun_env):
    assert not D.launched_by_torchrun()
    assert D.init("cpu") == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert (D.world_size(), D.rank(), D.is_main(), D.is_distributed()) == (1, 0, True, False)
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    obj = {"keep": [1, 2]}
    assert D.broadcast_object(obj) is obj
    assert D.any_rank(True) is True and D.any_rank(False) is False
    m = nn.BatchNorm2d(3)
    m.running_mean.fill_(7.0)
    D.broadcast_module(m)
    D.broadcast_buffers(m)
    D.barrier()
    assert m.running_mean.tolist() == [7.0, 7.0, 7.0]
    D.shutdown()  # no-op without a process group
    with D.session("cpu") as dev:
        assert dev == torch.device("cpu") and not torch.distributed.is_initialized()


def test_resolve_device():
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert D.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_init_more_processes_than_gpus_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="only 2 CUDA device"):
        D.init("cuda")
    assert not torch.distributed.is_initialized()


def test_local_world_size_and_rank_from_torchrun_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert D.launched_by_torchrun()
    assert (D.local_world_size(), D.local_rank()) == (4, 3)


def test_epoch_seed_differs_per_rank_and_epoch_and_is_stable():
    seeds = {epoch_seed(0, e, r) for e in range(50) for r in range(16)}
    assert len(seeds) == 50 * 16
    assert epoch_seed(3, 2, 1) == epoch_seed(3, 2, 1)
    assert epoch_seed(0, 0, 0) != epoch_seed(1, 0, 0)


def test_shard_is_an_exact_partition():
    ds = list(range(11))
    shards = [[Shard(ds, r, 3)[i] for i in range(len(Shard(ds, r, 3)))] for r in range(3)]
    assert sorted(sum(shards, [])) == ds  # every sample exactly once, no padding
    assert [len(s) for s in shards] == [4, 4, 3]


def test_single_process_loader_replays_an_epoch_from_its_seed(no_torchrun_env):
    ds = torch.utils.data.TensorDataset(torch.arange(20).float(), torch.zeros(20).long())
    dl = make_loader(ds, 4, True, 0, seed=5, drop_last=True)

    def order(epoch):
        dl.generator.manual_seed(epoch_seed(5, epoch, 0))
        return [int(v) for x, _ in dl for v in x]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(0)) == list(range(20))


class _RandomAug(torch.utils.data.Dataset):
    """Stands in for random augmentation: each item draws from the (worker's) torch RNG."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(1), 0


def test_worker_augmentation_is_seeded_per_epoch_and_rank(no_torchrun_env):
    dl = make_loader(_RandomAug(), 4, True, 1, seed=0, drop_last=True)  # one worker process

    def draws(epoch, rank=0):
        dl.generator.manual_seed(epoch_seed(0, epoch, rank))
        return [round(float(v), 6) for x, _ in dl for v in x]

    assert draws(2) == draws(2)  # replayable (what --resume relies on), also with DataLoader workers
    assert draws(2) != draws(3)
    assert draws(2, rank=0) != draws(2, rank=1)


# ---------------------------------------------------------------------------------------------- 2 processes (gloo)
def _torchrun(script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), *args]
    # its own session: nothing torchrun's agent signals to its group can reach the test process
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO),
                          start_new_session=True)


_CHECKSUM = """
import hashlib, torch
def checksum(sd):
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode()); h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
"""

_HELPERS_SCRIPT = _CHECKSUM + """
import json, sys
from pathlib import Path
import torch
from torch import nn
from edgecv import distributed as D
from edgecv.training.loop import TrainConfig, evaluate_top1, fit, make_loader

out = Path(sys.argv[1])
D.init("cpu")
r, res = D.rank(), {}
res["world"] = D.world_size()
res["sum"] = D.all_reduce_sum(torch.tensor([float(r + 1)])).item()
res["obj"] = D.broadcast_object({"keep": [1, 2]} if r == 0 else None)
res["any_none"], res["any_one"] = D.any_rank(False), D.any_rank(r == 1)

# DDP construction gives every rank rank 0's parameters and buffers, whatever each rank initialised
torch.manual_seed(100 + r)
m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
m[1].running_mean.fill_(float(r))
before = checksum(m.state_dict())
nn.parallel.DistributedDataParallel(m)
res["init_before"], res["init_after"] = before, checksum(m.state_dict())
m[1].running_mean.fill_(5.0 + r)
D.broadcast_buffers(m)
res["bn_after_broadcast"] = m[1].running_mean.tolist()

# training loader: disjoint shards with equal batch counts
ds = torch.utils.data.TensorDataset(torch.arange(10).float(), torch.zeros(10).long())
dl = make_loader(ds, 2, True, 0, seed=0, drop_last=True)
dl.sampler.set_epoch(0)
res["shard"] = [int(v) for x, _ in dl for v in x]

# exact sharded validation (7 samples over 2 ranks, no padding) equals the full-set answer
g = torch.Generator().manual_seed(0)
xv, yv = torch.randn(7, 5, generator=g), torch.randint(0, 3, (7,), generator=g)
lin = nn.Linear(5, 3)
torch.manual_seed(0); lin.reset_parameters()
top1, _ = evaluate_top1(lin, torch.utils.data.TensorDataset(xv, yv), 2, torch.device("cpu"))
res["val_top1"], res["val_expected"] = top1, 100.0 * (lin(xv).argmax(1) == yv).float().mean().item()

# fit under DDP (BatchNorm model), then resume from rank 0's state file; rank 1 gets a path that never exists
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))
gx = torch.Generator().manual_seed(1)
x = torch.randn(48, 3, 8, 8, generator=gx)
y = torch.arange(48) % 3
x += y.view(-1, 1, 1, 1).float()
train = torch.utils.data.TensorDataset(x, y)
state = out / ("state.pt" if r == 0 else "rank1_never/state.pt")
cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, workers=0, device="cpu", warmup_epochs=0)
m_full = net()
r_full = fit(m_full, train, train, cfg)
res["full"] = checksum(m_full.state_dict())
res["world_seen"], res["eff_batch"] = r_full.world_size, r_full.effective_batch


class Interrupted(Exception):
    pass


def stop_at_epoch_2(epoch, model):
    if epoch == 1:
        raise Interrupted


try:  # killed after epoch 1: rank 0 has written the state file
    fit(net(), train, train, cfg, state_path=state, on_epoch_start=stop_at_epoch_2)
except Interrupted:
    pass
m2 = net()
r2 = fit(m2, train, train, cfg, state_path=state, resume=True)
res["resumed"], res["resumed_epochs"] = checksum(m2.state_dict()), [h["epoch"] for h in r2.history]
res["first_epoch"] = checksum(net().state_dict())
(out / f"rank{r}.json").write_text(json.dumps(res))
D.shutdown()
"""


@pytest.mark.slow
def test_two_process_helpers_sync_shard_and_resume(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(_HELPERS_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    p = _torchrun(script, str(out))
    assert p.returncode == 0, p.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{i}.json").read_text()) for i in range(2))
    for r in (r0, r1):
        assert r["world"] == 2 and r["sum"] == 3.0
        assert r["obj"] == {"keep": [1, 2]}
        assert r["any_none"] is False and r["any_one"] is True
        assert r["bn_after_broadcast"] == [5.0] * 4  # rank 0's
        assert r["val_top1"] == pytest.approx(r["val_expected"])
        assert r["world_seen"] == 2 and r["eff_batch"] == 8
        assert r["resumed_epochs"] == [1, 2]
    assert r0["init_before"] != r1["init_before"]  # differently seeded on purpose...
    assert r0["init_after"] == r1["init_after"] == r0["init_before"]  # ...DDP gave rank 1 rank 0's weights
    assert len(r0["shard"]) == len(r1["shard"]) == 4 and not set(r0["shard"]) & set(r1["shard"])
    assert r0["full"] == r1["full"]  # weights *and* BatchNorm buffers identical after training
    assert r0["full"] != r0["first_epoch"]
    # resuming from rank 0's state after an interruption replays the uninterrupted run exactly, on every rank
    assert r0["resumed"] == r1["resumed"] == r0["full"]
    assert not (out / "rank1_never").exists()  # only rank 0 writes; rank 1 never needed the file
    assert (out / "state.pt").is_file()


_TRAIN_SCRIPT = _CHECKSUM + """
import json, os, sys
from pathlib import Path
import edgecv.training.teacher as T

dumps = Path(sys.argv[1])
real_fit = T.fit

def fit(model, *a, **k):  # record what every rank ends with
    res = real_fit(model, *a, **k)
    (dumps / f"rank{os.environ['RANK']}.json").write_text(json.dumps({"sha": checksum(model.state_dict())}))
    return res

T.fit = fit
from edgecv.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow
def test_torchrun_train_identical_weights_and_only_rank0_writes(tmp_path, tiny_folder):
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    dumps, out = tmp_path / "dumps", tmp_path / "run"
    dumps.mkdir()
    p = _torchrun(script, str(dumps), "train", "--data", str(tiny_folder), "--arch", "resnet18", "--img-size", "16",
                  "--epochs", "2", "--batch-size", "4", "--workers", "0", "--out", str(out / "t.pt"),
                  "--tensorboard", str(out / "tb"), "--json")
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(p.stdout)  # exactly one JSON document: rank 1 printed nothing
    assert res["world_size"] == 2 and res["effective_batch"] == 8
    assert len(res["history"]) == 2
    sha = [json.loads((dumps / f"rank{i}.json").read_text())["sha"] for i in range(2)]
    assert sha[0] == sha[1]
    # the checkpoint rank 0 saved holds the weights both ranks ended with
    from edgecv.models.checkpoint import load_checkpoint

    ns: dict = {}
    exec(_CHECKSUM, ns)
    assert ns["checksum"](load_checkpoint(out / "t.pt").build().state_dict()) == sha[0]
    files = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert len(files) == 2 and files[0].startswith("t.pt") and files[1].startswith("tb/events.out.tfevents")
    assert "edgecv: error" not in p.stderr


_ONE_RANK_FAILS_SCRIPT = """
import os, sys
import edgecv.training.teacher as T
from edgecv.errors import UserError

real = T.load_train_val

def load_train_val(*a, **k):
    if os.environ["RANK"] == "1":
        raise UserError("rank 1 cannot read its data")
    return real(*a, **k)

T.load_train_val = load_train_val
from edgecv.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_user_error_on_one_rank_does_not_hang_the_others(tmp_path, tiny_folder):
    script = tmp_path / "fail.py"
    script.write_text(_ONE_RANK_FAILS_SCRIPT)
    out = tmp_path / "run"
    # rank 0 goes on into DDP and would wait forever for rank 1; torchrun must stop it (timeout => hang)
    p = _torchrun(script, "train", "--data", str(tiny_folder), "--arch", "resnet18", "--img-size", "16",
                  "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out", str(out / "t.pt"), timeout=180)
    assert p.returncode != 0
    assert "edgecv: error [rank 1]: rank 1 cannot read its data" in p.stderr
    assert not (out / "t.pt").exists()


_COMPRESS_SCRIPT = """
import sys
from edgecv.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_torchrun_compress_all_stages_rank0_output_once(tmp_path, tiny_folder):
    from tests.conftest import save_untrained_teacher

    script = tmp_path / "compress.py"
    script.write_text(_COMPRESS_SCRIPT)
    teacher = save_untrained_teacher(tmp_path / "teacher.pt", ("red", "green", "blue"), 16)
    out = tmp_path / "run"
    p = _torchrun(script, "compress", "--teacher", str(teacher), "--allow-weak-teacher", "--data", str(tiny_folder), "--img-size", "16",
                  "--epochs-kd", "1", "--epochs-prune", "1", "--epochs-qat", "1", "--prune-steps", "1",
                  "--batch-size", "4", "--workers", "0", "--calib-size", "8", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr[-4000:]
    run = json.loads(p.stdout)  # exactly one JSON document: rank 1 printed nothing after shutdown
    assert run["completed"] == ["distill", "prune", "quantize"]
    assert p.stderr.count("edgecv compress: mobilenet_v3_small") == 1  # the summary table, once
    assert sorted(f.name for f in out.iterdir()) == ["config.yaml", "distill.pt", "prune.pt", "quantize.pt",
                                                    "run.json"]


# ---------------------------------------------------------------------------------------------- torchrun's environment
@pytest.mark.parametrize("value, launched", [(None, False), ("", False), (" ", False), ("0", False), ("1", False),
                                             ("2", True), (" 8 ", True)])
def test_world_size_env_parse(monkeypatch, value, launched):
    if value is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", value)
    assert D.launched_by_torchrun() is launched


@pytest.mark.parametrize("value", ["abc", "2.5", "-1"])
def test_malformed_world_size_is_one_user_error_line(monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(UserError, match=rf"^WORLD_SIZE='{value}' is not an integer >= 0 \(torchrun sets it"):
        D.launched_by_torchrun()
    with pytest.raises(UserError, match="WORLD_SIZE"):
        D.init("cpu")
    assert not torch.distributed.is_initialized()


def test_rank_before_the_group_is_torchruns(monkeypatch):
    """Before init() (the CLI's log lines, the error line) rank() is torchrun's RANK; a plain process is rank 0."""
    monkeypatch.setenv("RANK", "3")
    assert (D.rank(), D.is_main()) == (3, False)
    monkeypatch.setenv("RANK", "x")
    assert D.rank() == 0
    monkeypatch.delenv("RANK")
    assert D.rank() == 0


def test_cli_malformed_world_size_exit_2_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "edgecv", "train", "--epochs", "1", "--out", str(tmp_path / "t.pt")],
                       capture_output=True, text=True, timeout=120, cwd=str(REPO),
                       env={**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "two"})
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == ("edgecv: error: WORLD_SIZE='two' is not an integer >= 0 (torchrun sets it; unset it "
                                "to run in one process)")
    assert not (tmp_path / "t.pt").exists()


def test_cli_imports_rank_helpers_from_distributed_without_torch():
    code = ("import sys, edgecv.cli._common as C, edgecv.cli._errors as E, edgecv.distributed as D; "
            "assert C.rank is D.rank and E.launched_by_torchrun is D.launched_by_torchrun; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
