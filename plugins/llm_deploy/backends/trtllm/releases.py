"""The one table of TensorRT-LLM / tensorrtllm_backend releases the trtllm backend can drive.

Adding a release = one ``Release`` row below + its recorded flag sets under
``tests/data/upstream/<name>/`` (``tests/tools/extract_flags.py`` writes them from upstream's
source). The tests check every command we generate for the row against those flag sets.

Kept free of imports beyond the standard library: ``llm_deploy.spec`` reads the release names
from here, and the Airflow scheduler imports spec on every parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BACKEND_REPO_URL = "https://github.com/triton-inference-server/tensorrtllm_backend.git"
TRTLLM_REPO_URL = "https://github.com/NVIDIA/TensorRT-LLM.git"

EngineFlow = Literal["legacy_build_py", "convert_checkpoint_trtllm_build"]

# Keys of Release.flag_sets, and the names of the recorded files tests/data/upstream/<release>/<key>.json.
BUILD_WHEEL = "build_wheel.py"
LEGACY_BUILD = "build.py"
CONVERT_CHECKPOINT = "convert_checkpoint.py"
TRTLLM_BUILD = "trtllm-build"
RUN = "run.py"
LAUNCH_SERVER = "launch_triton_server.py"


@dataclass(frozen=True)
class WheelSource:
    """How the tensorrt_llm Python package gets onto the worker.

    ``build``: the tutorial's ``scripts/build_wheel.py --trt_root <trt_root>`` inside the
    TensorRT-LLM submodule, then pip-install the wheel it wrote. ``pip``: the published wheel
    ``tensorrt_llm==<version>`` (no source build).
    """

    kind: Literal["build", "pip"]
    version: str
    trt_root: str = "/usr/local/tensorrt"


@dataclass(frozen=True)
class Release:
    name: str  # what DeploySpec.trtllm_release holds: the tag without its "v"
    backend_tag: str  # triton-inference-server/tensorrtllm_backend
    backend_commit: str
    trtllm_tag: str  # NVIDIA/TensorRT-LLM
    trtllm_commit: str  # the backend tag's tensorrt_llm submodule pin: what a clone checks out
    container_image: str  # NGC Triton image whose tritonserver carries this tensorrtllm backend
    wheel: WheelSource
    engine_flow: EngineFlow
    dtypes: tuple[str, ...]  # dtypes this release's engine scripts accept (their --dtype choices)
    # Script paths: keys of flag_sets -> path inside the TensorRT-LLM submodule (``tensorrt_llm/``
    # of the backend clone), or inside the backend clone itself for LAUNCH_SERVER. trtllm-build
    # is the console script of the installed wheel, so it has no path.
    scripts: dict[str, str]
    # Defaults of the legacy build.py flags we set; a flag equal to its default is left out, so
    # the tutorial's own command comes out word for word (checked against the recorded defaults).
    legacy_build_defaults: dict[str, int] = field(default_factory=dict)
    # Whether launch_triton_server.py takes --http_port/--grpc_port/--metrics_port; without them
    # tritonserver listens on 8000/8001/8002.
    launch_sets_ports: bool = False

    @property
    def flag_sets(self) -> tuple[str, ...]:
        """The upstream scripts our commands call for this release (one recorded flag set each)."""
        return tuple(self.scripts) + ((TRTLLM_BUILD,) if self.engine_flow != "legacy_build_py" else ())


RELEASES: dict[str, Release] = {
    # The tutorial's release. Upstream sources read at exactly these commits (see
    # tests/data/upstream/README.md).
    "0.5.0": Release(
        name="0.5.0",
        backend_tag="v0.5.0",
        backend_commit="47b609b670d6bb33a5ff113d98ad8a44d961c5c6",
        trtllm_tag="v0.5.0",
        trtllm_commit="ffd5af342a817a2689d38e4af2cc59ded877e339",
        container_image="nvcr.io/nvidia/tritonserver:23.10-trtllm-python-py3",
        wheel=WheelSource(kind="build", version="0.5.0", trt_root="/usr/local/tensorrt"),
        engine_flow="legacy_build_py",
        dtypes=("float16", "bfloat16", "float32"),
        scripts={
            BUILD_WHEEL: "scripts/build_wheel.py",
            LEGACY_BUILD: "examples/llama/build.py",
            RUN: "examples/llama/run.py",
            LAUNCH_SERVER: "scripts/launch_triton_server.py",
        },
        legacy_build_defaults={
            "--tp_size": 1, "--pp_size": 1,
            "--max_batch_size": 8, "--max_input_len": 2048, "--max_output_len": 512,
        },
        launch_sets_ports=False,
    ),
    # The newest tensorrtllm_backend tag that still ships all_models/inflight_batcher_llm and
    # scripts/launch_triton_server.py (v0.20.0 on moved the backend into TensorRT-LLM itself).
    # Its TensorRT-LLM release (v0.19.0) still keeps the llama example in examples/llama/: the
    # backend's own v0.19.0 docs call tensorrt_llm/examples/llama/convert_checkpoint.py, and the
    # move to examples/models/core/ only reached the backend's main branch after the tag.
    "0.19.0": Release(
        name="0.19.0",
        backend_tag="v0.19.0",
        backend_commit="c1e19638304d287f554f738c1411746555ed348c",
        trtllm_tag="v0.19.0",
        trtllm_commit="c6f7d423354214df818e206e87680fb2d513a718",
        # Triton 25.05 is the NGC release built on TensorRT-LLM 0.19.0.
        container_image="nvcr.io/nvidia/tritonserver:25.05-trtllm-python-py3",
        wheel=WheelSource(kind="pip", version="0.19.0"),
        engine_flow="convert_checkpoint_trtllm_build",
        dtypes=("float16", "bfloat16", "float32"),
        scripts={
            CONVERT_CHECKPOINT: "examples/llama/convert_checkpoint.py",
            RUN: "examples/run.py",
            LAUNCH_SERVER: "scripts/launch_triton_server.py",
        },
        launch_sets_ports=True,
    ),
}

SUPPORTED = tuple(RELEASES)  # oldest first; the last one is the default release
