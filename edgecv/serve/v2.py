"""Open Inference Protocol (KServe v2 / Triton HTTP) tensors: parse an infer request, encode the response.

Supports JSON tensors and Triton's binary tensor extension (``Inference-Header-Content-Length``), which is what
``tritonclient.http`` sends by default. Inputs: ``FP32 [N, 3, S, S]`` (preprocessed with the manifest) or
``BYTES [N]`` encoded images (binary: 4-byte little-endian length + bytes per element; JSON: base64 strings).
JSON ``FP32`` data must be numbers (nested lists allowed): a string or a boolean is a 400, never converted.

Output: ``logits`` FP32 ``[N, classes]``, or, with Triton's classification extension (the output's
``"parameters": {"classification": K}``, what ``tritonclient``'s ``InferRequestedOutput(name, class_count=K)``
sends), BYTES ``[N, min(K, classes)]`` holding ``"<logit>:<index>:<label>"`` for the top K by logit, highest
first, formatted as Triton does (``%f`` value, the manifest's class names as labels).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

import numpy as np

from edgecv.contracts.manifest import INPUT_NAME, OUTPUT_NAME

IMAGE_INPUT = "image"  # the BYTES input: encoded images


class ClientError(Exception):
    """A 4xx answer: ``status`` and a message for the JSON body."""

    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


def metadata(name: str, platform: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    return {"name": name, "versions": ["1"], "platform": platform,
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *input_shape]},
                       {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, num_classes]}]}


def model_config(name: str, platform: str, input_shape: tuple[int, ...], num_classes: int, *, max_rows: int,
                 max_batch: int, max_delay_us: int, max_queue: int, gpu: bool, model_file: str,
                 parameters: dict[str, str]) -> dict:
    """Triton's model configuration extension: the served model as a ``ModelConfig`` message (model_config.proto),
    in the JSON Triton answers ``GET /v2/models/NAME/config`` with (proto field names, every field, int64 as
    numbers). ``max_batch_size``: the rows one request may carry; the dynamic batcher prefers ``max_batch``."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    c = mc.ModelConfig(name=name, platform=platform, backend=platform, max_batch_size=max_rows,
                       default_model_filename=model_file)
    c.version_policy.latest.num_versions = 1
    c.input.add(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=list(input_shape))
    c.input.add(name=IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[1]).reshape.SetInParent()  # BYTES [N]: one per row
    c.output.add(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[num_classes])
    c.dynamic_batching.preferred_batch_size.append(max_batch)
    c.dynamic_batching.max_queue_delay_microseconds = max_delay_us
    c.dynamic_batching.default_queue_policy.max_queue_size = max_queue
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    c.instance_group.add(name=f"{name}_0", kind=kind, count=1)
    for k, v in parameters.items():
        c.parameters[k].string_value = str(v)
    d = json_format.MessageToDict(c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _int64_as_numbers(c, d)


def _int64_as_numbers(msg, d: dict) -> dict:
    """protobuf's JSON writes 64-bit integers as strings; Triton's config JSON has numbers (its FixInt)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    wide = (F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64)
    for f in msg.DESCRIPTOR.fields:
        if f.name not in d:
            continue
        value, mine = getattr(msg, f.name), d[f.name]
        if f.type in wide:
            d[f.name] = [int(v) for v in mine] if isinstance(mine, list) else int(mine)
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            if vf.message_type is not None:
                for k in mine:
                    _int64_as_numbers(value[k], mine[k])
            elif vf.type in wide:
                d[f.name] = {k: int(v) for k, v in mine.items()}
        elif f.message_type is not None:
            for m, sub in (zip(value, mine, strict=True) if isinstance(mine, list) else [(value, mine)]):
                _int64_as_numbers(m, sub)
    return d


def _split_body(body: bytes, header_len: str | None) -> tuple[dict, bytes]:
    try:
        n = int(header_len) if header_len is not None else len(body)
    except ValueError:
        raise ClientError(400, f"Inference-Header-Content-Length {header_len!r} is not an integer") from None
    if not 0 < n <= len(body):
        raise ClientError(400, f"Inference-Header-Content-Length {n} does not fit the body ({len(body)} bytes)")
    try:
        req = json.loads(body[:n])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClientError(400, f"infer request is not valid JSON ({e})") from None
    except RecursionError:
        raise ClientError(400, "infer request JSON is nested too deeply") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
        raise ClientError(400, f"infer request needs exactly one input ('{INPUT_NAME}' FP32 or '{IMAGE_INPUT}' BYTES)")
    _check_shape(req)
    return req, body[n:]


def _check_shape(req: dict) -> None:
    """The request's objects are objects where the protocol says so: the request, each input and output, and
    every ``parameters`` (absent or null allowed) — so no later ``.get`` meets a list or a string."""
    outputs = req.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise ClientError(400, f"'outputs' must be a list of objects, got {type(outputs).__name__}")
    for what, items in (("input", req["inputs"]), ("output", outputs or [])):
        for t in items:
            if not isinstance(t, dict):
                raise ClientError(400, f"each {what} tensor must be an object, got {type(t).__name__}")
    for where, obj in (("request", req), *((f"input '{t.get('name')}'", t) for t in req["inputs"]),
                       *((f"output '{o.get('name')}'", o) for o in outputs or [])):
        p = obj.get("parameters")
        if p is not None and not isinstance(p, dict):
            raise ClientError(400, f"{where}: 'parameters' must be an object, got {type(p).__name__}")


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ClientError(400, "BYTES tensor: truncated element length")
        (k,) = struct.unpack_from("<I", raw, i)
        if i + 4 + k > len(raw):
            raise ClientError(400, "BYTES tensor: element longer than the data")
        out.append(raw[i + 4:i + 4 + k])
        i += 4 + k
    if len(out) != count:
        raise ClientError(400, f"BYTES tensor: shape says {count} elements, data holds {len(out)}")
    return out


def _params(obj: dict, what: str) -> dict:
    p = obj.get("parameters")
    if p is None:
        return {}
    if not isinstance(p, dict):
        raise ClientError(400, f"{what}: 'parameters' must be a JSON object, got {type(p).__name__}")
    return p


def requested_output(req: dict) -> tuple[bool, int | None]:
    """``(binary, classification count or None)`` of the requested output; ClientError for an unknown output
    or a bad ``classification`` parameter. Checked before inference and again when encoding."""
    binary, count = bool(_params(req, "infer request").get("binary_data_output")), None
    outputs = req.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise ClientError(400, f"'outputs' must be a list, got {type(outputs).__name__}")
    for o in outputs or []:
        if not isinstance(o, dict) or o.get("name") != OUTPUT_NAME:
            raise ClientError(400, f"unknown output {o.get('name') if isinstance(o, dict) else o!r} "
                                   f"(outputs: '{OUTPUT_NAME}')")
        p = _params(o, f"output '{OUTPUT_NAME}'")
        binary = bool(p.get("binary_data", binary))
        count = p.get("classification")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise ClientError(400, f"output '{OUTPUT_NAME}': classification must be an integer >= 1, got {count!r}")
    return binary, count


def _numbers(data, name: str, count: int) -> np.ndarray:
    """JSON tensor data (a flat or nested list) -> float32; every element must be a JSON number."""
    flat = data if isinstance(data, list) and set(map(type, data)) <= {int, float} else None
    if flat is None:
        flat, stack = [], [data]
        while stack:  # iterative: any nesting depth without recursion
            v = stack.pop()
            if isinstance(v, list):
                stack.extend(reversed(v))
            elif type(v) in (int, float):
                flat.append(v)
            else:
                raise ClientError(400, f"input '{name}': FP32 JSON data must be numbers, got "
                                       f"{type(v).__name__} {json.dumps(v)[:40]}")
    if len(flat) != count:
        raise ClientError(400, f"input '{name}': JSON data holds {len(flat)} numbers, the shape needs {count}")
    return np.asarray(flat, dtype=np.float32)


def parse_infer(body: bytes, header_len: str | None, input_shape: tuple[int, ...], max_rows: int):
    """-> ``(request dict, ("fp32", N x C x H x W array) | ("bytes", [encoded images]))``; raises ClientError."""
    req, rest = _split_body(body, header_len)
    requested_output(req)  # a bad output request is a 400 before any decoding or inference
    t = req["inputs"][0]
    if not isinstance(t, dict):
        raise ClientError(400, "input tensor must be an object")
    name, dtype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ClientError(400, f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    size = _params(t, f"input '{name}'").get("binary_data_size")
    data = t.get("data")
    if size is not None and (not isinstance(size, int) or size != len(rest)):
        raise ClientError(400, f"input '{name}': binary_data_size {size} but {len(rest)} bytes follow the header")
    if size is None and data is None:
        raise ClientError(400, f"input '{name}': no data")
    n = shape[0] if shape else 0
    if not 1 <= n <= max_rows:
        raise ClientError(400 if n < 1 else 413, f"input '{name}': batch of {n}; 1 to {max_rows} allowed")
    if name == IMAGE_INPUT or dtype == "BYTES":
        if dtype != "BYTES" or len(shape) != 1:
            raise ClientError(400, f"input '{IMAGE_INPUT}' must be BYTES [N], got {dtype} {shape}")
        if size is not None:
            return req, ("bytes", _bytes_elements(rest, n))
        if not isinstance(data, list) or len(data) != n or not all(isinstance(d, str) for d in data):
            raise ClientError(400, f"input '{IMAGE_INPUT}': JSON data must be {n} base64 strings")
        try:
            return req, ("bytes", [base64.b64decode(d, validate=True) for d in data])
        except (binascii.Error, ValueError):
            raise ClientError(400, f"input '{IMAGE_INPUT}': JSON data is not base64") from None
    if name != INPUT_NAME:
        raise ClientError(400, f"unknown input '{name}' (inputs: '{INPUT_NAME}' FP32, '{IMAGE_INPUT}' BYTES)")
    if dtype != "FP32":
        raise ClientError(400, f"input '{INPUT_NAME}': datatype must be FP32, got {dtype}")
    want = [n, *input_shape]
    if shape != want:
        raise ClientError(400, f"input '{INPUT_NAME}': shape must be {want}, got {shape}")
    count = int(np.prod(want))
    if size is not None:
        if size != 4 * count:
            raise ClientError(400, f"input '{INPUT_NAME}': {size} bytes of data, shape {want} needs {4 * count}")
        x = np.frombuffer(rest, dtype="<f4").reshape(want)
    else:
        x = _numbers(data, INPUT_NAME, count).reshape(want)
    if not np.isfinite(x).all():
        raise ClientError(400, f"input '{INPUT_NAME}': NaN or infinite values")
    return req, ("fp32", np.ascontiguousarray(x, np.float32))


def classify(logits: np.ndarray, count: int, labels: list[str]) -> list[list[str]]:
    """Triton's classification strings: per row the top ``count`` as ``"<value>:<index>:<label>"``."""
    k = min(count, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # ties: the lower index first
    return [[f"{float(row[j]):f}:{j}" + (f":{labels[j]}" if j < len(labels) else "") for j in idx]
            for row, idx in zip(logits, order, strict=True)]


def encode_response(req: dict, model: str, logits: np.ndarray, labels: list[str] | None = None
                    ) -> tuple[bytes, dict]:
    """The infer response (JSON, or JSON header + binary data when the request asked for binary output);
    ``labels``: the class names, for the classification extension."""
    binary, count = requested_output(req)
    logits = np.ascontiguousarray(logits, "<f4")
    if count is not None:
        rows = classify(logits, count, labels or [])
        out = {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [len(rows), len(rows[0]) if rows else 0]}
        flat = [s for r in rows for s in r]
        raw = b"".join(struct.pack("<I", len(e)) + e for e in (s.encode() for s in flat)) if binary else b""
    else:
        out = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(logits.shape)}
        raw = logits.tobytes() if binary else b""
        flat = None if binary else logits.ravel().tolist()
    if binary:
        out["parameters"] = {"binary_data_size": len(raw)}
    else:
        out["data"] = flat
    resp = {"model_name": model, "model_version": "1", "outputs": [out]}
    if "id" in req:
        resp["id"] = req["id"]
    head = json.dumps(resp).encode()
    if not binary:
        return head, {"Content-Type": "application/json"}
    return head + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
