"""Knowledge distillation as a ``loss_fn`` for :func:`edgecv.training.loop.fit`.

Hinton KD: ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)`` with the teacher
frozen in eval mode; its logits are computed once per batch under ``no_grad`` (fp16 autocast on CUDA).
Teacher and student may use different preprocessing (input size, mean/std): the student's batch is
un-normalised, resized and re-normalised for the teacher inside the loss.

Replayed soft labels (:mod:`edgecv.compress.softlabels`): when the batch carries ``extra = {"t_idx", "t_val"}``
(the teacher's stored top-k class indices and logits of exactly this view), the soft term uses them instead of a
teacher forward: ``T^2 * sum_j p_j (log p_j - log q_j)`` over the stored classes, ``p = softmax(t_val / T)``
(the other classes carry zero teacher mass), ``log q`` the student's log-softmax over *all* classes gathered at
``t_idx``. With every class stored this is exactly the live term.

Optional feature-map KD (``beta > 0``): the last spatial feature map of the student is mapped to the
teacher's channel count by a 1x1 adapter and matched (MSE, per-channel-standardised) to the teacher's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgecv import distributed as D
from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError

# whom the prune fine-tunes and QAT distil from (--recovery-kd; "auto" first: the better of the two on val)
RECOVERY_SOURCES = ("teacher", "student")


@dataclass
class KDConfig:
    temperature: float = 4.0
    alpha: float = 0.8  # weight of the soft (teacher) term; 1 - alpha goes to the hard-label CE
    beta: float = 0.0  # weight of feature-map KD (0 = off)
    label_smoothing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def last_feature_module(model: nn.Module, size: int) -> tuple[nn.Module, int]:
    """The module producing the last 4-D (spatial) activation in a forward pass, and its channel count.

    For torchvision ResNets this is the last block's output, for MobileNetV3 the last feature conv.
    """
    order: list[tuple[nn.Module, int]] = []

    def hook(m, _inp, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            order.append((m, out.shape[1]))

    from edgecv.nn.graph import traced_forward

    traced_forward(model, [(m, hook) for m in model.modules() if not list(m.children())], size)
    if not order:
        raise UserError(f"--feature-kd: {type(model).__name__} has no 4-D (spatial) feature map to match")
    return order[-1]


def stored_kd(s: torch.Tensor, t_idx: torch.Tensor, t_val: torch.Tensor, T: float) -> torch.Tensor:
    """The KD term from the teacher's stored top-k logits ``t_val`` at classes ``t_idx`` (both ``(B, k)``)."""
    log_q = F.log_softmax(s / T, dim=1).gather(1, t_idx.long())
    log_p = F.log_softmax(t_val.float() / T, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean() * (T * T)


class _Capture:
    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m, _inp, out):
        self.value = out  # the last call wins (modules reused inside a block, e.g. ResNet's relu)

    def remove(self):
        self.handle.remove()


class KDLoss(nn.Module):
    """``loss_fn(logits, targets, images)`` for :func:`fit`. Call :meth:`close` to remove its hooks."""

    def __init__(self, teacher: nn.Module, cfg: KDConfig, student_pre: Preprocess, teacher_pre: Preprocess | None,
                 student: nn.Module | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.teacher.to(self.device)
        tp = teacher_pre or student_pre
        self.t_size = tp.input_size
        self.same_input = (tp.input_size == student_pre.input_size and tuple(tp.mean) == tuple(student_pre.mean)
                           and tuple(tp.std) == tuple(student_pre.std) and tp.channel_order == student_pre.channel_order)

        def v(t):
            return torch.tensor(t, dtype=torch.float32).reshape(1, 3, 1, 1)

        self.register_buffer("s_mean", v(student_pre.mean))
        self.register_buffer("s_std", v(student_pre.std))
        self.register_buffer("t_mean", v(tp.mean))
        self.register_buffer("t_std", v(tp.std))
        self.flip = tp.channel_order != student_pre.channel_order
        self.cpu_bf16 = False  # the live teacher under bf16 autocast on the CPU (only where it has AVX512-BF16/AMX)
        self.hard_loss: nn.Module | None = None  # the hard-label term (--balance weights / --loss focal); None: CE
        self.adapter: nn.Module | None = None
        self.replay = True  # the batch's stored soft labels stand for this teacher (False: they are another's)
        self._s_cap = self._t_cap = None
        if cfg.beta > 0:
            if student is None:
                raise ValueError("feature KD needs the student module")
            s_mod, s_ch = last_feature_module(student, student_pre.input_size)
            t_mod, t_ch = last_feature_module(self.teacher, self.t_size)
            self.adapter = nn.Conv2d(s_ch, t_ch, 1, bias=False)
            self._s_cap, self._t_cap = _Capture(s_mod), _Capture(t_mod)
            if D.is_distributed():  # the adapter lives outside DDP: average its gradients by hand
                for p in self.adapter.parameters():
                    p.register_hook(lambda g: D.all_reduce_sum(g.clone()) / D.world_size())
        self.to(self.device)
        self.teacher.to(self.device)

    def teacher_channels_last(self, on: bool = True) -> None:
        """The frozen teacher in channels_last on the CPU (measured 1.33x faster for resnet18 at 224 px on AVX2,
        the same logits to 1e-6; docs/compress-speed.md)."""
        if on and self.device.type == "cpu":
            self.teacher.to(memory_format=torch.channels_last)

    def extra_params(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters()) if self.adapter is not None else []

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_input:
            return x
        raw = x.float() * self.s_std + self.s_mean
        if self.flip:
            raw = raw.flip(1)
        if raw.shape[-1] != self.t_size or raw.shape[-2] != self.t_size:
            raw = F.interpolate(raw, size=(self.t_size, self.t_size), mode="bilinear", align_corners=False,
                                antialias=raw.shape[-1] > self.t_size)
        return (raw - self.t_mean) / self.t_std

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        xt = self.teacher_input(x)
        if x.device.type == "cpu" and self.cpu_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.teacher(xt).float()
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=x.device.type == "cuda"):
            return self.teacher(xt).float()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor,
                extra: dict | None = None) -> torch.Tensor:
        s_feat = self._s_cap.value if self._s_cap is not None else None
        s = logits.float()
        if self.cfg.alpha == 0 and self.adapter is None:  # plain CE (the no-KD baseline): skip the teacher
            return self.hard(s, targets)
        T = self.cfg.temperature
        if self.replay and extra is not None and "t_val" in extra and self.adapter is None:
            soft = stored_kd(s, extra["t_idx"], extra["t_val"], T)
        else:
            t = self.teacher_logits(images)
            soft = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), reduction="batchmean",
                            log_target=True) * (T * T)
        hard = self.hard(s, targets)
        loss = self.cfg.alpha * soft + (1 - self.cfg.alpha) * hard
        if self.adapter is not None and s_feat is not None and self._t_cap.value is not None:
            loss = loss + self.cfg.beta * self.feature_loss(s_feat, self._t_cap.value.detach())
        return loss

    def hard(self, s: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The hard-label term; ``targets`` are labels ``(N,)`` or, for a MixUp/CutMix batch, soft ``(N, C)``."""
        if self.hard_loss is not None:
            return self.hard_loss(s, targets)
        return F.cross_entropy(s, targets, label_smoothing=self.cfg.label_smoothing)

    def feature_loss(self, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        fs = self.adapter(fs.float())
        h = min(fs.shape[-2], ft.shape[-2])
        w = min(fs.shape[-1], ft.shape[-1])
        fs = F.adaptive_avg_pool2d(fs, (h, w))
        ft = F.adaptive_avg_pool2d(ft.float(), (h, w))

        def norm(f):
            return (f - f.mean((0, 2, 3), keepdim=True)) / (f.std((0, 2, 3), keepdim=True) + 1e-5)

        return F.mse_loss(norm(fs), norm(ft))

    def close(self) -> None:
        for c in (self._s_cap, self._t_cap):
            if c is not None:
                c.remove()
        self._s_cap = self._t_cap = None
