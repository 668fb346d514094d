"""Shared fixtures: tiny synthetic ImageFolder data, the real cifar10-mini (slow tests), CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR_TARBALL = REPO.parent / "shared" / "datasets" / "cifar10-mini.tar.gz"
HYMENOPTERA_TARBALL = REPO.parent / "shared" / "datasets" / "hymenoptera.tar.gz"

os.environ.setdefault("EDGECV_CACHE", str(REPO / ".cache" / "test-cache"))


def make_image_folder(root: Path, classes=("red", "green", "blue"), n_train=12, n_val=4, size=16,
                      split=True, seed=0) -> Path:
    """Class-coloured noisy images: learnable in a few steps, real JPEG/PNG files on disk."""
    rng = np.random.default_rng(seed)
    base = {0: (200, 40, 40), 1: (40, 200, 40), 2: (40, 40, 200), 3: (200, 200, 40), 4: (40, 200, 200)}
    splits = {"train": n_train, "val": n_val} if split else {"": n_train + n_val}
    for sp, n in splits.items():
        for ci, c in enumerate(classes):
            d = root / sp / c if sp else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                col = np.array(base[ci % len(base)], dtype=np.float32)
                a = np.clip(col + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                ext = "png" if i % 3 == 0 else "jpg"
                Image.fromarray(a).save(d / f"{i:03d}.{ext}")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_folder_session(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "data")


def real_dataset(tarball: Path, name: str) -> Path:
    """A real ImageFolder from shared/datasets (extracted once into the cache); skips when the tarball is absent."""
    if not tarball.is_file():
        pytest.skip(f"real data not found: {tarball}")
    cache = Path(os.environ.get("EDGECV_CIFAR_CACHE", Path.home() / ".cache" / "edgecv"))
    root = cache / name
    if not (root / "val").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as t:
            t.extractall(cache, filter="data")
    return root


@pytest.fixture(scope="session")
def cifar10_mini() -> Path:
    return real_dataset(CIFAR_TARBALL, "cifar10-mini")


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    return real_dataset(HYMENOPTERA_TARBALL, "hymenoptera")


def run_cli(*args: str, check: bool = False, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m edgecv ARGS`` in a subprocess (real exit codes, real stderr)."""
    e = {**os.environ, **(env or {})}
    e.setdefault("PYTHONPATH", str(REPO))
    p = subprocess.run([sys.executable, "-m", "edgecv", *args], capture_output=True, text=True, timeout=timeout,
                       env=e, cwd=str(REPO))
    if check and p.returncode != 0:
        raise AssertionError(f"edgecv {' '.join(args)} -> {p.returncode}\n{p.stderr[-3000:]}")
    return p


def one_line(stderr: str) -> str:
    """The single non-empty stderr line of a failed command (no traceback): the bad-input contract."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def one_line_error(r, code: int, needle: str) -> str:
    """``r`` (a finished process) exited ``code`` with one stderr line containing ``needle``."""
    assert r.returncode == code, r.stderr[-3000:]
    line = one_line(r.stderr)
    assert needle in line, r.stderr[-3000:]
    return line


@pytest.fixture
def cli():
    return run_cli


def save_untrained_teacher(path: Path, classes, input_size: int) -> Path:
    """An untrained resnet18 teacher in the edgecv checkpoint format: enough to exercise the compress plumbing."""
    import torch

    from edgecv.data.preprocess import Preprocess
    from edgecv.models.checkpoint import save_checkpoint
    from edgecv.models.registry import create_model

    torch.manual_seed(0)
    save_checkpoint(path, create_model("resnet18", len(classes)).eval(), "resnet18", list(classes),
                    Preprocess(input_size=input_size), metrics={"val_top1": 100.0 / len(classes)})
    return path

