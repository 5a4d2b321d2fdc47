"""The input tensors of one request to the tensorrt_llm model, as the ensemble hands them over."""

from __future__ import annotations

import numpy as np


def request_tensors(ids: list[int], output_len: int, **extra) -> dict[str, np.ndarray]:
    tensors = {
        "input_ids": np.array([ids], dtype=np.int32),
        # "reshape: { shape: [ ] }" inputs reach the model without their [1] dim.
        "input_lengths": np.array([len(ids)], dtype=np.int32),
        "request_output_len": np.array([[output_len]], dtype=np.uint32),
    }
    for name, value in extra.items():
        dtype = {bool: bool, float: np.float32}.get(type(value), np.uint32)
        tensors[name] = np.array([[value]], dtype=dtype)
    return tensors
