"""The LLM API arguments of the llmapi flow, from the spec: one dict for verify and for serving.

upstream's llmapi model (all_models/llmapi/tensorrt_llm/1/model.py) passes every key of its
model.yaml except ``triton_config`` to ``tensorrt_llm.LLM(**args)``, whose pydantic arguments
forbid unknown keys. The verify step calls ``LLM(**llm_args(...))`` itself, so the check runs the
very arguments the server will load. Names are the LLM API's (recorded per release in
tests/data/upstream/<release>/LLM.json); the spec's knobs carry the tutorial's names.
"""

from __future__ import annotations

from typing import Any

from llm_deploy.backends.trtllm.validation import parallelism
from llm_deploy.spec import DeploySpec

# SchedulerConfig.capacity_scheduler_policy: the in-flight batcher's policies, upstream's spelling.
CAPACITY_SCHEDULER_POLICY = {"max_utilization": "MAX_UTILIZATION", "guaranteed_no_evict": "GUARANTEED_NO_EVICT"}


def llm_args(spec: DeploySpec, checkpoint_dir: str) -> dict[str, Any]:
    """``LLM()`` keyword arguments serving ``checkpoint_dir`` (a local Hugging Face checkpoint,
    so an offline worker never asks the Hub) as the spec says."""
    tp, pp = parallelism(spec)
    args: dict[str, Any] = {
        "model": checkpoint_dir,
        "backend": "pytorch",  # the template's own key: the PyTorch backend, 1.0's default
        "dtype": spec.dtype,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "max_batch_size": spec.max_batch_size,
        "max_input_len": spec.max_input_len,
        "max_seq_len": spec.max_input_len + spec.max_output_len,
        "scheduler_config": {"capacity_scheduler_policy": CAPACITY_SCHEDULER_POLICY[spec.batch_scheduler_policy]},
    }
    kv_cache = {
        # 0 / off in the spec = the runtime's own default, as in the engine flow's config.pbtxt.
        "free_gpu_memory_fraction": spec.served_kv_cache_fraction or None,
        "max_tokens": spec.max_tokens_in_paged_kv_cache or None,
        # The LLM API reuses KV blocks by default; the spec's knob is off unless asked for, in
        # both flows, so a deployment does not change behaviour with its flow.
        "enable_block_reuse": spec.enable_kv_cache_reuse,
    }
    args["kv_cache_config"] = {key: value for key, value in kv_cache.items() if value is not None}
    if spec.enable_chunked_context:
        args["enable_chunked_prefill"] = True
    return args


def triton_config(spec: DeploySpec) -> dict[str, Any]:
    """model.yaml's triton_config: model.py requires both keys; the model does not batch
    requests itself (``max_batch_size: 0``, upstream's only value), the LLM API does."""
    return {"max_batch_size": 0, "decoupled": spec.decoupled_mode}
