"""The format table (edgecv.contracts.formats) drives every layer, as timm's tests iterate its model registry:

* every row has a writer and every writer a row; every target resolves to runtimes in ``RUNTIME_MODULES``;
* no format name, extension, runtime name or bundle file of the table is written as a literal elsewhere in
  ``edgecv/`` (an AST scan, failing with file:line);
* every row exports a tiny model, is read back by its runner, validated, benched and served through
  ``edgecv serve --artifact`` (skipped with the reason where its toolchain or runtime is absent);
* a fake format on a fake runtime, registered in exactly the files docs/architecture.md names, goes through
  export -> validate -> bench.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from edgecv.contracts import formats as F
from edgecv.contracts.formats import FORMATS, RECOMMENDED, ROWS, TARGET_RUNTIMES, Format
from edgecv.export.formats import WRITERS
from edgecv.runtimes.base import RUNTIME_MODULES, RunnerBase, RuntimeUnavailable
from edgecv.targets import TARGETS, get_target

from .conftest import REPO

S = 32  # the image size of tests/test_export_bundle.py's checkpoints

# literals of the table that may appear elsewhere, each with why: {(file, enclosing function or "<module>"): why}
ALLOWED = {
    ("edgecv/export/bundle.py", "versions"): "pip distribution names of the toolchains (exported_with)",
    ("edgecv/export/tensorrt.py", "build_engine"): "the tensorrt package version in the engine's extra",
    ("edgecv/compress/softlabels.py", "live_teacher_path"): "run.json key: the ONNX Runtime teacher path (off)",
    ("edgecv/targets/budget.py", "on_target_hardware"): "device names a runner reports (ORT's TensorRT EP)",
}


def _facts() -> tuple[set[str], set[str]]:
    """(every literal of the table, the runtime names among them)."""
    runtimes = {r.runtime for r in ROWS if r.runtime} | set(RUNTIME_MODULES)
    facts = ({r.format for r in ROWS} | {F.TENSORRT_SCRIPT} | runtimes | {r.name for r in ROWS}
             | {r.file for r in ROWS} | {r.subdir for r in ROWS if r.subdir}
             | {e for r in ROWS for e in (r.ext, *r.other_exts)})
    return facts, runtimes


def _literals(path: Path):
    """(line, enclosing function, string) of every string constant of a module (f-string parts included)."""
    tree = ast.parse(path.read_text())
    stack = [(tree, "<module>")]
    while stack:
        node, fn = stack.pop()
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                yield child.lineno, name, child.value
            stack.append((child, name))


def test_every_row_has_a_writer_and_every_writer_a_row():
    assert set(WRITERS) == set(FORMATS), (f"rows without a writer: {set(FORMATS) - set(WRITERS)}; "
                                          f"writers without a row: {set(WRITERS) - set(FORMATS)}")
    assert len(FORMATS) == len(ROWS), "two rows share a (format, precision)"
    assert len({r.file for r in ROWS}) == len(ROWS), "two rows write the same file"


def test_every_target_resolves_to_registered_runtimes():
    assert set(TARGET_RUNTIMES) == set(TARGETS) == set(RECOMMENDED)
    for r in ROWS:
        assert r.runtime is None or r.runtime in RUNTIME_MODULES, f"{r.name}: runtime {r.runtime} not registered"
        assert set(r.targets) <= set(TARGETS), f"{r.name}: unknown target in {r.targets}"
    for name in (*TARGETS, "all"):
        t = get_target(name)
        assert t.artifacts and set(t.artifacts) <= set(FORMATS), name
        assert t.runtimes and set(t.runtimes) <= set(RUNTIME_MODULES), name
        assert {FORMATS[a].runtime for a in t.artifacts} <= set(t.runtimes), f"{name} deploys a runtime it lacks"
        names = {FORMATS[a].name for a in t.artifacts}
        assert set(t.recommended) <= names, f"{name} recommends what it does not export"


def test_student_auto_measures_on_a_runtime_of_each_target():
    from edgecv.autotune.measure import AUTO_TARGETS, PRECISIONS, auto_format

    for t in AUTO_TARGETS:
        rt, fmt = auto_format(t)
        assert rt in get_target(t).runtimes and all((fmt, p) in FORMATS for p in PRECISIONS), t
    assert auto_format("x86")[0] == TARGET_RUNTIMES["x86"][0]
    assert auto_format("jetson")[0] == F.ONNXRUNTIME  # TensorRT, jetson's first runtime, has no FP32 engine


def test_no_format_fact_written_outside_the_table():
    facts, runtimes = _facts()
    hits = []
    for f in sorted((REPO / "edgecv").rglob("*.py")):
        rel = f.relative_to(REPO).as_posix()
        if rel == "edgecv/contracts/formats.py":
            continue
        for line, fn, s in _literals(f):
            if s not in facts or (rel, fn) in ALLOWED:
                continue
            if rel.startswith("edgecv/runtimes/") and s in runtimes:  # a runtime names itself / its registry line
                continue
            hits.append(f"{rel}:{line}: {s!r} (in {fn})")
    assert not hits, "format facts outside edgecv/contracts/formats.py (read them from the table):\n" + "\n".join(hits)


# -- every row, end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table_bundle(tmp_path_factory):
    """test_export_bundle's tiny checkpoints, exported with every row of the table (also the rows no target
    writes), through the exporter ``edgecv export`` runs."""
    from edgecv.export.bundle import Exporter, ExportOptions

    from .test_export_bundle import _make_checkpoints

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("formats")
    ck = _make_checkpoints(root)
    ex = Exporter(ck["run"], root / "bundle", ExportOptions(target="all", num_val=24, num_calib=24), lambda s: None)
    ex.wanted = list(FORMATS)
    res = ex.run()
    return root / "bundle", res, ck


def _bench_row(bundle: Path, name: str, data: Path) -> dict:
    from edgecv.bench.bench import BenchConfig, run_bench

    cfg = BenchConfig(data=str(data), artifacts=[name], min_time_s=0.05, min_runs=5, warmup=1, rounds=1)
    return next(a for a in run_bench(str(bundle), cfg)["artifacts"] if a["name"] == name)


def _serve_and_predict(bundle: Path, name: str, runtime: str, classes: list[str]) -> None:
    from .test_serve import Server, png_bytes

    s = Server(bundle, "--artifact", name)
    try:
        r = httpx.post(s.url + "/predict", content=png_bytes(size=S), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] in classes
        info = httpx.get(s.url + "/info", timeout=10).json()
        assert (info["artifact"], info["runtime"]) == (name, runtime)
    finally:
        assert s.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("key", list(FORMATS), ids=[r.name for r in ROWS])
def test_every_format_exports_runs_validates_benches_and_serves(table_bundle, key):
    from edgecv.contracts.manifest import load_manifest
    from edgecv.runtimes.base import runner_for_entry

    bundle, _, ck = table_bundle
    row = FORMATS[key]
    man = load_manifest(bundle)
    entry = next(e for e in man.artifacts if (e.format, e.precision) == key)
    assert (entry.file, entry.runtime) == (row.file, row.runtime)
    if entry.status == "skipped":
        pytest.skip(f"{row.name} not written here: {entry.error}")
    assert entry.status == "ok", entry.error
    try:
        runner = runner_for_entry(bundle, entry)
    except RuntimeUnavailable as e:
        assert entry.validation["status"] == "skipped"
        pytest.skip(f"{row.name}: runtime {row.runtime} unavailable here: {e}")
    with runner:
        assert runner.input_shape is None or tuple(runner.input_shape[1:]) == (3, S, S)
        assert runner.predict(np.zeros((2, 3, S, S), np.float32)).shape == (2, len(man.class_names))
    assert entry.validation["status"] == "passed", entry.validation
    b = _bench_row(bundle, row.name, ck["data"])
    assert b["status"] == "ok" and b["runtime"] == row.runtime, b
    assert b["primary"]["p50_ms"] > 0 and 0 <= b["accuracy"]["top1"] <= 100
    _serve_and_predict(bundle, row.name, row.runtime, man.class_names)


# -- a fake format on a fake runtime, registered in the files the doc names ------------------------------------
FAKE = Format("fakefmt", "fp32", ".fakets", "fake_rt", subdir="fake", targets=("x86",))


class _FakeRunner(RunnerBase):
    """The fake runtime: torch's TorchScript interpreter on CPU (a real engine, just not a registered one)."""

    runtime = FAKE.runtime

    def __init__(self, path: Path, threads: int | None):
        self.module, self.threads = torch.jit.load(str(path)).eval(), threads

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()


def load(path: Path, threads: int | None = 1, device: str = "cpu", **opts) -> _FakeRunner:
    """The fake runtime module's entry point (``RUNTIME_MODULES`` points at this test module)."""
    return _FakeRunner(path, threads)


def _write_fake(ex, entry) -> None:
    from edgecv.export.ptl import export_torchscript

    entry.extra.update(export_torchscript(ex.float_model(), ex.out / entry.file, ex.size, FAKE.precision))


def _doc_files(bullet: str) -> set[str]:
    """The files a "where to add" bullet of docs/architecture.md names (its "(files: ...)" list)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    m = re.search(r"- \*\*" + re.escape(bullet) + r"\*\* \(files: (.*?)\):", text, re.S)
    assert m, f"docs/architecture.md: no '{bullet}' bullet with its files"
    return set(re.findall(r"`([^`]+)`", m.group(1)))


@pytest.mark.slow
def test_fake_format_and_runtime_need_exactly_the_documented_files(table_bundle, tmp_path, monkeypatch):
    import edgecv.export.formats as EF
    import edgecv.runtimes.base as RB
    from edgecv.bench.artifacts import resolve_source
    from edgecv.contracts.manifest import load_manifest
    from edgecv.export.bundle import ExportOptions, export_bundle

    # the registrations, each (module, table, key, value): a format row and its target's runtime, its writer, the
    # runtime's module (this test module stands in for edgecv/runtimes/<name>.py)
    regs = [(F, "FORMATS", FAKE.key, FAKE), (F, "TARGET_RUNTIMES", "x86", (*TARGET_RUNTIMES["x86"], FAKE.runtime)),
            (EF, "WRITERS", FAKE.key, _write_fake), (RB, "RUNTIME_MODULES", FAKE.runtime, __name__)]
    touched = {Path(m.__file__).resolve().relative_to(REPO).as_posix() for m, *_ in regs}
    fmt_doc, rt_doc = _doc_files("An export format"), _doc_files("A runtime")
    new_files = {f for f in fmt_doc | rt_doc if "<" in f}  # the format's toolchain / the runtime's module
    assert (fmt_doc | rt_doc) - new_files == touched, "docs/architecture.md names other files than the test needs"
    assert new_files == {"edgecv/export/<format>.py", "edgecv/runtimes/<name>.py"}
    for mod, table, k, v in regs:
        monkeypatch.setitem(getattr(mod, table), k, v)

    _, _, ck = table_bundle
    out = tmp_path / "bundle"
    res = export_bundle(ck["float"], out, ExportOptions(target="x86", precisions=("fp32",), num_val=24,
                                                         num_calib=24))
    assert not res.failed, res.failed
    e = next(a for a in load_manifest(out).artifacts if a.format == FAKE.format)
    assert (e.file, e.runtime, e.status) == (FAKE.file, FAKE.runtime, "ok")
    assert e.validation["status"] == "passed" and e.validation["runner"]["runtime"] == FAKE.runtime
    b = _bench_row(out, FAKE.name, ck["data"])
    assert b["status"] == "ok" and b["profile"] == "x86" and b["accuracy"]["top1"] >= 0, b
    single = resolve_source(out / FAKE.file).artifacts[0].entry  # a lone file: format from its extension
    assert (single.format, single.runtime) == (FAKE.format, FAKE.runtime)
