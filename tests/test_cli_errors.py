"""The CLI's failure contract (docs/errors.md): the safety net, output write failures, --device errors.

Every case asserts the exit code, one line on stderr without "Traceback", and that no partial file is left.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import torch

from edgecv.cli import _errors as E
from edgecv.cli import main
from edgecv.errors import OutputError, UserError
from edgecv.utils import atomic_path, check_writable, resolve_device, write_text_atomic
from tests.conftest import one_line


def run_main(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ex:
        main(list(args))
    return ex.value.code, capsys.readouterr().err


@pytest.fixture
def no_debug(monkeypatch, tmp_path):
    monkeypatch.setattr(E, "_DEBUG", False)
    monkeypatch.delenv("EDGECV_DEBUG", raising=False)
    monkeypatch.setenv("EDGECV_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path / "logs"


def _boom(exc: BaseException):
    def f(*a, **k):
        raise exc
    return f


# ---------------------------------------------------------------------------------------------- safety net
def test_unexpected_error_is_one_line_with_a_log_file(monkeypatch, capsys, no_debug):
    monkeypatch.setattr("edgecv.models.registry.arch_info", _boom(RuntimeError("boom in the registry\nsecond line")))
    code, err = run_main(capsys, "archs")
    line = one_line(err)
    assert code == 1
    assert "unexpected error in 'archs'" in line and "RuntimeError: boom in the registry" in line
    assert "second line" not in line and "--debug" in line
    logs = list(no_debug.glob("edgecv-*.log"))
    assert len(logs) == 1 and str(logs[0]) in line
    text = logs[0].read_text()
    assert "Traceback" in text and "second line" in text and "command: edgecv archs" in text


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(monkeypatch, capsys, no_debug, how):
    monkeypatch.setattr("edgecv.models.registry.arch_info", _boom(RuntimeError("boom")))
    if how == "env":
        monkeypatch.setenv("EDGECV_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):  # re-raised: Python prints the traceback, exit 1
        main(["--debug", "archs"] if how == "flag" else ["archs"])


def test_keyboard_interrupt_exit_130(monkeypatch, capsys, no_debug):
    monkeypatch.setattr("edgecv.models.registry.arch_info", _boom(KeyboardInterrupt()))
    code, err = run_main(capsys, "archs")
    assert code == 130 and one_line(err) == "edgecv: interrupted"


def test_os_error_on_a_path_is_exit_2(monkeypatch, capsys, no_debug):
    e = PermissionError(errno.EACCES, "Permission denied", "/some/where.json")
    monkeypatch.setattr("edgecv.models.registry.arch_info", _boom(e))
    code, err = run_main(capsys, "archs")
    assert code == 2 and one_line(err) == "edgecv: error: /some/where.json: Permission denied"
    assert not no_debug.exists()  # not a bug: no log file


def test_user_error_keeps_its_exit_code(monkeypatch, capsys, no_debug):
    monkeypatch.setattr("edgecv.models.registry.arch_info", _boom(UserError("bad thing")))
    code, err = run_main(capsys, "archs")
    assert code == 2 and one_line(err) == "edgecv: error: bad thing"


# ---------------------------------------------------------------------------------------------- output paths
def test_atomic_path_maps_failures_and_leaves_no_temp_file(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        write_text_atomic(tmp_path / "f" / "sub" / "x.json", "{}")
    out = tmp_path / "d" / "x.json"
    with pytest.raises(OutputError, match=r"cannot write .*x\.json: No space left on device|no space left"):
        with atomic_path(out) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match="x.json"):  # torch.save's way of saying the disk is full
        with atomic_path(out):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    with pytest.raises(ValueError):  # anything else is not an output error, and still cleaned up
        with atomic_path(out) as tmp:
            tmp.write_text("partial")
            raise ValueError("not about writing")
    assert os.listdir(tmp_path / "d") == []
    assert isinstance(OutputError("p", "r"), OSError) and OutputError("p", "r").exit_code == 2


def test_atomic_path_removes_the_orphans_of_a_killed_writer(tmp_path):
    """A writer killed outright (SIGKILL) leaves its temporary file; the next write of that path removes it, but
    not a live process's temporary file, nor another file's."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    out = tmp_path / "m.pt"
    orphan = tmp_path / f".m.pt.{dead.pid}.abc123.tmp"
    live = tmp_path / f".m.pt.{os.getppid()}.def456.tmp"  # the test runner's parent: alive
    other = tmp_path / f".m.pt.state.{dead.pid}.ghi789.tmp"  # another file's (m.pt.state), not m.pt's
    for f in (orphan, live, other):
        f.write_bytes(b"half")
    write_text_atomic(out, "whole")
    assert out.read_text() == "whole"
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(["m.pt", live.name, other.name])


def test_check_writable(tmp_path):
    (tmp_path / "f").write_text("a file")
    assert check_writable(tmp_path / "new" / "deeper" / "x.pt") == tmp_path / "new" / "deeper" / "x.pt"
    assert not (tmp_path / "new").exists()  # creates nothing
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_writable(tmp_path / "f" / "x.pt")
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(OutputError, match="not a directory"):
        check_writable(tmp_path / "f", directory=True)


@pytest.mark.parametrize("args", [
    ["train", "--epochs", "1", "--out", "{F}/t.pt"],
    ["eval", "x.pt", "--confusion", "{F}/cm.png"],
    ["compress", "--out", "{F}/run"],
    ["export", "x.pt", "--out", "{F}/bundle"],
    ["bench", "x", "--json", "{F}/b.json"],
    ["bench", "x", "--plot", "{F}/b.png"],
    ["bench", "x", "--markdown", "{F}/b.md"],
    ["gate", "--baseline", "a", "--candidate", "b", "--json", "{F}/g.json"],
], ids=lambda a: " ".join(a[:1] + [x for x in a if x.startswith("--")][-1:]))
def test_output_under_a_file_fails_before_the_work(tmp_path, cli, args):
    f = tmp_path / "afile"
    f.write_text("x")
    p = cli(*[a.replace("{F}", str(f)) for a in args])
    assert p.returncode == 2, p.stderr
    assert "is a file, not a directory" in one_line(p.stderr)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


# ---------------------------------------------------------------------------------------------- disk full
@pytest.fixture
def tmpfs_2m(tmp_path):
    """A 2 MB tmpfs (needs root and mount permission; skipped otherwise)."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_atomic_writes(tmpfs_2m):
    with pytest.raises(OutputError, match="no space left on device"):
        write_text_atomic(tmpfs_2m / "big.json", "x" * 3_000_000)
    with pytest.raises(OutputError, match="no space left on device"):
        with atomic_path(tmpfs_2m / "m.pt") as tmp:
            torch.save(torch.zeros(1_000_000), tmp)
    assert os.listdir(tmpfs_2m) == []


def test_disk_full_train_out(tmpfs_2m, tiny_folder, cli):
    # resnet18 is ~45 MB: the checkpoint (or the epoch's resume state) cannot be written
    p = cli("train", "--data", str(tiny_folder), "--epochs", "1", "--img-size", "16", "--batch-size", "8",
            "--workers", "0", "--out", str(tmpfs_2m / "t.pt"))
    assert p.returncode == 2, p.stderr
    assert "no space left on device" in p.stderr.strip().splitlines()[-1] and "Traceback" not in p.stderr
    assert os.listdir(tmpfs_2m) == []


def test_full_disk_is_refused_before_the_work(tmpfs_2m, cli):
    filler = tmpfs_2m / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    p = cli("bench", "nonexistent_bundle", "--json", str(tmpfs_2m / "b.json"))
    assert p.returncode == 2 and "no space left on device" in one_line(p.stderr)
    assert os.listdir(tmpfs_2m) == ["filler"]


# ---------------------------------------------------------------------------------------------- devices
def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError, match=r"unknown device 'tpu9'; available here: cpu"):
        resolve_device("tpu9")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(UserError, match=r"available: cpu"):
        resolve_device(f"cuda:{n}")


@pytest.mark.parametrize("args,needle", [
    (["train", "--device", "tpu9", "--epochs", "1"], "unknown device 'tpu9'; available here: cpu"),
    (["compress", "--device", "tpu9"], "unknown device 'tpu9'; available here: cpu"),
    (["train", "--device", "cuda:99", "--epochs", "1"], "available: cpu"),
])
def test_bad_device_one_line(tmp_path, cli, args, needle):
    p = cli(*args, "--out", str(tmp_path / ("run" if args[0] == "compress" else "t.pt")))
    assert p.returncode == 2 and needle in one_line(p.stderr)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda is valid here")
def test_cuda_without_gpu(tmp_path, cli):
    p = cli("train", "--device", "cuda", "--epochs", "1", "--out", str(tmp_path / "t.pt"))
    assert p.returncode == 2 and "no CUDA GPU is visible here; available: cpu" in one_line(p.stderr)


# ---------------------------------------------------------------------------------------------- --arch
def test_eval_bare_state_dict_names_arch(tmp_path, tiny_folder, cli):
    from edgecv.models.registry import create_model

    sd = tmp_path / "sd.pt"
    torch.save(create_model("resnet18", 3).state_dict(), sd)
    p = cli("eval", str(sd), "--data", str(tiny_folder))
    assert p.returncode == 2 and "pass --arch" in one_line(p.stderr)
    assert "--arch" in cli("eval", "--help").stdout
