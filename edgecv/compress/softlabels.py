"""Teacher soft labels computed once and replayed (FKD-style), shared by every KD stage, run and ``--resume``.

For every training image, ``K`` augmented views are drawn once (:meth:`Augment.sample`, seeded by the image's
index, so the cache's content does not depend on who builds it) and the teacher's logits of each view are stored
(fp16, the top ``k`` classes with their indices; every class while there are at most :data:`DENSE_MAX_CLASSES`).
Each training epoch picks one stored view per image, deterministically in ``(seed, epoch, index)`` (a resumed
run replays it), re-applies exactly its parameters to the student's input and hands the stored logits to the KD
loss through the dataset's third field (``fit`` passes it to ``loss_fn`` as ``extra``).

The teacher saw the very tensor the student trains on, passed through :meth:`KDLoss.teacher_input` (the
teacher's own size and normalisation), exactly as the live teacher would.

The cache file (``<cache_dir>/softlabels/<key>.pt``, tensors only: loaded with ``weights_only=True``) is keyed by
the teacher's sha256, the data (train and val file lists with sizes and mtimes, or the pixels of in-memory
images), the augmentation policy, the student's and the teacher's preprocessing, ``K`` and ``k``; any change
builds a new one. It is written atomically; under torchrun rank 0 builds it and the other ranks wait, then read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from edgecv import distributed as D
from edgecv.data.augment import Augment
from edgecv.data.datasets import ImageSamples
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from edgecv.nn.depthwise import RULE as DEPTHWISE_RULE
from edgecv.utils import atomic_path, cache_dir, cpu_flags, progress

CACHE_VERSION = 1
DENSE_MAX_CLASSES = 20  # up to this many classes every logit is stored (the KD loss is then exactly the live one)
TOPK = 10  # above it: the teacher's top-10 logits of each view
BUILD_SEED = 20_221_016  # the views' RNG: seeded per image index, independent of the run's --seed
TEACHER_BATCH_PIXELS = 256 * 64 * 64  # views x pixels of one build forward: 256 views at 64 px, 64 from 128 px
EPOCHS_PER_VIEW = 4  # default K = total KD epochs / 4, in [2, 8], for an fp32 teacher (docs/compress-speed.md)
# a bf16 teacher's view costs about half an fp32 one (resnet18, 64 px, on the AMX host: 40 vs 79 ms a batch of 64),
# so the same build time holds twice the views: K = total epochs / 2, in [2, 16] (measured: cifar10-mini, three
# seeds, K=10 vs K=5 +0.70 pt QAT top-1, 0.52x vs 0.47x the live run; benchmarks/RESULTS.md)
BF16_VIEWS = 2


def parse_teacher_cache(value: str) -> int | None:
    """``off`` -> 0, ``auto`` -> None (K from the epochs), ``views=K`` -> K. UserError otherwise."""
    v = str(value).strip().lower()
    if v == "off":
        return 0
    if v == "auto":
        return None
    if v.startswith("views="):
        try:
            k = int(v[len("views="):])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise UserError(f"--teacher-cache must be off, auto or views=K (K >= 1), got {value!r}")


def default_views(total_epochs: int, teacher_bf16: bool = False) -> int:
    """K of ``--teacher-cache auto``: a quarter of the epochs in [2, 8], twice that for a bf16 teacher."""
    f = BF16_VIEWS if teacher_bf16 else 1
    return max(2, min(8 * f, math.ceil(total_epochs * f / EPOCHS_PER_VIEW)))


def augment_of(pre: Preprocess) -> Augment:
    return pre.augmenter()


def data_fingerprint(*splits: ImageSamples) -> str:
    """sha256 over every sample's (path, size, mtime, label), or the pixels of an in-memory image."""
    h = hashlib.sha256()
    for ds in splits:
        h.update(f"split {ds.split} {len(ds)}\n".encode())
        for src, y in ds.samples:
            if isinstance(src, str | Path):
                st = os.stat(src)
                h.update(f"{os.path.abspath(src)}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode())
            else:
                h.update(f"<{src.mode} {src.size}>|{y}|".encode())
                h.update(src.tobytes())
    return h.hexdigest()


def cache_key(teacher_sha: str, data_fp: str, s_pre: Preprocess, t_pre: Preprocess | None, views: int,
              topk: int, teacher_bf16: bool = False) -> dict:
    """``teacher_bf16``: the teacher ran under bf16 autocast (its logits differ from fp32's in the 2nd-3rd digit)."""
    aug = augment_of(s_pre)
    return {"v": CACHE_VERSION, "teacher": teacher_sha, "data": data_fp, "teacher_bf16": bool(teacher_bf16),
            "augment": {"preset": aug.preset, "input_size": aug.input_size, "hflip": aug.hflip,
                        "n_params": Augment.N_PARAMS},
            "student_pre": s_pre.to_dict(), "teacher_pre": t_pre.to_dict() if t_pre else None,
            "views": views, "topk": topk}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class SoftLabels:
    """The stored views of one (teacher, data, policy, sizes, K): ``params (N, K, P)``, ``idx``/``logits (N, K, k)``."""

    params: torch.Tensor
    idx: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def views(self) -> int:
        return int(self.params.shape[1])

    def to_file(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"params": self.params, "idx": self.idx, "logits": self.logits, "labels": self.labels,
                        "meta": json.dumps(self.meta)}, tmp)

    @classmethod
    def from_file(cls, path: Path) -> SoftLabels:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["params"], d["idx"], d["logits"], d["labels"], json.loads(d["meta"]), path)


class _ViewsOf(Dataset):
    """Build-time items: the K views of image ``i`` as (params (K, P), student inputs (K, 3, S, S), label)."""

    def __init__(self, samples: ImageSamples, pre: Preprocess, views: int):
        self.samples, self.pre, self.views, self.aug = samples, pre, views, augment_of(pre)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        base = self.pre.train_base(self.samples.load_image(i))
        g = torch.Generator().manual_seed(BUILD_SEED * 1_000_003 + i)
        # float64 holds Python's floats exactly: the replay applies bit-for-bit these parameters
        ps = torch.tensor([self.aug.sample(*base.size, g) for _ in range(self.views)], dtype=torch.float64)
        xs = torch.stack([self.pre.normalize(self.aug.apply(base, tuple(p.tolist()))) for p in ps])
        return ps, xs, self.samples.samples[i][1]


def build(samples: ImageSamples, pre: Preprocess, teacher_logits, num_classes: int, views: int, topk: int,
          batch_size: int, workers: int, device: torch.device) -> SoftLabels:
    """Run the teacher (``teacher_logits(x) -> (B, C)``) once over K views of every training image."""
    n = len(samples)
    params = torch.zeros(n, views, Augment.N_PARAMS, dtype=torch.float64)
    idx = torch.zeros(n, views, topk, dtype=torch.int16 if num_classes < 2**15 else torch.int32)
    logits = torch.zeros(n, views, topk, dtype=torch.float16)
    labels = torch.zeros(n, dtype=torch.int64)
    # inference only: a teacher batch of >= 64 views whatever the (possibly small) training batch, more for small
    # inputs (resnet18 at 64 px on this 2-core host: 255 views/s at 60 a batch, 302 at 250; RESULTS.md)
    per = max(1, max(batch_size, 64, TEACHER_BATCH_PIXELS // (pre.input_size ** 2)) // views)
    loader = DataLoader(_ViewsOf(samples, pre, views), batch_size=per, shuffle=False, num_workers=workers)
    i0 = 0
    for ps, xs, ys in progress(loader, desc=f"teacher soft labels (K={views})"):
        b = ps.shape[0]
        out = teacher_logits(xs.flatten(0, 1).to(device)).float().cpu()
        if not torch.isfinite(out).all():
            raise UserError("teacher soft labels: the teacher produced non-finite logits; check the teacher")
        val, ix = out.topk(topk, dim=1) if topk < num_classes else (out, torch.arange(num_classes).expand_as(out))
        params[i0:i0 + b], labels[i0:i0 + b] = ps, ys
        idx[i0:i0 + b] = ix.reshape(b, views, topk).to(idx.dtype)
        logits[i0:i0 + b] = val.reshape(b, views, topk).half()
        i0 += b
    return SoftLabels(params, idx, logits, labels)


def obtain(key: dict, build_fn, log) -> tuple[SoftLabels, dict]:
    """The cache for ``key``: read it, or build it (rank 0; the others wait at a barrier, then read).

    Returns the cache and its run.json record (``built``, ``build_s``, ``size_bytes``, ``path``)."""
    path = cache_dir() / "softlabels" / f"{key_digest(key)}.pt"
    built, build_s = False, 0.0
    if D.is_main():
        sl = _read(path, key, log)
        if sl is None:
            t0 = time.perf_counter()
            log(f"teacher soft labels: building {path.name} ({key['views']} views per image, top-{key['topk']})")
            sl = build_fn()
            build_s = time.perf_counter() - t0
            sl.meta = {**sl.meta, "key": key, "build_s": round(build_s, 2)}
            path.parent.mkdir(parents=True, exist_ok=True)
            sl.to_file(path)
            built = True
    D.barrier()
    if not D.is_main():
        sl = _read(path, key, log)
        if sl is None:
            raise UserError(f"teacher soft labels: rank {D.rank()} cannot read {path} (rank 0 built it); "
                            "the cache folder (EDGECV_CACHE) must be shared by the ranks of a node")
    rec = {"used": True, "path": str(path), "views": sl.views, "topk": int(sl.idx.shape[2]), "built": built,
           "build_s": round(build_s, 2) if built else sl.meta.get("build_s"), "size_bytes": path.stat().st_size,
           "images": int(sl.params.shape[0])}
    return sl, rec


def _read(path: Path, key: dict, log) -> SoftLabels | None:
    if not path.is_file():
        return None
    try:
        sl = SoftLabels.from_file(path)
    except Exception as e:  # a truncated or foreign file: rebuild rather than train on it
        log(f"teacher soft labels: {path.name} unreadable ({type(e).__name__}); rebuilding")
        return None
    if sl.meta.get("key") != key:
        log(f"teacher soft labels: {path.name} was built for another key; rebuilding")
        return None
    return sl


class SoftLabelDataset(Dataset):
    """The training set replaying stored views: ``(x, y, {"t_idx", "t_val"})``; call :meth:`set_epoch`."""

    def __init__(self, samples: ImageSamples, pre: Preprocess, soft: SoftLabels, seed: int):
        if len(samples) != soft.params.shape[0] or samples.targets != soft.labels.tolist():
            raise UserError("teacher soft labels: the cache does not match the training images (labels differ)")
        self.samples, self.pre, self.soft, self.seed = samples, pre, soft, seed
        self.aug = augment_of(pre)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``epoch``'s view of every image: each image walks a random order of its K views, a new order
        every K epochs, so any K consecutive epochs use every stored view once (independent draws would leave,
        over 10 epochs at K=5, a tenth of the views unused and others used four times)."""
        k = self.soft.views
        cycle, pos = divmod(int(epoch), k)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + cycle * 100_003 + 7) % 2**63)
        self.view = torch.argsort(torch.rand(len(self.samples), k, generator=g), dim=1)[:, pos].contiguous()

    def __len__(self) -> int:
        return len(self.samples)

    def student_input(self, i: int, v: int) -> torch.Tensor:
        base = self.pre.train_base(self.samples.load_image(i))
        return self.pre.normalize(self.aug.apply(base, tuple(self.soft.params[i, v].tolist())))

    def __getitem__(self, i: int):
        v = int(self.view[i])
        x = self.student_input(i, v)
        return x, self.samples.samples[i][1], {"t_idx": self.soft.idx[i, v].long(),
                                               "t_val": self.soft.logits[i, v].float()}


# ---------------------------------------------------------------------------------------------- the run's choice
def cpu_bf16() -> tuple[bool, str]:
    """Whether bf16 autocast pays on this CPU (AVX512-BF16 or AMX), with the reason when it does not."""
    flags = cpu_flags()
    if not flags:
        return False, "skipped: CPU flags unreadable (/proc/cpuinfo)"
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True, "on: the CPU has " + ", ".join(sorted({"avx512_bf16", "amx_bf16"} & flags))
    isa = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return False, f"skipped: this CPU has no AVX512-BF16/AMX ({isa}); bf16 would be emulated, slower than fp32"


TEACHER_PRECISIONS = ("auto", "fp32", "bf16")


def check_teacher_precision(precision: str) -> None:
    if precision not in TEACHER_PRECISIONS:
        raise UserError(f"--teacher-precision must be one of {', '.join(TEACHER_PRECISIONS)}, got {precision!r}")


def teacher_bf16(device: torch.device, precision: str = "auto") -> tuple[bool, str]:
    """Whether the frozen teacher's CPU forward runs under bf16 autocast (``--teacher-precision``), and why.
    auto: where the CPU has AVX512-BF16/AMX (resnet18 at 64 px, batch 64, on such a host: bf16 + channels_last
    1.95x the fastest fp32 forward; docs/compress-speed.md); fp32: never (the teacher as it was trained); bf16:
    always (emulated, slower, on a CPU without those units)."""
    check_teacher_precision(precision)
    if device.type != "cpu":
        return False, "not the CPU"
    if precision == "fp32":
        return False, "off: --teacher-precision fp32"
    ok, why = cpu_bf16()
    if precision == "bf16":
        return True, "on: --teacher-precision bf16" + ("" if ok else f" ({why.removeprefix('skipped: ')})")
    return ok, why


def live_teacher_path(device: torch.device, channels_last: bool = True, precision: str = "auto") -> dict:
    """How the teacher runs (live, and while building the cache). The choice follows the measurements in
    docs/compress-speed.md (benchmarks/compress_speed.py --step-probe)."""
    if device.type != "cpu":
        return {"path": "eager", "autocast": "fp16" if device.type == "cuda" else "off"}
    bf16, why = teacher_bf16(device, precision)
    return {"path": "eager", "memory_format": "channels_last" if channels_last else "contiguous",
            "autocast": "bf16" if bf16 else "off", "bf16": why, "compile": "off: " + MEASURED["teacher_compile"],
            "onnxruntime": "off: " + MEASURED["teacher_ort"]}


def student_step_path(device: torch.device, channels_last: bool = True) -> dict:
    """How the student's training step runs (``fit``: AMP and channels_last on CUDA; on the CPU fp32)."""
    if device.type != "cpu":
        return {"path": "eager", "autocast": "fp16", "memory_format": "channels_last"}
    bf16, why = cpu_bf16()
    return {"path": "eager", "memory_format": "channels_last" if channels_last else "contiguous",
            "autocast": "off", "bf16": why if not bf16 else "not used: " + MEASURED["student_bf16"],
            "compile": "off: " + MEASURED["student_compile"],
            "depthwise_weight_grad": DEPTHWISE_RULE}


# why the other paths are off (benchmarks/compress_speed.py --step-probe on the AVX2 host; docs/compress-speed.md)
MEASURED = {
    "teacher_compile": "1.37x faster per batch than channels_last eager, but ~13 s to compile and again for "
                       "every new batch shape: no net gain once the teacher runs K times per image",
    "teacher_ort": "compress may not import runtimes/export (docs/architecture.md)",
    "student_compile": "no faster than eager (1.03x slower) after a 125 s compile",
    # the AMX host (Xeon with AVX512-BF16/AMX, 2 cores): mobilenet_v3_small at 64 px, batch 64
    "student_bf16": "measured 2.1x slower than the fp32 step on an AMX CPU (mobilenet_v3_small, 64 px: "
                    "156 vs 74 ms a batch of 64 in channels_last)",
}


def off_reason(teacher_cache: str, alpha: float, feature_kd: float, pre: Preprocess) -> str | None:
    """Why a training uses the live teacher instead of stored soft labels (None: use the cache)."""
    if parse_teacher_cache(teacher_cache) == 0:
        return "--teacher-cache off"
    if alpha == 0 and feature_kd == 0:
        return "no teacher term (--alpha 0)"
    if feature_kd > 0:
        return "--feature-kd matches the teacher's feature maps of each batch"
    aug = augment_of(pre)
    if aug.preset == "strong" or not aug.replayable:  # strong: MixUp/CutMix mix images across the batch
        return f"the '{aug.preset}' augmentation preset (MixUp/CutMix: each batch's mixed images need the teacher)"
    return None


def soft_labels(train: ImageSamples, val: ImageSamples, n: int, pre: Preprocess, teacher, views: int,
                batch_size: int, workers: int | None, device: torch.device, log,
                evaluate=None, channels_last: bool = True, precision: str = "auto") -> tuple[SoftLabels, dict]:
    """The stored soft labels of ``teacher`` (a ``training.teacher.Teacher`` with ``n`` outputs) on ``train``,
    built if needed.

    ``evaluate(model) -> top-1`` (optional): the teacher's val top-1, stored with the cache for later runs."""
    from edgecv.compress.distill import KDConfig, KDLoss
    from edgecv.training.loop import default_workers

    topk = n if n <= DENSE_MAX_CLASSES else TOPK
    bf16 = teacher_bf16(device, precision)[0]
    key = cache_key(teacher.sha256, data_fingerprint(train, val), pre, teacher.preprocess, views, topk, bf16)

    def build_fn() -> SoftLabels:
        kd = KDLoss(teacher.model, KDConfig(), pre, teacher.preprocess, device=device)
        kd.cpu_bf16 = bf16
        kd.teacher_channels_last(channels_last)
        sl = build(train, pre, kd.teacher_logits, n, views, topk, batch_size,
                   default_workers() if workers is None else workers, device)
        if evaluate is not None and not D.is_distributed():  # (a collective under torchrun: done by the caller)
            sl.meta["teacher_val_top1"] = evaluate(teacher.model)
        teacher.model.to("cpu")
        return sl

    sl, rec = obtain(key, build_fn, log)
    built = f", built in {rec['build_s']:.1f}s" if rec["build_s"] else ""
    log(f"teacher soft labels: {'built' if rec['built'] else 'reused'} {Path(rec['path']).name} "
        f"({rec['images']} images x {views} views, top-{topk}, {rec['size_bytes'] / 1e6:.1f} MB{built})")
    return sl, rec


def prepare(ctx, log) -> tuple[SoftLabels | None, dict]:
    """The compress run's soft labels (None: the live teacher) and run.json's ``teacher_cache`` record."""
    c, b = ctx.cfg, ctx.bundle
    why = off_reason(c.teacher_cache, c.alpha, c.feature_kd, b.preprocess)
    if why is not None:
        log(f"teacher soft labels: off ({why}); live teacher")
        return None, {"used": False, "reason": why}
    views = parse_teacher_cache(c.teacher_cache) or default_views(
        c.epochs_kd + c.epochs_prune + c.epochs_qat, teacher_bf16(ctx.device, c.teacher_precision)[0])
    return soft_labels(b.train, b.val, b.num_classes, b.preprocess, ctx.teacher, views, c.batch_size, c.workers, ctx.device, log,
                       evaluate=lambda m: ctx.run.data["teacher"]["val_top1"], channels_last=c.channels_last,
                       precision=c.teacher_precision)
