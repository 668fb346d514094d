"""Structured channel pruning with torch-pruning's DepGraph, iterated down to a MAC target.

DepGraph couples every layer that must lose the same channels (residual adds, depthwise convs, MobileNetV3's
squeeze-excite ``fc2`` output and the multiplication it scales), so a pruned model stays a valid, smaller dense
model. Pruning runs in small steps (every layer to ``1 - k * ratio`` of its unpruned width, rounded down to a
multiple of ``round_to``, so every layer keeps about the same share) until the MAC count reaches the next milestone;
the caller fine-tunes between milestones (one-shot 50 % pruning collapses accuracy). Under torchrun the decision is
made on rank 0 and broadcast as ``channel spec + state_dict`` so that every rank holds the identical pruned model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgecv import distributed as D
from edgecv.errors import UserError
from edgecv.models.registry import create_model
from edgecv.nn.graph import count_macs
from edgecv.nn.spec import channel_spec_of

IMPORTANCES = ("magnitude", "taylor")
SCOPES = ("all", "inner")  # --prune-scope: every prunable channel, or all but the residual stream's


def make_importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise UserError(f"--importance must be one of {', '.join(IMPORTANCES)}, got '{name}'")


def ignored_layers(model: nn.Module, num_classes: int, min_channels: int) -> list[nn.Module]:
    """The classifier head (its outputs are the classes) and layers already at the channel floor."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            out.append(m)
        elif isinstance(m, nn.Conv2d) and m.out_channels <= min_channels:
            out.append(m)
    return out


def residual_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The dense convs whose output channels join a residual add (``--prune-scope inner`` keeps them): the residual
    stream that every block of a stage reads and writes. Found from DepGraph, so any architecture: EfficientNet's and
    MobileNetV3's projection convs, ResNet's stem, last block convs and downsamples. A squeeze-excite multiply is not
    an add, so the expanded channels it scales stay prunable."""
    import torch_pruning as tp
    from torch_pruning import ops

    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            group = dg.get_pruning_group(m, tp.prune_conv_out_channels, idxs=[0])
            if any(d.target.type == ops.OPTYPE.ELEMENTWISE and "Add" in str(d.target.grad_fn) for d, _ in group):
                out.append(m)
    return out


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every dense conv, by module name: what each prune step's widths are relative to."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}


def _step_ratios(model: nn.Module, start: dict[str, int], keep: float, ignored: list[nn.Module], round_to: int,
                 min_channels: int) -> dict[nn.Module, float]:
    """Per-layer ratios that take each layer to ``keep`` of its starting width, rounded down to ``round_to``, never
    below ``min_channels`` nor above its current width."""
    out = {}
    for name, m in model.named_modules():
        if name not in start or m in ignored:
            continue
        target = max(min_channels, int(start[name] * keep) // round_to * round_to)
        if target < m.out_channels:
            out[m] = 1 - (target + 0.5) / m.out_channels  # + 0.5: int() of the kept count lands on target
    return out


def prune_to_macs(model: nn.Module, img_size: int, num_classes: int, target_macs: int, importance: str = "magnitude",
                  ratio: float = 0.05, round_to: int = 8, min_channels: int = 16, scope: str = "all",
                  grad_fn: Callable[[nn.Module], None] | None = None, start: dict[str, int] | None = None,
                  kept: dict[str, dict[str, list[int]]] | None = None) -> int:
    """Prune ``model`` in place until ``count_macs(model) <= target_macs``; returns the final MAC count.

    Step k takes every prunable layer to ``1 - k * ratio`` of its width in ``start`` (default: its width now; the
    prune stage passes the unpruned student's, :func:`widths`), rounded down to ``round_to``, so rounding never
    compounds: a new ``ratio`` cut of the *current* widths each step, as before, rounded each step's cut up to 8
    channels, so a 40-channel layer lost 20 % a step while a 960-channel one lost 5 %, and EfficientNet-Lite0's
    narrow residual stream went from 40 to 16 channels on its way to half the MACs (benchmarks/RESULTS.md, "The prune
    stage of a pretrained student"). ``grad_fn(model)`` must leave gradients in ``.grad`` (Taylor importance).
    ``kept``: filled with every dense layer's kept channels, ``{name: {"out": [...], "in": [...]}}`` as indices of
    its channels when the call began (what :func:`reconstruct` needs). ``scope``: ``all`` prunes every layer's
    outputs but the head's and those at the floor; ``inner`` keeps the residual stream too (:func:`residual_layers`),
    so only the blocks' inner channels are cut, deeper, to reach the same MACs."""
    import torch_pruning as tp

    if scope not in SCOPES:
        raise UserError(f"--prune-scope must be one of {', '.join(SCOPES)}, got '{scope}'")
    macs = count_macs(model, img_size)
    if importance == "taylor" and grad_fn is None:
        raise UserError("--importance taylor needs gradients of the training loss (no grad_fn given)")
    start = start or widths(model)
    names = {m: n for n, m in model.named_modules()}
    if kept is not None:
        kept.clear()
        kept.update({n: {"out": list(range(_outs(m))), "in": list(range(_ins(m)))}
                     for n, m in model.named_modules() if _dense(m)})
    was = model.training
    model.eval()  # trace with running BN statistics: the 1x1 maps at small sizes break batch-stat BN
    example = torch.randn(2, 3, img_size, img_size, device=next(model.parameters()).device)
    stream = residual_layers(model, example) if scope == "inner" else []
    try:
        for k in range(1, int(1 / ratio)):
            if macs <= target_macs:
                return macs
            ignored = ignored_layers(model, num_classes, min_channels) + stream
            ratios = _step_ratios(model, start, 1 - k * ratio, ignored, round_to, min_channels)
            if not ratios:
                continue
            pruner = tp.pruner.BasePruner(model, example, importance=make_importance(importance), pruning_ratio=0.0,
                                          pruning_ratio_dict=ratios, iterative_steps=1, global_pruning=False,
                                          ignored_layers=ignored)
            if importance == "taylor":
                model.zero_grad(set_to_none=True)
                grad_fn(model)
            for group in pruner.step(interactive=True):
                if kept is not None:
                    _record_cut(group, pruner.DG, names, kept)
                group.prune()
            model.zero_grad(set_to_none=True)
            macs = count_macs(model, img_size)
    finally:
        model.train(was)
    if macs <= target_macs:
        return macs
    raise UserError(f"pruning stalled at {macs:,} MACs (target {target_macs:,}): every layer is at the "
                    f"{min_channels}-channel floor; ask for a larger --target-macs")


def _dense(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or isinstance(m, nn.Conv2d) and m.groups == 1


def _outs(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _ins(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _record_cut(group, dg, names: dict[nn.Module, str], kept: dict[str, dict[str, list[int]]]) -> None:
    """Remove the channels a torch-pruning group is about to cut from ``kept`` (indices of the current widths)."""
    for dep, idxs in group:
        m = dep.target.module
        name = names.get(m)
        if name not in kept:
            continue
        side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else \
            "in" if dg.is_in_channel_pruning_fn(dep.handler) else None
        if side is None:
            continue
        gone = {int(getattr(i, "idx", i)) for i in idxs}
        kept[name][side] = [c for j, c in enumerate(kept[name][side]) if j not in gone]


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has been seen."""


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C[, H, W]) -> (positions, C)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) if t.ndim == 4 else t


def _grab(model: nn.Module, module: nn.Module, x: torch.Tensor, want_input: bool) -> torch.Tensor:
    """``module``'s input (or output) in ``model(x)``; the rest of the forward is skipped."""
    box = []

    def hook(_m, inp, out=None):
        box.append(inp[0] if want_input else out)
        raise _Stop

    h = module.register_forward_pre_hook(hook) if want_input else module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return box[0]


@torch.no_grad()
def reconstruct(original: nn.Module, pruned: nn.Module, kept: dict[str, dict[str, list[int]]], batches: list,
                device: torch.device | str = "cpu", ridge: float = 1e-2, max_rows: int = 32768) -> list[str]:
    """Refit the weights of every pointwise layer that lost input channels so that its output matches the
    unpruned model's, by least squares on ``batches``: the cut channels' contribution is folded into the channels
    kept (He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017).

    ``original``: the model before the cut; ``pruned``: after it, ``kept`` as :func:`prune_to_macs` fills it;
    ``batches``: a list of input tensors. 1x1 convolutions (stride 1) and linear layers are refitted, their biases
    with them; other layers are left as the cut left them. Both models run in eval mode
    (running BatchNorm statistics, the unpruned ones sliced). The layers are refitted one after the other in
    forward order, each on the inputs that the refits before it produce: fitting them all at once on the plain
    cut's inputs left a cifar10-mini cut at 8-10 % top-1 (its deep inputs are too far from the unpruned ones),
    one by one at 66 % (docs/compress.md). ``ridge`` scales an L2 term by the inputs' mean energy; at most
    ``max_rows`` positions of a batch enter a layer's fit. Returns the refitted layers' names."""
    orig_mods, new_mods = dict(original.named_modules()), dict(pruned.named_modules())
    todo = [n for n, m in new_mods.items() if n in kept and n in orig_mods and _dense(m)
            and (isinstance(m, nn.Linear) or m.kernel_size == (1, 1) and m.stride == (1, 1))
            and _ins(m) < _ins(orig_mods[n])]
    was = original.training, pruned.training
    original.eval().to(device)
    pruned.eval().to(device)
    try:
        for j, name in enumerate(todo):
            m, ko, ki = new_mods[name], kept[name]["out"], kept[name]["in"]
            bias = m.bias is not None
            k = len(ki) + bias  # the bias: the weight of a constant input
            xtx = torch.zeros(k, k, dtype=torch.float64)
            xty = torch.zeros(k, len(ko), dtype=torch.float64)
            for bi, x in enumerate(batches):
                x = x.to(device)
                xi = _rows(_grab(pruned, m, x, True)).double().cpu()
                y = _rows(_grab(original, orig_mods[name], x, False)).double().cpu()[:, ko]
                if len(xi) > max_rows:  # the same positions in both, seeded by batch and layer
                    pick = torch.randperm(len(xi), generator=torch.Generator().manual_seed(bi * 1000 + j))[:max_rows]
                    xi, y = xi[pick], y[pick]
                if bias:
                    xi = torch.cat([xi, torch.ones(len(xi), 1, dtype=xi.dtype)], 1)
                xtx += xi.T @ xi
                xty += xi.T @ y
            lam = ridge * float(xtx.diagonal().mean()) + 1e-12
            w = torch.linalg.solve(xtx + lam * torch.eye(k, dtype=torch.float64), xty).T  # (out, in [+ 1])
            if bias:
                m.bias.copy_(w[:, -1].to(m.bias.dtype))
                w = w[:, :-1]
            m.weight.copy_(w.reshape(m.weight.shape).to(m.weight.dtype))
    finally:
        original.train(was[0])
        pruned.train(was[1])
    return todo


def pruned_copy_synced(model: nn.Module | None, arch: str, num_classes: int) -> nn.Module:
    """Rank 0's pruned ``model`` on every rank (rebuilt from channel spec + state_dict); ``model`` is only read
    on rank 0."""
    if not D.is_distributed():
        return model
    payload = None
    if D.is_main():
        payload = {"spec": channel_spec_of(model),
                   "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload = D.broadcast_object(payload)
    if D.is_main():
        return model
    m = create_model(arch, num_classes, payload["spec"])
    m.load_state_dict(payload["state"])
    return m


def milestones(base_macs: int, target_fraction: float, steps: int) -> list[int]:
    """MAC milestones of ``steps`` rounds, linear from the unpruned count down to the target."""
    return [int(base_macs * (1 - (1 - target_fraction) * (i + 1) / steps)) for i in range(steps)]


def finetune_schedule(total_epochs: int, steps: int) -> list[int]:
    """Fine-tune epochs after each round: an equal share between rounds, the rest after the last one."""
    between = total_epochs // (steps + 1)
    sched = [between] * (steps - 1)
    sched.append(total_epochs - between * (steps - 1))
    return sched


def plan_rounds(total_epochs: int, steps: int) -> tuple[int, list[int], str | None]:
    """Rounds and their fine-tune epochs, planned together so that no round cuts without recovery.

    ``finetune_schedule`` gives each round before the last ``total // (steps + 1)`` epochs, which is 0 when there
    are fewer epochs than rounds + 1 (``--epochs-prune 3 --prune-steps 4``: ``[0, 0, 0, 3]``, one-shot pruning in
    effect: on an ImageNet-pretrained EfficientNet-Lite0, val top-1 fell to 9-16 % before the last round's
    fine-tune). Then the rounds are reduced until each gets one epoch and the last (the cut to the target)
    at least two (``3, 4`` -> ``[1, 2]``; ``4, 4`` -> ``[1, 1, 2]``; ``2`` or ``1`` epochs: one round; ``0``:
    one cut without fine-tune), and the returned note says so. On cifar10-mini at 96 px (two seeds, from the
    distilled student), ``[1, 2]`` ended 3 epochs 1.30 pt above ``[1, 1, 1]`` (docs/compress.md). Returns
    ``(rounds, schedule, note or None)``."""
    sched = finetune_schedule(total_epochs, steps)
    if min(sched) > 0 or steps == 1:
        return steps, sched, None
    rounds = max(1, min(steps, total_epochs - 1))
    sched = [1] * (rounds - 1) + [total_epochs - rounds + 1]
    what = "one cut without fine-tune" if total_epochs == 0 else \
        f"{rounds} round(s) with fine-tune epochs {sched}"
    return rounds, sched, (f"--prune-steps {steps} with --epochs-prune {total_epochs} cannot give every round a "
                           f"fine-tune epoch and the last two; pruning in {what}")


def seeded_batches(ds, n: int, batch_size: int, seed: int):
    """The first ``n`` batches of a shuffle of ``ds`` seeded with ``seed`` (the items as the dataset gives them):
    what a cut is repaired on (:func:`reconstruct`, :func:`recalibrate_bn`)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    for i, b in enumerate(loader):
        if i >= n:
            return
        yield b


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (an iterable of input tensors, or of
    tuples whose first item is the input), as a cumulative average over them; returns the images seen.

    After a structured cut the remaining channels' statistics no longer describe what the next layer receives
    (a removed channel changes every sum it fed), so the running mean/var are recomputed from training data
    before the pruned model is evaluated or fine-tuned; weights are unchanged."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m, m.momentum) for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    seen = 0
    try:
        for b in batches:
            x = b[0] if isinstance(b, tuple | list) else b
            model(x.to(device))
            seen += int(x.shape[0])
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)
    return seen


def check_se_consistency(model: nn.Module) -> list[str]:
    """Problems with squeeze-excite blocks (fc1 in == fc2 out, fc1 out == fc2 in); empty when consistent."""
    problems = []
    for name, m in model.named_modules():
        fc1, fc2 = getattr(m, "fc1", None), getattr(m, "fc2", None)
        if isinstance(fc1, nn.Conv2d) and isinstance(fc2, nn.Conv2d):
            if fc1.in_channels != fc2.out_channels or fc1.out_channels != fc2.in_channels:
                problems.append(f"{name}: fc1 {fc1.in_channels}->{fc1.out_channels}, "
                                f"fc2 {fc2.in_channels}->{fc2.out_channels}")
    return problems
