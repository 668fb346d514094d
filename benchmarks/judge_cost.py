"""Issue 28: what judging the teacher and every stage against the trivial baselines adds to a compress run.

compress now evaluates the teacher on val once per run before any work (before, a run whose teacher soft labels
were cached read the teacher's val top-1 from the cache) and the prune stage's final student once more (the
distill and quantize stages reuse their fit's best-epoch confusion matrix). This times those two val passes on
cifar10-mini at 64 px (2,000 val images, through the decode cache, as in a compress run) and the check itself.

    flock /tmp/edgecv-heavy.lock python benchmarks/judge_cost.py [DATA] [--img-size 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from edgecv.compress.judge import val_confusion
from edgecv.data.cache import attach
from edgecv.data.datasets import load_train_val
from edgecv.data.metrics import baseline_check
from edgecv.models.registry import create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=str(Path.home() / ".cache/edgecv/cifar10-mini"))
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    b = load_train_val(a.data, img_size=a.img_size)
    attach(b, "auto", print)
    dev = torch.device("cpu")
    for arch in ("resnet18", "mobilenet_v3_small"):
        m = create_model(arch, b.num_classes).eval()
        val_confusion(m, b, 64, dev, "warm-up")
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            cm = val_confusion(m, b, 64, dev, arch)
            ts.append(time.perf_counter() - t0)
        print(f"{arch}: val pass over {int(np.sum(cm))} images at {a.img_size}px: median {np.median(ts):.2f}s "
              f"(min {min(ts):.2f}, max {max(ts):.2f}, {a.repeats} runs)")
    t0 = time.perf_counter()
    import scipy.special  # noqa: F401  (the binomial test's; once per process)

    print(f"import scipy.special: {time.perf_counter() - t0:.2f}s")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    for name, pred in (("a model that learned (top-1 decides)", np.where(rng.random(2000) < 0.7, y, 0)),
                       ("a random answer (the permutation test runs)", rng.integers(0, 10, 2000))):
        cm = np.zeros((10, 10), dtype=np.int64)
        np.add.at(cm, (y, pred), 1)
        t0 = time.perf_counter()
        c = baseline_check(cm)
        print(f"baseline_check, {name}: {1000 * (time.perf_counter() - t0):.1f} ms (learned {c['learned']})")


if __name__ == "__main__":
    main()
