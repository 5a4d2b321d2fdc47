"""Triton model "preprocessing": prompt text -> token ids, as tensorrtllm_backend v0.5.0 does it.

Tensor names, types and layouts are upstream's (all_models/inflight_batcher_llm/preprocessing at
v0.5.0, commit 47b609b6); the code is ours. Stand-alone on purpose (numpy + transformers): the
same file serves the NGC TensorRT-LLM image, where llm_deploy is not installed.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizer_loading import load_tokenizer

_OUTPUTS = ("INPUT_ID", "REQUEST_INPUT_LEN", "BAD_WORDS_IDS", "STOP_WORDS_IDS")


def model_parameters(model_config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def encode_queries(tokenizer: Any, queries: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a [batch, 1] BYTES array; right-pad ids with pad_id like upstream's pad_sequence."""
    ids = [tokenizer.encode(_text(row, "QUERY")) for row in queries]
    width = max((len(row) for row in ids), default=0)
    padded = np.full((len(ids), width), pad_id, dtype=np.int32)
    for index, row in enumerate(ids):
        padded[index, : len(row)] = row
    lengths = np.array([[len(row)] for row in ids], dtype=np.int32)
    return padded, lengths


def to_word_list_format(tokenizer: Any, word_dict: np.ndarray) -> np.ndarray:
    """[batch, 1] comma-separated phrases -> TensorRT-LLM's [batch, 2, N] word list.

    Row 0 holds every phrase's ids back to back (0-padded), row 1 the cumulative end offset of
    each phrase (-1-padded). Unlike upstream 0.5.0 the phrases are encoded without BOS, which
    upstream later fixed: a leading BOS would make every phrase unmatchable.
    """
    flat_ids: list[list[int]] = []
    offsets: list[list[int]] = []
    for item in word_dict:
        ids: list[int] = []
        ends: list[int] = []
        for phrase in _phrases(_text(item, "bad_words/stop_words")):
            phrase_ids = tokenizer.encode(phrase, add_special_tokens=False)
            if phrase_ids:
                ids += phrase_ids
                ends.append(len(ids))
        flat_ids.append(ids)
        offsets.append(ends)
    pad_to = max([1] + [len(ids) for ids in flat_ids])
    result = np.zeros((len(flat_ids), 2, pad_to), dtype=np.int32)
    result[:, 1, :] = -1
    for index, (ids, ends) in enumerate(zip(flat_ids, offsets)):
        result[index, 0, : len(ids)] = ids
        result[index, 1, : len(ends)] = ends
    return result


def _phrases(text: str) -> list[str]:
    # csv, as upstream: a phrase may contain a comma when quoted.
    rows = list(csv.reader([text])) if text else []
    return rows[0] if rows else []


def _text(row: Any, name: str = "QUERY") -> str:
    value = np.asarray(row, dtype=object).reshape(-1)
    if value.size == 0:
        return ""
    item = value[0]
    if not isinstance(item, bytes):
        return str(item)
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Guessing an encoding would tokenize something the client never wrote; say what is wrong.
        raise ValueError(
            f"{name} is not valid UTF-8 text: byte {item[exc.start:exc.start + 1]!r} at offset {exc.start} "
            f"of {len(item)}; send the prompt as UTF-8"
        ) from None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_config = json.loads(args["model_config"])
        params = model_parameters(model_config)
        self.tokenizer = load_tokenizer(params["tokenizer_dir"], params.get("tokenizer_type", "auto"))
        self.pad_id = _pad_id(self.tokenizer)
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(model_config, name)["data_type"]
            )
            for name in _OUTPUTS
        }

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._process(request))
            except ValueError as exc:  # the request's own fault: the message is for the client
                error = pb_utils.TritonError(f"preprocessing: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail its batch
                error = pb_utils.TritonError(f"preprocessing: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

    def finalize(self) -> None:
        self.tokenizer = None

    def _process(self, request: Any) -> Any:
        query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
        output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
        bad_words = _optional(request, "BAD_WORDS_DICT", len(query))
        stop_words = _optional(request, "STOP_WORDS_DICT", len(query))
        input_ids, input_lengths = encode_queries(self.tokenizer, query, self.pad_id)
        tensors = {
            "INPUT_ID": input_ids,
            "REQUEST_INPUT_LEN": input_lengths,
            "BAD_WORDS_IDS": to_word_list_format(self.tokenizer, bad_words),
            "STOP_WORDS_IDS": to_word_list_format(self.tokenizer, stop_words),
        }
        outputs = [pb_utils.Tensor(name, value.astype(self.dtypes[name])) for name, value in tensors.items()]
        outputs.append(pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len))
        return pb_utils.InferenceResponse(output_tensors=outputs)


def _optional(request: Any, name: str, batch: int) -> np.ndarray:
    # Required in 0.5.0's config, optional from 0.6.0 on; accept both.
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return np.array([[b""]] * batch, dtype=object)
    return tensor.as_numpy()


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return 0
