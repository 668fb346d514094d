"""INT8 QAT on a pruned student: checkpoint round trip (build() recreates it) and deploy form."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from edgecv.compress.prune import prune_to_macs, recalibrate_bn
from edgecv.data.preprocess import Preprocess
from edgecv.models.checkpoint import load_checkpoint, save_checkpoint
from edgecv.models.registry import create_model
from edgecv.nn.graph import count_macs
from edgecv.nn.spec import channel_spec_of
from edgecv.quant import (
    QuantConfig,
    auto_weight_bits,
    calibrate,
    freeze_bn,
    is_qat,
    output_fq_names,
    prepare_qat,
    set_observers,
    to_deploy,
)


def _qat_pruned(size=32):
    m, spec, qcfg = _qat_pruned_cached(size)
    return copy.deepcopy(m), spec, qcfg


@functools.lru_cache(maxsize=1)
def _qat_pruned_cached(size):
    torch.manual_seed(0)
    m = create_model("mobilenet_v3_small", 3)
    prune_to_macs(m, size, 3, int(0.7 * count_macs(m, size)))
    spec = channel_spec_of(m)
    qcfg = QuantConfig(trace_size=size)
    prepare_qat(m, qcfg)
    data = [(torch.randn(8, 3, size, size), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    assert calibrate(m, data) == 16
    # one training step so weights and BN statistics move away from their initial values
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    m(torch.randn(8, 3, size, size)).sum().backward()
    opt.step()
    freeze_bn(m)
    set_observers(m, False)
    return m.eval(), spec, qcfg


def test_qat_checkpoint_reload_identical(tmp_path):
    m, spec, qcfg = _qat_pruned()
    p = save_checkpoint(tmp_path / "quantize.pt", m, "mobilenet_v3_small", ["a", "b", "c"],
                        Preprocess(input_size=32), meta={"channel_spec": spec, "quant": qcfg.to_dict()})
    m2 = load_checkpoint(p).build()
    assert is_qat(m2)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_deploy_form_matches_qat_model():
    m, _, _ = _qat_pruned()
    d = to_deploy(m)
    x = torch.randn(4, 3, 32, 32)
    ref, out = m(x), d(x)
    # same folded weights and scales; only float summation order differs
    assert (ref.argmax(1) == out.argmax(1)).all()
    assert torch.allclose(ref, out, atol=1e-3 * ref.abs().max().item() + 1e-4)


def test_output_fq_recorded_and_rebuilt(tmp_path):
    """The output fake-quant placement is in the model's quant meta; a checkpoint rebuilds it identically,
    whether the meta records the list or not (then it comes from the state_dict)."""
    m, spec, _ = _qat_pruned()
    names = output_fq_names(m)
    assert names and m.edgecv_quant["output_fq"] == names
    assert all(m.get_submodule(n).out_fq.initialized.item() for n in names)
    x = torch.randn(4, 3, 32, 32)
    for i, quant in enumerate((m.edgecv_quant, {k: v for k, v in m.edgecv_quant.items() if k != "output_fq"})):
        p = save_checkpoint(tmp_path / f"q{i}.pt", m, "mobilenet_v3_small", ["a", "b", "c"],
                            Preprocess(input_size=32), meta={"channel_spec": spec, "quant": quant})
        m2 = load_checkpoint(p).build()
        assert output_fq_names(m2) == names
        assert torch.equal(m(x), m2(x))


def test_checkpoint_without_output_fq_still_loads(tmp_path):
    """QAT checkpoints written before output fake-quant existed (no out_fq modules, no meta entry)."""
    torch.manual_seed(0)
    m = create_model("mobilenet_v3_small", 3)
    prepare_qat(m, QuantConfig(trace_size=32, output_fq=[], float_convs=[]))
    calibrate(m, [(torch.randn(8, 3, 32, 32), None)])
    assert output_fq_names(m) == []
    old_meta = {k: v for k, v in QuantConfig(trace_size=32).to_dict().items()
                if k not in ("output_fq", "float_convs", "float_stem")}
    p = save_checkpoint(tmp_path / "old.pt", m, "mobilenet_v3_small", ["a", "b", "c"], Preprocess(input_size=32),
                        meta={"quant": old_meta})
    m2 = load_checkpoint(p).build()
    assert output_fq_names(m2) == []
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(m.eval()(x), m2(x))


def test_float_stem_default_and_old_checkpoints(tmp_path):
    """The image stem stays float (no input/weight fake-quant, plain float Conv in the QDQ ONNX that ORT runs as
    fp32 while the other convs run QLinearConv); a checkpoint whose meta predates float convs rebuilds with every
    conv quantized, as it was trained."""
    import onnx

    from edgecv.export.onnx import export_int8_qdq
    from edgecv.runtimes.introspect import ort_int8_kernels

    m, spec, _ = _qat_pruned()
    assert m.edgecv_quant["float_convs"] == ["features.0.0"]
    stem = m.get_submodule("features.0.0")
    assert stem.float_layer and not m.get_submodule("features.1.block.0.0").float_layer
    x = torch.randn(4, 3, 32, 32)
    # no fake-quant anywhere in the stem: exactly the folded float conv
    assert torch.equal(stem(x), stem._conv(x, *stem.folded()))
    path = tmp_path / "m.onnx"
    export_int8_qdq(to_deploy(m), path, 32)
    g = onnx.load(str(path)).graph
    first = next(n for n in g.node if n.op_type == "Conv")
    assert first.input[0] == g.input[0].name  # float input, float weight: no Q/DQ before the stem
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == g.input[0].name for n in g.node)
    k = ort_int8_kernels(path)
    assert k["int8_kernels"] and k["int8_convs"] >= k["convs_in_model"] - 1 - 4  # stem (+ mixed-consumer convs)

    old_meta = {k: v for k, v in m.edgecv_quant.items() if k not in ("float_convs", "float_stem")}
    p = save_checkpoint(tmp_path / "old.pt", m, "mobilenet_v3_small", ["a", "b", "c"], Preprocess(input_size=32),
                        meta={"channel_spec": spec, "quant": old_meta})
    m2 = load_checkpoint(p).build()
    assert not any(getattr(mod, "float_layer", False) for mod in m2.modules())
    p = save_checkpoint(tmp_path / "new.pt", m, "mobilenet_v3_small", ["a", "b", "c"], Preprocess(input_size=32),
                        meta={"channel_spec": spec, "quant": m.edgecv_quant})
    assert torch.equal(m(x), load_checkpoint(p).build()(x))


def test_prepare_qat_leaves_observers_unseeded():
    """prepare_qat's tracing forwards (Conv+BN pairs, stem, output fake-quant placement) must not initialise
    any activation range: calibration starts from real data (a zeros forward once seeded a 10x-too-small range
    that the EMA never recovered from: PTQ top-1 57 % -> 34 %)."""
    from edgecv.quant.scheme import ActFakeQuant

    for arch in ("mobilenet_v3_small", "resnet18"):
        m = prepare_qat(create_model(arch, 3), QuantConfig(trace_size=32))
        fqs = [a for a in m.modules() if isinstance(a, ActFakeQuant)]
        assert fqs and not any(a.initialized.item() for a in fqs), arch


def _colour_batch(n: int, size: int, gen: torch.Generator, classes: int = 4):
    y = torch.randint(0, classes, (n,), generator=gen)
    means = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5], [1.0, 1.0, -1.0]])[:classes]
    x = means[y].reshape(n, 3, 1, 1) + torch.randn(n, 3, size, size, generator=gen)
    return x, y


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_lite0"])
def test_int8_onnx_matches_qat_model(tmp_path, arch):
    """mobilenet_v3_small (hardswish, SE, residual adds) and EfficientNet-Lite0 (ReLU6 = Clip, residual adds):
    every conv output the INT8 ONNX quantizes on its own is a QAT-trained output fake-quant (nothing calibrated
    behind the QAT model's back), a conv read through ReLU / ReLU6 by the next layer's Q takes that Q's scale
    (``exact``: no coarse grid of its own before the clamp), ORT runs int8 convs, and the ONNX logits equal the
    torch QAT model's up to int rounding."""
    import numpy as np
    import onnxruntime as ort

    from edgecv.export.onnx import export_int8_qdq
    from edgecv.export.validate import flips
    from edgecv.runtimes.introspect import ort_int8_kernels

    torch.set_num_threads(1)
    S, gen = 32, torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = create_model(arch, 4)
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    m.train()
    for _ in range(30):  # a few steps: logits that depend on the input (a random net's are nearly constant)
        x, y = _colour_batch(16, S, gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    # BatchNorm's running statistics re-estimated: after 30 steps at momentum 0.1 they still describe early weights,
    # and the eval-mode net called every image one class (a degenerate agreement test: 200 copies of one answer)
    recalibrate_bn(m, [_colour_batch(64, S, gen)[0] for _ in range(4)])
    # the weight range compress uses on this host (7 bits where the CPU's int8 kernels would saturate 8-bit
    # weights: ORT then computes another result than the QAT model; docs/int8.md)
    prepare_qat(m, QuantConfig(trace_size=S, weight_bits=auto_weight_bits()[0]))
    names = output_fq_names(m)
    if arch == "mobilenet_v3_small":
        assert len(names) > 10  # hardswish / SE / residual outputs
    else:  # the residual blocks' projection convs (read by an Add) and the head (ReLU6, then the global pool):
        # every other conv is read through ReLU6 by the next layer's Q
        assert 0 < len(names) <= 10 and all(n.endswith("conv_pwl") or n == "conv_head" for n in names), names
    calib = [_colour_batch(16, S, gen)[0] for _ in range(4)]
    calibrate(m, [(c, None) for c in calib])
    m.train()  # one QAT step: the output scales move with training like the input ones
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    x, y = _colour_batch(16, S, gen)
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
    freeze_bn(m)
    set_observers(m, False)
    m.eval()

    d = to_deploy(m)
    xv, yv = _colour_batch(200, S, gen)
    with torch.no_grad():
        ref, dep = m(xv).numpy(), d(xv).numpy()
    assert np.array_equal(ref.argmax(1), dep.argmax(1))
    path = tmp_path / "m.onnx"
    info = export_int8_qdq(d, path, S, calib_batches=[c.numpy() for c in calib])
    qdq = info["conv_output_qdq"]
    assert qdq.get("calibrated", 0) == 0 and qdq.get("skipped", 0) == 0, qdq
    assert qdq["trained"] == len(names), qdq
    if arch == "efficientnet_lite0":
        assert qdq["exact"] > 20, qdq
    k = ort_int8_kernels(path)
    assert k["int8_kernels"] and k["int8_ops"].get("QLinearConv", 0) > 0, k
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    out = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": xv.numpy()})[0]
    assert len(set(ref.argmax(1).tolist())) == 4 and (ref.argmax(1) == yv.numpy()).mean() > 0.6  # a net that learned
    diff = np.abs(out - ref)
    spread = float(ref.max() - ref.min())
    assert float(diff.max()) < 0.05 * spread, (diff.max(), spread)
    # int rounding is small everywhere: a top-1 may change only where the reference barely decides (a margin
    # within twice the artifact's typical error, export validation's near tie); the exact-int-dot and the AVX2
    # kernels both hold this
    f = flips(out, ref)
    assert f["near_ties"] == f["disagreements"], f
    assert 1 - f["disagreements"] / len(ref) >= 0.97, f


def test_auto_weight_bits_by_cpu():
    """7-bit weights exactly where u8 x s8 int8 kernels saturate: x86 without VNNI/AMX."""
    from edgecv.quant import auto_weight_bits

    assert auto_weight_bits(frozenset({"avx2", "fma"}), "x86_64")[0] == 7
    assert auto_weight_bits(frozenset({"avx2", "avx512f", "avx512_vnni"}), "x86_64")[0] == 8
    assert auto_weight_bits(frozenset({"avx2", "avx_vnni"}), "x86_64")[0] == 8
    assert auto_weight_bits(frozenset({"avx2", "amx_int8"}), "x86_64")[0] == 8
    assert auto_weight_bits(frozenset({"asimd", "asimddp"}), "aarch64")[0] == 8
    bits, why = auto_weight_bits(frozenset({"avx2"}), "x86_64")
    assert "VNNI" in why and bits == 7


def test_7bit_weights_onnx_range_and_checkpoint(tmp_path):
    """weight_bits=7: every int8 weight the INT8 ONNX holds is within +-63 (no int16 pair saturation on AVX2), the
    config survives a checkpoint round trip, and ONNX Runtime agrees with the QAT model."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgecv.export.onnx import export_int8_qdq

    torch.set_num_threads(1)
    S, gen = 32, torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = create_model("mobilenet_v3_small", 4)
    prepare_qat(m, QuantConfig(trace_size=S, weight_bits=7))
    calib = [_colour_batch(16, S, gen)[0] for _ in range(3)]
    calibrate(m, [(c, None) for c in calib])
    freeze_bn(m)
    set_observers(m, False)
    m.eval()
    assert m.edgecv_quant["weight_bits"] == 7
    ck = save_checkpoint(tmp_path / "q.pt", m, "mobilenet_v3_small", ["a", "b", "c", "d"], Preprocess(input_size=S),
                         metrics={}, meta={"quant": m.edgecv_quant}) or tmp_path / "q.pt"
    rebuilt = load_checkpoint(ck).build().eval()
    xv, _ = _colour_batch(64, S, gen)
    with torch.no_grad():
        ref = m(xv).numpy()
        assert np.array_equal(rebuilt(xv).numpy(), ref)
    path = tmp_path / "m.onnx"
    export_int8_qdq(to_deploy(m), path, S, calib_batches=[c.numpy() for c in calib])
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    ranges = [np.abs(inits[n.input[0]].astype(np.int32)).max() for n in g.node
              if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
              and inits[n.input[0]].ndim == 4]
    assert ranges and max(ranges) <= 63, max(ranges)
    assert max(ranges) >= 60  # the range is used, not just clipped small weights
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    out = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": xv.numpy()})[0]
    assert float((out.argmax(1) == ref.argmax(1)).mean()) >= 0.98
