import pytest
import torch

from edgecv.data.preprocess import Preprocess
from edgecv.errors import UserError
from edgecv.models.checkpoint import load_checkpoint, save_checkpoint
from edgecv.models.registry import ARCHS, create_model


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "tf_mobilenetv3_small_minimal_100"])
def test_roundtrip_identical_outputs(tmp_path, arch):
    m = create_model(arch, 4).eval()
    pre = Preprocess(input_size=32)
    p = save_checkpoint(tmp_path / "m.pt", m, arch, ["a", "b", "c", "d"], pre, metrics={"val_top1": 50.0})
    ck = load_checkpoint(p)
    assert ck.arch == arch and ck.class_names == ["a", "b", "c", "d"] and ck.preprocess == pre
    assert ck.metrics["val_top1"] == 50.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), ck.build()(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_registry_has_teachers_and_students():
    for a in ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "efficientnet_b3",
              "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0"):
        assert a in ARCHS
    with pytest.raises(UserError, match="unknown arch"):
        create_model("resnet9000", 3)


def test_pickled_model_is_refused(tmp_path):
    m = create_model("resnet18", 3)
    f = tmp_path / "whole.pt"
    torch.save(m, f)  # a pickled nn.Module
    with pytest.raises(UserError, match="--trust-pickle"):
        load_checkpoint(f)
    ck = load_checkpoint(f, trust_pickle=True)
    assert ck.kind == "pickle" and isinstance(ck.build(), torch.nn.Module)


def test_bare_state_dict_needs_arch(tmp_path):
    m = create_model("resnet18", 5)
    f = tmp_path / "sd.pt"
    torch.save(m.state_dict(), f)
    with pytest.raises(UserError, match="--arch"):
        load_checkpoint(f)
    ck = load_checkpoint(f, arch="resnet18")
    assert ck.num_classes == 5 and ck.kind == "state_dict"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), ck.build()(x))


def test_torchscript_teacher(tmp_path):
    m = create_model("resnet18", 3).eval()
    f = tmp_path / "ts.pt"
    torch.jit.trace(m, torch.randn(1, 3, 32, 32)).save(str(f))
    ck = load_checkpoint(f)
    assert ck.kind == "torchscript"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), ck.build()(x), atol=1e-5)


def test_garbage_and_missing_files(tmp_path):
    f = tmp_path / "junk.pt"
    f.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        load_checkpoint(f)
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_wrong_weights_for_arch(tmp_path):
    m = create_model("resnet18", 3)
    f = tmp_path / "sd.pt"
    torch.save(m.state_dict(), f)
    with pytest.raises(UserError, match="do not fit"):
        load_checkpoint(f, arch="resnet34").build()


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    import argparse

    f = tmp_path / "obj.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, f)  # pickled non-tensor object
    with pytest.raises(UserError, match="--trust-pickle"):
        load_checkpoint(f, arch="resnet18")
