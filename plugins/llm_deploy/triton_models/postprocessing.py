"""Triton model "postprocessing": token ids -> text, as tensorrtllm_backend v0.5.0 does it.

Tensor names and layouts are upstream's (all_models/inflight_batcher_llm/postprocessing at v0.5.0,
commit 47b609b6) plus v0.6.0's optional SEQUENCE_LENGTH; the code is ours. Like 0.5.0 it decodes
every token it is given, special tokens included, so a non-streaming answer that echoes the
prompt starts with the tokenizer's BOS text. Stand-alone (numpy + transformers) so the same file
serves the NGC TensorRT-LLM image.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizer_loading import load_tokenizer


def decode_batch(tokenizer: Any, tokens_batch: np.ndarray, sequence_length: np.ndarray | None) -> list[bytes]:
    """[batch, beam, tokens] (+ [batch, beam] valid lengths) -> one UTF-8 text per beam, flattened.

    Flattened to [batch * beam] like upstream, so clients that read ``text_output[0]`` get a string.
    """
    texts = []
    for batch_index, beams in enumerate(np.asarray(tokens_batch)):
        for beam_index, tokens in enumerate(beams):
            if sequence_length is not None:
                tokens = tokens[: int(sequence_length[batch_index][beam_index])]
            texts.append(tokenizer.decode([int(t) for t in tokens]).encode("utf-8"))
    return texts


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        self.tokenizer = load_tokenizer(params["tokenizer_dir"], params.get("tokenizer_type", "auto"))
        output_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT")
        self.output_dtype = pb_utils.triton_string_to_numpy(output_config["data_type"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._process(request))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail its batch
                error = pb_utils.TritonError(f"postprocessing: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

    def finalize(self) -> None:
        self.tokenizer = None

    def _process(self, request: Any) -> Any:
        tokens_batch = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH")
        texts = decode_batch(self.tokenizer, tokens_batch, None if lengths is None else lengths.as_numpy())
        output = pb_utils.Tensor("OUTPUT", np.array(texts, dtype=self.output_dtype))
        return pb_utils.InferenceResponse(output_tensors=[output])
