"""The tensorrt_llm model's tensors: a request's inputs read and checked, its responses built.

Upstream's interface (tensorrtllm_backend v0.5.0, commit 47b609b6, plus v0.6.0's sequence_length
output), kept apart from the model's execute loop (``tensorrt_llm_torch.py``). The renderer
copies this file next to that model's model.py, where Triton's python-backend stub puts the
version directory on sys.path; like the model it needs ``triton_python_backend_utils``, which
only the stub provides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

OUTPUTS = ("output_ids", "sequence_length")  # the model's outputs, in config.pbtxt's order
# Accepted so that upstream's clients work, and ignored: the twin decodes greedily.
SAMPLING_INPUTS = (
    "temperature", "runtime_top_k", "runtime_top_p", "len_penalty", "repetition_penalty",
    "min_length", "presence_penalty", "random_seed", "pad_id",
)


class RequestError(ValueError):
    """A request the model refuses; the message goes back to the client as its error."""


@dataclass(frozen=True)
class ParsedRequest:
    input_ids: list[int]
    max_new_tokens: int
    end_id: int | None
    streaming: bool
    stop: bool
    ignored: tuple[str, ...] = ()
    # What the client asked for (Triton lists every output when it names none). Responses carry
    # only these: see token_response for why.
    outputs: tuple[str, ...] = OUTPUTS


def parse_request(request: Any, limits: Any, default_end_id: int | None) -> ParsedRequest:
    """Read and validate one request's tensors; RequestError says what is wrong.

    ``limits``: the engine's (the model's EngineLimits: max_input_len, max_output_len).
    """
    stop = _scalar(request, "stop", bool, False)
    input_ids = _input(request, "input_ids")
    if stop:  # a stop signal carries placeholder ids (upstream's client sends np.empty)
        return ParsedRequest([], 0, None, False, True)
    if input_ids is None:
        raise RequestError("input_ids is required")
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise RequestError(f"input_ids must have shape [1, input_len] (one sequence per request), got {list(ids.shape)}")
    length = _scalar(request, "input_lengths", int, None)
    if length is None:
        raise RequestError("input_lengths is required")
    if not 1 <= length <= ids.shape[1]:
        raise RequestError(f"input_lengths={length} must be between 1 and the {ids.shape[1]} ids given")
    if length > limits.max_input_len:
        raise RequestError(f"input length {length} exceeds the engine's max_input_len={limits.max_input_len}")
    max_new_tokens = _scalar(request, "request_output_len", int, None)
    if max_new_tokens is None:
        raise RequestError("request_output_len is required")
    if not 1 <= max_new_tokens <= limits.max_output_len:
        raise RequestError(
            f"request_output_len={max_new_tokens} must be between 1 and the engine's "
            f"max_output_len={limits.max_output_len}"
        )
    beam_width = _scalar(request, "beam_width", int, 1)
    if beam_width != 1:
        raise RequestError(f"beam_width={beam_width}: the torch backend decodes greedily (beam_width 1 only)")
    return ParsedRequest(
        input_ids=[int(t) for t in ids[0, :length]],
        max_new_tokens=max_new_tokens,
        end_id=_scalar(request, "end_id", int, default_end_id),
        streaming=_scalar(request, "streaming", bool, False),
        stop=False,
        ignored=tuple(name for name in SAMPLING_INPUTS if _input(request, name) is not None),
        outputs=_requested(request),
    )


def token_response(tokens: list[int], outputs: tuple[str, ...] = OUTPUTS) -> Any:
    """output_ids [batch 1, beam 1, tokens] and sequence_length [1, 1], upstream's layout.

    Only the ``outputs`` the request asked for: the stub drops any other output inside send(),
    with the GIL released, and freeing its numpy array there segfaults a Python 3.12 stub (3.11's
    allocator happens to survive it). A client asking for output_ids alone, as upstream's
    benchmark_core_model.py does, killed the model on its first token.
    """
    values = {"output_ids": [[tokens]], "sequence_length": [[len(tokens)]]}
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, np.array(values[name], dtype=np.int32)) for name in outputs]
    )


def error_response(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _requested(request: Any) -> tuple[str, ...]:
    asked = set(request.requested_output_names())
    return tuple(name for name in OUTPUTS if name in asked)


def _input(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request: Any, name: str, kind: Callable[[Any], Any], default: Any) -> Any:
    # Shapes differ with reshape: [1] for "reshape: { shape: [ ] }" inputs, [1, 1] otherwise.
    value = _input(request, name)
    if value is None or value.size == 0:
        return default
    if value.size != 1:
        raise RequestError(f"{name} must hold one value per request, got shape {list(value.shape)}")
    return kind(value.reshape(-1)[0].item())
