"""The model a text request goes to, per Triton flow, and how its inputs are spelled.

The engine flow's text model is inflight_batcher_llm's ``ensemble`` (preprocessing, tensorrt_llm,
postprocessing): batched tensors, ``max_tokens``/``stream``, one text delta per streamed token.
The llmapi flow has a single Python model, ``tensorrt_llm``, taking text itself: unbatched
tensors (its max_batch_size is 0), the LLM API's SamplingParams as ``sampling_param_*`` inputs,
``streaming``, and each streamed response carrying the whole text so far (model.py sends
RequestOutput's ``text``), so a streamed answer's text is its last response, not their sum.
Both answer /generate and /generate_stream, whose JSON keys are the input names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


TEXT_TARGETS = frozenset({"grpc_ensemble", "http_generate_stream", "http_generate"})


@dataclass(frozen=True)
class TextModel:
    name: str
    max_tokens_input: str
    max_tokens_dtype: str  # Triton's datatype of that input
    stream_input: str
    batched: bool  # the model's max_batch_size > 0: every tensor has a leading batch dimension
    cumulative_stream: bool  # each streamed response holds the whole text so far
    fixed_inputs: dict[str, Any] = field(default_factory=dict)  # sent with every request
    # Benchmark targets whose answer starts with the prompt (the ensemble's /generate does, as in
    # tensorrtllm_backend 0.5.0): its tokens are not output tokens.
    echoes_prompt: frozenset[str] = frozenset()

    def inputs(self, prompt: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
        """Input name -> value, as /generate's JSON body takes them."""
        return {"text_input": prompt, self.max_tokens_input: max_tokens, **self.fixed_inputs,
                self.stream_input: stream}


ENSEMBLE_MODEL = TextModel("ensemble", "max_tokens", "UINT32", "stream", batched=True, cumulative_stream=False,
                           fixed_inputs={"bad_words": "", "stop_words": ""}, echoes_prompt=frozenset({"http_generate"}))


def llmapi_model(exclude_input_in_output: bool = True) -> TextModel:
    # model.py's own default echoes the prompt; the spec's knob asks per request.
    return TextModel("tensorrt_llm", "sampling_param_max_tokens", "INT32", "streaming", batched=False,
                     cumulative_stream=True,
                     fixed_inputs={"sampling_param_exclude_input_from_output": exclude_input_in_output},
                     echoes_prompt=frozenset() if exclude_input_in_output else TEXT_TARGETS)


def text_model_for(triton_flow: str, *, exclude_input_in_output: bool = True) -> TextModel:
    return llmapi_model(exclude_input_in_output) if triton_flow == "llmapi" else ENSEMBLE_MODEL


def text_model_of(spec) -> TextModel:
    """The text model a DeploySpec's server has."""
    return text_model_for(spec.triton_flow, exclude_input_in_output=spec.exclude_input_in_output)
