"""A Triton Inference Server model repository from an export bundle.

One model folder per runnable artifact Triton has a backend for (the ``triton`` column of the format table
:mod:`edgecv.contracts.formats`: ONNX -> ``onnxruntime_onnx``, OpenVINO IR -> the ``openvino`` backend, TensorRT
engine -> ``tensorrt_plan``)::

    REPO/onnx-fp32/config.pbtxt        name, platform/backend, max_batch_size, input/output names and dims from the
    REPO/onnx-fp32/1/model.onnx        manifest, dynamic batching, instance group, labels
    REPO/onnx-fp32/labels.txt          class names (Triton's classification extension)
    REPO/onnx-fp32/preprocess.json     the manifest's preprocessing: clients must feed that exact NCHW float input

Every ``config.pbtxt`` is validated by parsing it with Triton's own model-config protobuf
(``tritonclient.grpc.model_config_pb2``). No Triton server runs on the development machine: the repository is
schema-validated there, not served.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgecv.contracts.formats import FORMATS, Triton
from edgecv.contracts.manifest import (
    INPUT_NAME,
    OUTPUT_NAME,
    ArtifactEntry,
    Manifest,
    load_manifest,
    verify_artifact,
)
from edgecv.errors import UserError

_DTYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def _triton(entry: ArtifactEntry) -> Triton | None:
    row = FORMATS.get((entry.format, entry.precision))
    return row.triton if row else None


def _dynamic_batch(bundle: Path, entry: ArtifactEntry) -> bool:
    """Whether the artifact's batch dimension is dynamic, as its runner reads it (runtime missing here, or the
    runner cannot tell -> fixed, which Triton always accepts)."""
    from edgecv.runtimes.base import runner_for_entry

    try:
        runner = runner_for_entry(bundle, entry, verify=False)
    except Exception:  # noqa: BLE001 - unavailable here (e.g. TensorRT without a GPU)
        return False
    try:
        return bool(runner.input_shape) and runner.input_shape[0] is None
    finally:
        runner.close()


def config_text(name: str, entry: ArtifactEntry, man: Manifest, dynamic: bool, max_batch: int = 8,
                max_delay_us: int = 2000) -> str:
    tr = _triton(entry)
    shape = [int(s) for s in (entry.input_shape or man.input["shape"])]
    ncls = len(man.class_names) or int(man.output["shape"][-1])
    dtype = _DTYPE.get(entry.input_dtype, "TYPE_FP32")
    # a dynamic batch dimension: Triton batches (max_batch_size > 0, dims without the batch); a fixed one: the
    # model takes exactly its shape (max_batch_size 0, full dims, no batching by Triton)
    in_dims, out_dims = (shape[1:], [ncls]) if dynamic else (shape, [shape[0], ncls])
    lines = [f'name: "{name}"', f'{tr.key}: "{tr.value}"', f"max_batch_size: {max_batch if dynamic else 0}",
             f'input [ {{ name: "{INPUT_NAME}" data_type: {dtype} dims: {in_dims} }} ]',
             f'output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: {out_dims} '
             'label_filename: "labels.txt" } ]',
             f"instance_group [ {{ kind: {tr.kind} count: 1 }} ]"]
    if dynamic:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {int(max_delay_us)} }}")
    return "\n".join(lines) + "\n"


def validate_config(text: str):
    """Parse ``text`` with Triton's ModelConfig protobuf; raises UserError naming the problem."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise UserError(f"cannot validate config.pbtxt: tritonclient[grpc] is not installed ({e})") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"config.pbtxt does not parse as a Triton ModelConfig: {e}") from None


def write_triton_repo(bundle: str | Path, out: str | Path, max_batch: int = 8, max_delay_us: int = 2000) -> list[Path]:
    """Write the repository for every eligible artifact of ``bundle`` (sha256-verified first) -> model folders."""
    bundle, out = Path(bundle), Path(out)
    man = load_manifest(bundle)
    made = []
    for e in man.ok_artifacts():
        tr = _triton(e)
        if tr is None:
            continue
        verify_artifact(bundle, e)
        name = e.name
        d = out / name
        (d / "1").mkdir(parents=True, exist_ok=True)
        model_file = tr.model_file
        shutil.copyfile(bundle / e.file, d / "1" / model_file)
        for comp in e.extra.get("companions", []):  # OpenVINO's .bin follows the .xml's name
            shutil.copyfile(bundle / comp, d / "1" / (Path(model_file).stem + Path(comp).suffix))
        text = config_text(name, e, man, _dynamic_batch(bundle, e), max_batch, max_delay_us)
        validate_config(text)
        (d / "config.pbtxt").write_text(text)
        (d / "labels.txt").write_text("".join(f"{c}\n" for c in man.class_names))
        (d / "preprocess.json").write_text(json.dumps(
            {"preprocess": man.preprocess, "input": man.input, "note": "feed NCHW float32 made exactly like "
             "edgecv.data.preprocess.Preprocess.from_dict(preprocess).to_array(decoded RGB image)"}, indent=2) + "\n")
        made.append(d)
    if not made:
        servable = sorted({r.format for r in FORMATS.values() if r.triton})
        raise UserError(f"{bundle}: no artifact Triton can serve ({', '.join(servable)})")
    return made
