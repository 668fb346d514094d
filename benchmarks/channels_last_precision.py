"""How exact is the CPU's channels_last training step? fp32 contiguous and fp32 channels_last against fp64.

The student's CPU step runs in channels_last (docs/compress-speed.md: 1.5x faster at 224 px on AVX2). This
measures what that costs in precision, for the whole student (the train-mode gradients of one batch of
``mobilenet_v3_small`` at 64 px, dropout off, the same weights and input) and op by op (forward, input and weight
gradients of the layers a MobileNetV3 is made of). Errors are relative norms ``|g - g64| / |g64|``; parameters
whose fp64 gradient is below 1e-4 (BN biases followed by another BN: zero in exact arithmetic) are left out.

    .venv/bin/python benchmarks/channels_last_precision.py            # ~5 s on 2 cores
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def model_grads(arch: str = "mobilenet_v3_small", size: int = 64, batch: int = 64) -> dict:
    from edgecv.models.registry import create_model

    torch.manual_seed(0)
    m = create_model(arch, 10).train()
    for mod in m.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def grads(model, inp):
        nn.functional.cross_entropy(model(inp), y).backward()
        return {n: p.grad.detach().double() for n, p in model.named_parameters()}

    ref = grads(copy.deepcopy(m).double(), x.double())
    out = {"fp32 contiguous": grads(copy.deepcopy(m), x),
           "fp32 channels_last": grads(copy.deepcopy(m).to(memory_format=torch.channels_last),
                                       x.contiguous(memory_format=torch.channels_last))}
    big = [n for n in ref if ref[n].norm() > 1e-4]
    res = {}
    for name, g in out.items():
        tot = torch.cat([(g[n] - ref[n]).flatten() for n in big]).norm() / torch.cat([ref[n].flatten() for n in big]).norm()
        worst = max((((g[n] - ref[n]).norm() / ref[n].norm()).item(), n) for n in big)
        res[name] = {"all": tot.item(), "worst": worst[0], "worst_param": worst[1]}
    return res


def op_errors(make, shape, shift: float = 0.0) -> dict:
    """Forward, dx and dw relative errors of one layer, contiguous and channels_last fp32, against fp64."""
    torch.manual_seed(0)
    x = torch.randn(*shape) + shift
    ref_m = make().double()
    sd = {k: v.float() for k, v in ref_m.state_dict().items()}
    outs = {}
    go = None
    for tag in ("ref", "contiguous", "channels_last"):
        if tag == "ref":
            m, xi = ref_m, x.double().requires_grad_(True)
        else:
            m = make()
            m.load_state_dict(sd)
            xi = x.clone().requires_grad_(True)
        xin = xi
        if tag == "channels_last":
            m = m.to(memory_format=torch.channels_last)
            xin = xi.contiguous(memory_format=torch.channels_last)
        yv = m(xin)
        if go is None:
            go = torch.randn(yv.shape, dtype=torch.float64)
        yv.backward(go.to(yv.dtype))
        outs[tag] = (yv.double(), xi.grad.double(), next(m.parameters()).grad.double())
    r = outs["ref"]
    return {tag: [((outs[tag][i] - r[i]).norm() / r[i].norm()).item() for i in range(3)]
            for tag in ("contiguous", "channels_last")}


OPS = [
    ("depthwise 3x3, 96 ch, 8x8", lambda: nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False), (64, 96, 8, 8), 0.0),
    ("depthwise 5x5, 240 ch, 4x4", lambda: nn.Conv2d(240, 240, 5, padding=2, groups=240, bias=False), (64, 240, 4, 4), 0.0),
    ("conv 1x1 48->144, 4x4", lambda: nn.Conv2d(48, 144, 1, bias=False), (64, 48, 4, 4), 0.0),
    ("conv 1x1 + hardswish, 16 ch, 8x8", lambda: nn.Sequential(nn.Conv2d(16, 16, 1), nn.Hardswish()), (64, 16, 8, 8), 0.0),
    ("BatchNorm2d (train), 144 ch, 4x4", lambda: nn.BatchNorm2d(144), (64, 144, 4, 4), 0.0),
    ("BatchNorm2d (train), 144 ch, 4x4, mean 3", lambda: nn.BatchNorm2d(144), (64, 144, 4, 4), 3.0),
    ("BatchNorm2d (train), 16 ch, 32x32", lambda: nn.BatchNorm2d(16), (64, 16, 32, 32), 0.0),
]


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| mobilenet_v3_small, 64 px, batch 64: gradients vs fp64 | all parameters | worst parameter |")
    print("|---|---|---|")
    for name, r in model_grads().items():
        print(f"| {name} | {r['all']:.1e} | {r['worst']:.1e} ({r['worst_param']}) |")
    print("\n| layer (fp32 vs fp64) | forward contiguous / channels_last | dx | dw |")
    print("|---|---|---|---|")
    for name, make, shape, shift in OPS:
        e = op_errors(make, shape, shift)
        c, cl = e["contiguous"], e["channels_last"]
        print(f"| {name} | " + " | ".join(f"{c[i]:.1e} / {cl[i]:.1e}" for i in range(3)) + " |")


if __name__ == "__main__":
    main()
