"""What ``edgecv export SOURCE`` exports from: a compress RUN_DIR (``run.json``) or a checkpoint file.

RUN_DIR contract (``edgecv.run/1``): ``run.json`` lists ``stages`` (distill | prune | quantize) with
``status``, ``checkpoint`` (relative to RUN_DIR), ``sha256`` and metrics. The exported stage is the last done
stage in pipeline order (quantize > prune > distill) unless ``--stage`` names one.

Which weights each artifact comes from:

* INT8: the QAT model when the source is a QAT checkpoint (``meta["quant"]``); otherwise post-training
  quantization of the float model (same fake-quant scheme, calibrated on ``--data``): ``int8_source = "ptq"``.
* fp32/fp16: for a run whose chosen stage is ``quantize``, the **prune** stage checkpoint (else distill): the
  float model the QAT stage started from, never touched by fake-quant. For a bare QAT checkpoint, the QAT
  weights with fake-quant disabled (BN folded): ``fp32_source = "qat_fake_quant_off"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from edgecv.errors import UserError
from edgecv.models.checkpoint import Checkpoint, load_checkpoint
from edgecv.utils import sha256_file


@dataclass
class ExportSource:
    path: Path
    kind: str  # "run" | "checkpoint"
    checkpoint: Checkpoint
    checkpoint_path: Path
    sha256: str
    stage: str | None = None
    float_checkpoint: Checkpoint | None = None  # run: the stage fp32 artifacts come from
    float_stage: str | None = None
    run: dict = field(default_factory=dict)

    @property
    def is_qat(self) -> bool:
        return bool(self.checkpoint.meta.get("quant"))

    @property
    def data(self) -> str | None:
        """The data set the source was trained on, if recorded (``--data`` default for validation)."""
        for d in (self.run.get("data"), self.checkpoint.metrics.get("data")):
            if isinstance(d, str) and d:
                return d[len("builtin:"):] if d.startswith("builtin:") else d
        return None

    def build(self) -> nn.Module:
        return self.checkpoint.build().eval()

    def float_model(self) -> tuple[nn.Module, str]:
        """(fp32 model, where it came from)."""
        if self.float_checkpoint is not None:
            return self.float_checkpoint.build().eval(), f"stage:{self.float_stage}"
        m = self.build()
        if not self.is_qat:
            return m, f"stage:{self.stage}" if self.stage else "checkpoint"
        from edgecv.quant import deploy

        return deploy(m, fake_quant=False), "qat_fake_quant_off"

    def describe(self) -> dict:
        ck = self.checkpoint
        d = {"path": str(self.path), "kind": self.kind, "checkpoint": str(self.checkpoint_path),
             "sha256": self.sha256, "stage": self.stage, "arch": ck.arch, "metrics": dict(ck.metrics),
             "qat": self.is_qat}
        if ck.meta.get("channel_spec"):
            d["pruned"] = True
        if self.float_stage:
            d["float_stage"] = self.float_stage
        return d


def _load(path: Path, trust_pickle: bool) -> Checkpoint:
    ck = load_checkpoint(path, trust_pickle=trust_pickle)
    if ck.kind != "edgecv":
        raise UserError(f"{path}: export needs an edgecv checkpoint (edgecv train / compress), got a {ck.kind} file")
    if not ck.class_names or ck.preprocess is None:
        raise UserError(f"{path}: checkpoint has no class names / preprocessing recorded")
    return ck


def resolve_source(source: str | Path, stage: str | None = None, trust_pickle: bool = False) -> ExportSource:
    p = Path(source).expanduser()
    if not p.exists():
        raise UserError(f"no such run directory or checkpoint: {source}")
    if p.is_file():
        if stage:
            raise UserError("--stage applies to a run directory, not to a checkpoint file")
        ck = _load(p, trust_pickle)
        return ExportSource(p, "checkpoint", ck, p, sha256_file(p))
    rj = p / "run.json"
    if not rj.is_file():
        raise UserError(f"{p}: not a compress run directory (no run.json)")
    from edgecv.contracts.rundir import QUANTIZED, STAGES, Run, float_inputs

    run = Run.load(p).data  # the one reader of run.json: bad JSON or another schema -> UserError
    stages = run.get("stages") or {}
    done = [s for s in STAGES if (stages.get(s) or {}).get("status") == "done"]
    if stage:
        if stage not in STAGES:
            raise UserError(f"--stage must be one of {', '.join(STAGES)}, got '{stage}'")
        if stage not in done:
            raise UserError(f"{p}: stage '{stage}' is not done (done: {', '.join(done) or 'none'})")
        chosen = stage
    else:
        if not done:
            raise UserError(f"{p}: no completed stage to export (run edgecv compress first)")
        chosen = done[-1]

    def stage_ck(name: str) -> tuple[Checkpoint, Path, str]:
        st = stages[name]
        f = p / st["checkpoint"]
        if not f.is_file():
            raise UserError(f"{p}: stage '{name}' checkpoint {f} is missing")
        digest = sha256_file(f)
        if st.get("sha256") and st["sha256"] != digest:
            raise UserError(f"{f}: sha256 does not match run.json (modified or corrupt checkpoint)")
        return _load(f, trust_pickle), f, digest

    ck, ck_path, digest = stage_ck(chosen)
    src = ExportSource(p, "run", ck, ck_path, digest, stage=chosen, run=run)
    if chosen in QUANTIZED:
        for fs in float_inputs(chosen):
            if fs in done:
                src.float_checkpoint, _, _ = stage_ck(fs)
                src.float_stage = fs
                break
    return src
