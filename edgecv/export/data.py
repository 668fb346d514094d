"""The images export validates and calibrates on: validation and calibration arrays with the source's
preprocessing (one balanced sample each, through :func:`edgecv.data.arrays.to_arrays`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecv.errors import UserError


@dataclass
class EvalData:
    x: np.ndarray  # N x 3 x S x S float32 (Preprocess.to_array)
    y: np.ndarray
    calib: list[np.ndarray]
    source: str


def load_eval_data(data: str, class_names: list[str], preprocess, num_val: int, num_calib: int, seed: int = 0) -> EvalData:
    from edgecv.data.arrays import to_arrays
    from edgecv.data.datasets import load_train_val, sample_calibration

    # validation compares each artifact with its source on the same images, calibration needs no split:
    # byte-identical images in two splits cannot bias either (train/compress refuse them)
    b = load_train_val(data, img_size=preprocess.input_size, seed=seed, preprocess=preprocess, allow_duplicates=True)
    if list(b.class_names) != list(class_names):
        raise UserError(f"--data {data}: its classes {b.class_names[:10]} are not the model's {list(class_names)[:10]}")
    val = sample_calibration(b.val, num_val, seed)
    cal = sample_calibration(b.train, num_calib, seed + 1)

    x, y = to_arrays(val, preprocess, "val images")
    cx, _ = to_arrays(cal, preprocess, "calibration images")
    calib = [cx[i : i + 32] for i in range(0, len(cx), 32)]
    return EvalData(x, y, calib, b.source)
