"""Classification losses (cross-entropy, focal, class-weighted) and batch-level MixUp/CutMix.

:class:`ClassificationLoss` takes hard labels ``(N,)`` or soft targets ``(N, C)`` (MixUp/CutMix, label
smoothing). Hard-label cross-entropy is exactly ``F.cross_entropy(weight, label_smoothing)``. Otherwise the
targets are turned into distributions ``t`` (one-hot, then smoothed: ``t (1 - eps) + eps / C``) and

    focal:  l_i = -sum_c t_ic (1 - p_ic)^gamma log p_ic      (gamma = 0: cross-entropy with soft targets)

with the per-sample class weight ``w_i = sum_c t_ic w_c`` and the batch loss ``sum_i w_i l_i / sum_i w_i`` (the
weighted mean ``F.cross_entropy`` uses for hard labels). Smoothing puts ``eps / C`` on every class, and the
``(1 - p)^gamma`` factor then damps the classes the model already rules out; the loss stays a proper weighted
mean, so focal with smoothing is well defined and reduces to smoothed CE at ``gamma = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgecv.errors import UserError

LOSSES = ("ce", "focal")
FOCAL_GAMMA = 2.0


class ClassificationLoss(nn.Module):
    def __init__(self, kind: str = "ce", label_smoothing: float = 0.0, weight: torch.Tensor | None = None,
                 gamma: float = FOCAL_GAMMA):
        super().__init__()
        if kind not in LOSSES:
            raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got '{kind}'")
        self.kind, self.label_smoothing, self.gamma = kind, float(label_smoothing), float(gamma)
        self.weight: torch.Tensor | None
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = logits.float()
        w = None if self.weight is None else self.weight.to(s.device)
        if self.kind == "ce" and target.ndim == 1:
            return F.cross_entropy(s, target, weight=w, label_smoothing=self.label_smoothing)
        c = s.shape[1]
        t = F.one_hot(target.long(), c).float() if target.ndim == 1 else target.float()
        if self.label_smoothing:
            t = t * (1.0 - self.label_smoothing) + self.label_smoothing / c
        logp = F.log_softmax(s, dim=1)
        gamma = self.gamma if self.kind == "focal" else 0.0
        mod = (1.0 - logp.exp()).clamp_min(0.0).pow(gamma) if gamma else 1.0
        per = -(t * mod * logp).sum(1)
        if w is None:
            return per.mean()
        wi = t @ w
        return (wi * per).sum() / wi.sum().clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------- MixUp / CutMix
@dataclass
class Mixed:
    """Targets of a mixed batch: ``lam`` of ``y`` and ``1 - lam`` of ``y[perm]``."""

    y: torch.Tensor
    perm: torch.Tensor
    lam: float

    def soft(self, num_classes: int) -> torch.Tensor:
        oh = F.one_hot(self.y.long(), num_classes).float()
        return self.lam * oh + (1.0 - self.lam) * oh[self.perm]


def mix_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Mixed]:
    """MixUp or CutMix (one of the two, equally likely; ``lam ~ Beta(1, 1)``), torchvision's defaults, drawn from
    the global torch RNG (the loop seeds it per epoch and rank, so a resumed run mixes the same way). CutMix's
    ``lam`` is the exact share of the image left unpasted."""
    n = x.shape[0]
    perm = torch.randperm(n).to(x.device)
    lam = float(torch.rand(1).item())
    if torch.rand(1).item() < 0.5:  # MixUp
        return x * lam + x[perm] * (1.0 - lam), Mixed(y, perm, lam)
    h, w = x.shape[-2:]
    r = (1.0 - lam) ** 0.5
    ch, cw = int(h * r), int(w * r)
    cy, cx = int(torch.randint(0, h, (1,)).item()), int(torch.randint(0, w, (1,)).item())
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
    return out, Mixed(y, perm, lam)
