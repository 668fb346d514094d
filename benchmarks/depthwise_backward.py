"""Depthwise convs' weight gradient on the CPU: ATen (oneDNN) vs the tap sum of edgecv.nn.depthwise, interleaved
in one process (torch's threads as set by OMP_NUM_THREADS).

* per layer: every depthwise conv of the student at the given input size and batch, its weight gradient both ways,
  and whether :func:`edgecv.nn.depthwise.covers` routes it to the tap sum (the rule the training loop applies);
* per training step: forward + backward + fused AdamW of the whole student, plain vs inside
  :func:`fast_depthwise_backward` (what ``training.loop`` does on the CPU), median of interleaved rounds.

    flock /tmp/edgecv-heavy.lock .venv/bin/python benchmarks/depthwise_backward.py \\
        --models mobilenet_v3_small@64,efficientnet_lite0@96,efficientnet_lite0@224 [--batch 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from step_parts import per_call  # run as a script: benchmarks/ is on sys.path

from edgecv.models.registry import create_model
from edgecv.nn.depthwise import covers, eligible, fast_depthwise_backward, weight_grad_taps
from edgecv.runtimes.base import host_description
from edgecv.utils import cpu_flags


def layers(arch: str, size: int, batch: int, n: int) -> list[dict]:
    model = create_model(arch, 10).train().to(memory_format=torch.channels_last)
    shapes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.append((mod, inp[0].shape, out.shape[-2:])))
             for m in model.modules() if eligible(m)]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))  # the planes each conv sees (eval: one image)
    for h in hooks:
        h.remove()
    rows = []
    for conv, in_shape, out_hw in shapes:
        x = torch.randn(batch, *in_shape[1:]).contiguous(memory_format=torch.channels_last)
        w = conv.weight.detach()
        g = torch.randn(batch, in_shape[1], *out_hw).contiguous(memory_format=torch.channels_last)
        s, p, d = conv.stride, conv.padding, conv.dilation

        def aten(x=x, g=g, w=w, s=s, p=p, d=d):
            return torch.ops.aten.convolution_backward(g, x, w, None, list(s), list(p), list(d), False, [0, 0],
                                                       x.shape[1], [False, True, False])[1]

        def taps(x=x, g=g, w=w, s=s, p=p, d=d):
            return weight_grad_taps(x, g, tuple(w.shape[-2:]), s, p, d)

        a, t = per_call(aten, n), per_call(taps, n)
        rows.append({"channels": in_shape[1], "kernel": conv.kernel_size[0], "stride": s[0],
                     "in": in_shape[-1], "out": out_hw[-1], "aten_ms": a * 1e3, "taps_ms": t * 1e3,
                     "routed": covers(conv.kernel_size, tuple(in_shape[-2:]))})
    return rows


def step(arch: str, size: int, batch: int, n: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = create_model(arch, 10).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def one():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    plain, fast = [], []
    for _ in range(rounds):
        plain.append(per_call(one, n))
        with fast_depthwise_backward(model):
            fast.append(per_call(one, n))
    p, f = statistics.median(plain) * 1e3, statistics.median(fast) * 1e3
    return {"plain_ms": p, "fast_ms": f, "speedup": p / f}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenet_v3_small@64,efficientnet_lite0@96,efficientnet_lite0@224",
                    help="arch@size,...")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calls", type=int, default=5, help="timed calls per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved plain/fast rounds of the step")
    ap.add_argument("--json", dest="json_out", help="also write the figures here")
    a = ap.parse_args()
    flags = cpu_flags()
    host = {"cpu": host_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "isa": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})}
    print(f"{host['cpu']}, {host['threads']} threads, torch {host['torch']}, {' '.join(host['isa'])}\n")
    out = {"host": host, "batch": a.batch, "models": []}
    for spec in a.models.split(","):
        arch, size = spec.split("@")
        size = int(size)
        rows = layers(arch, size, a.batch, a.calls)
        st = step(arch, size, a.batch, a.calls, a.rounds)
        out["models"].append({"arch": arch, "size": size, "layers": rows, "step": st})
        print(f"## {arch} at {size} px, batch {a.batch}\n")
        print("| channels | kernel | stride | plane in -> out | ATen weight grad ms | tap sum ms | routed |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['channels']} | {r['kernel']} | {r['stride']} | {r['in']} -> {r['out']} | "
                  f"{r['aten_ms']:.2f} | {r['taps_ms']:.2f} | {'yes' if r['routed'] else 'no'} |")
        print(f"\ntraining step (forward + backward + AdamW): plain {st['plain_ms']:.1f} ms, routed "
              f"{st['fast_ms']:.1f} ms: **{st['speedup']:.2f}x** ({sum(r['routed'] for r in rows)} of "
              f"{len(rows)} depthwise convs routed)\n")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
