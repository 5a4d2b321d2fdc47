"""The one table of TensorRT-LLM / tensorrtllm_backend releases the trtllm backend can drive.

Adding a release = one ``Release`` row below + its recorded flag sets under
``tests/data/upstream/<name>/`` (``tests/tools/extract_flags.py`` writes them from upstream's
source). The tests check every command we generate for the row against those flag sets.

A release that is not in the table can still be driven when the release watch derived it: its
probe found every flag and placeholder our commands use unchanged at the new tag, and wrote the
newest row under the new name to ``<engines_root>/releases/<name>/release.json`` (``find`` reads
it back; ``derived_from`` names the row it copies). Promoting one = adding its row here.

Kept free of imports beyond the standard library: ``llm_deploy.spec`` reads the release names
from here, and the Airflow scheduler imports spec on every parse.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

BACKEND_REPO_URL = "https://github.com/triton-inference-server/tensorrtllm_backend.git"
TRTLLM_REPO_URL = "https://github.com/NVIDIA/TensorRT-LLM.git"

EngineFlow = Literal["legacy_build_py", "convert_checkpoint_trtllm_build"]
# How Triton serves the model (DeploySpec.triton_flow). ``engine``: upstream's
# inflight_batcher_llm repository on an engine built by convert_checkpoint/trtllm-build (or
# build.py), every release. ``llmapi``: upstream's all_models/llmapi, a Python-backend model that
# hands the Hugging Face checkpoint to the LLM API's PyTorch backend; no engine is built (1.0 on,
# where the PyTorch backend became TensorRT-LLM's default).
TritonFlow = Literal["engine", "llmapi"]
TRITON_FLOWS: tuple[str, ...] = ("engine", "llmapi")

# Keys of Release.flag_sets, and the names of the recorded files tests/data/upstream/<release>/<key>.json.
BUILD_WHEEL = "build_wheel.py"
LEGACY_BUILD = "build.py"
CONVERT_CHECKPOINT = "convert_checkpoint.py"
TRTLLM_BUILD = "trtllm-build"
RUN = "run.py"
LAUNCH_SERVER = "launch_triton_server.py"
# Not a script: the LLM() arguments the llmapi model passes model.yaml's keys to, recorded as
# tests/data/upstream/<release>/LLM.json like a flag set.
LLM_API = "LLM"


# DeploySpec fields that fill placeholders of upstream's tensorrt_llm model, under upstream's names.
TUNING_PARAMS = frozenset({"decoupled_mode", "exclude_input_in_output", "kv_cache_free_gpu_mem_fraction",
                           "max_tokens_in_paged_kv_cache", "enable_kv_cache_reuse", "enable_chunked_context"})


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
    # triton-inference-server/tensorrtllm_backend: the release's tag, or for a release the backend
    # did not tag, the branch its release commit is on (``git clone --branch`` takes either).
    backend_ref: str
    backend_commit: str
    trtllm_tag: str  # NVIDIA/TensorRT-LLM
    # The backend commit's tensorrt_llm submodule pin: what a clone checks out (from 2026 a commit
    # of the triton-inference-server/TensorRT-LLM fork, which the submodule then points at).
    trtllm_commit: str
    container_image: str  # NGC Triton image whose tritonserver carries this tensorrtllm backend
    wheel: WheelSource
    engine_flow: EngineFlow
    dtypes: tuple[str, ...]  # dtypes this release's engine scripts accept (their --dtype choices)
    # Script paths: keys of flag_sets -> path inside the TensorRT-LLM submodule (``tensorrt_llm/``
    # of the backend clone), or inside the backend clone itself for LAUNCH_SERVER. trtllm-build
    # is the console script of the installed wheel, so it has no path.
    scripts: dict[str, str]
    # The inflight_batcher_llm templates, inside the backend clone. From 0.20 the Triton backend's
    # files live in TensorRT-LLM itself, under triton_backend/ of the submodule.
    templates: str = "all_models/inflight_batcher_llm"
    # Defaults of the legacy build.py flags we set; a flag equal to its default is left out, so
    # the tutorial's own command comes out word for word (checked against the recorded defaults).
    legacy_build_defaults: dict[str, int] = field(default_factory=dict)
    # Whether launch_triton_server.py takes --http_port/--grpc_port/--metrics_port; without them
    # tritonserver listens on 8000/8001/8002.
    launch_sets_ports: bool = False
    # Whether launch_triton_server.py refuses to start while any tritonserver process runs on the
    # host (its pgrep check) unless given --force.
    launch_checks_running_servers: bool = False
    # The spec's tutorial knobs this release's tensorrt_llm/config.pbtxt has a placeholder for (a
    # test holds it against the recorded templates); setting another one is refused.
    tuning_params: frozenset[str] = TUNING_PARAMS
    # The Triton flows this release can serve, its default first: what its own README leads with
    # (every backend README up to r26.04 leads with the engine flow; tests/data/upstream/LLMAPI-FLOW.md).
    flows: tuple[TritonFlow, ...] = ("engine",)
    # The llmapi model repository, inside the backend clone (releases whose flows have "llmapi").
    llmapi_templates: str = ""
    # A derived row (written by the release watch, not in the table): the table row it copies.
    derived_from: str = ""

    @property
    def derived(self) -> bool:
        return bool(self.derived_from)

    @property
    def default_flow(self) -> TritonFlow:
        return self.flows[0]

    @property
    def flag_sets(self) -> tuple[str, ...]:
        """The upstream scripts our commands call for this release (one recorded flag set each)."""
        return tuple(self.scripts) + ((TRTLLM_BUILD,) if self.engine_flow != "legacy_build_py" else ())


TRITON_BACKEND_IN_TRTLLM = "tensorrt_llm/triton_backend"


def _triton_backend_in_trtllm(name: str, *, backend_ref: str, backend_commit: str, trtllm_commit: str,
                              image: str) -> Release:
    """A row of the releases whose Triton backend is TensorRT-LLM's own triton_backend/ (0.20 on).

    From 1.0 the llmapi flow is offered too: 0.20 and 0.21 ship an all_models/llmapi as well, but
    there the LLM API still defaulted to TensorRT engines, which 1.0 removed from the llmapi model.
    """
    llmapi = int(name.split(".")[0]) >= 1
    return Release(
        name=name,
        backend_ref=backend_ref,
        backend_commit=backend_commit,
        trtllm_tag=f"v{name}",
        trtllm_commit=trtllm_commit,
        container_image=f"nvcr.io/nvidia/tritonserver:{image}-trtllm-python-py3",
        wheel=WheelSource(kind="pip", version=name),
        engine_flow="convert_checkpoint_trtllm_build",
        dtypes=("float16", "bfloat16", "float32"),
        scripts={
            CONVERT_CHECKPOINT: "examples/models/core/llama/convert_checkpoint.py",
            RUN: "examples/run.py",
            LAUNCH_SERVER: f"{TRITON_BACKEND_IN_TRTLLM}/scripts/launch_triton_server.py",
        },
        templates=f"{TRITON_BACKEND_IN_TRTLLM}/all_models/inflight_batcher_llm",
        launch_sets_ports=True,
        launch_checks_running_servers=True,
        flows=("engine", "llmapi") if llmapi else ("engine",),
        llmapi_templates=f"{TRITON_BACKEND_IN_TRTLLM}/all_models/llmapi" if llmapi else "",
    )


RELEASES: dict[str, Release] = {
    # The tutorial's release. Upstream sources read at exactly these commits (see
    # tests/data/upstream/README.md).
    "0.5.0": Release(
        name="0.5.0",
        backend_ref="v0.5.0",
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
        tuning_params=frozenset({"decoupled_mode", "kv_cache_free_gpu_mem_fraction", "max_tokens_in_paged_kv_cache"}),
    ),
    # The newest tensorrtllm_backend tag that still ships all_models/inflight_batcher_llm and
    # scripts/launch_triton_server.py (v0.20.0 on moved the backend into TensorRT-LLM itself).
    # Its TensorRT-LLM release (v0.19.0) still keeps the llama example in examples/llama/: the
    # backend's own v0.19.0 docs call tensorrt_llm/examples/llama/convert_checkpoint.py, and the
    # move to examples/models/core/ only reached the backend's main branch after the tag.
    "0.19.0": Release(
        name="0.19.0",
        backend_ref="v0.19.0",
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
        launch_checks_running_servers=True,
    ),
    **{row.name: row for row in (
        # From 0.20 on: the backend repository keeps a TensorRT-LLM submodule and its docs; the
        # launch script and the templates are the submodule's triton_backend/, and the llama
        # example moved to examples/models/core/llama/. Images: the first NGC Triton release built
        # on each (Triton's compatibility matrix). Where the records stand (most were read from
        # stored versions, not at the tag): tests/data/upstream/README.md.
        _triton_backend_in_trtllm("0.20.0", backend_ref="v0.20.0",
                                  backend_commit="40ab7b32e539d410cf29bc3f0463cb17be3fe50b",
                                  trtllm_commit="7965842954628b0b5456a2f7d59786d3dcd41647", image="25.06"),
        _triton_backend_in_trtllm("0.21.0", backend_ref="v0.21.0",
                                  backend_commit="2710a1ff62a700dbe01ae67f56d200102c249c46",
                                  trtllm_commit="b4b1185af320f109f4cb73b1505832dbc63042d7", image="25.08"),
        _triton_backend_in_trtllm("1.0.0", backend_ref="v1.0.0",
                                  backend_commit="efb8a497eac3e16acf6f3ad250565465c80e6f0a",
                                  trtllm_commit="ae8270b713446948246f16fadf4e2a32e35d0f62", image="25.09"),
        # Untagged: the backend's "TensorRT-LLM Backend v1.1.0 release" commit, on its rel branch.
        _triton_backend_in_trtllm("1.1.0", backend_ref="rel",
                                  backend_commit="b9cc224883da38f022984fcf9bd7ea8eed51d29c",
                                  trtllm_commit="48b7b5d8b7ed1e6bff57aecc6ff7d1533288bed8", image="25.12"),
        # Untagged: the heads of the Triton release branches whose images ship 1.2.0 and 1.2.1.
        _triton_backend_in_trtllm("1.2.0", backend_ref="r26.03",
                                  backend_commit="9736c4df0f5b3d02eacd2912ecd930072d59d9cf",
                                  trtllm_commit="7103cc3707ab41c47ed67e1370e75712b755ef5f", image="26.03"),
        _triton_backend_in_trtllm("1.2.1", backend_ref="r26.04",
                                  backend_commit="ce68ff5fd0a746eac895cfb4a5677b329c5bc707",
                                  trtllm_commit="2fdb9e66302b15db9a9b5e71d3ac45d5921ea45d", image="26.04"),
    )},
}

SUPPORTED = tuple(RELEASES)  # oldest first; the last one is the default release


# --- derived rows, on the engines volume ----------------------------------------------------------

DERIVED_DIR = "releases"
RELEASE_FILE = "release.json"
RECORD_KIND = "llm-deploy derived trtllm release"
# A release name is a version (it names a directory on the volume): nothing else is looked up.
RELEASE_NAME = re.compile(r"^\d+(\.\d+){1,3}([a-z]+\d*)?$")


class DerivedReleaseError(ValueError):
    """A derived release's record on the volume cannot be read as a release row."""


def derived_dir(engines_root: str | os.PathLike, name: str) -> Path:
    if not RELEASE_NAME.match(name):
        raise DerivedReleaseError(f"{name!r} is not a release version like 1.3.0")
    return Path(engines_root) / DERIVED_DIR / name


def find(name: str, engines_root: str | os.PathLike | None = None) -> Release | None:
    """The table's row, else the derived row on the volume under engines_root, else None."""
    if name in RELEASES:
        return RELEASES[name]
    if engines_root is None or not RELEASE_NAME.match(name):
        return None
    path = derived_dir(engines_root, name) / RELEASE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DerivedReleaseError(f"{path}: cannot read the derived release: {exc}") from None
    row = release_from_json(data, where=str(path))
    if row.name != name:
        raise DerivedReleaseError(f"{path} describes release {row.name!r}, not {name!r}")
    return row


def derived_names(engines_root: str | os.PathLike) -> list[str]:
    """Releases the watch derived onto the volume (names only; ``find`` reads each)."""
    root = Path(engines_root) / DERIVED_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if RELEASE_NAME.match(p.name) and (p / RELEASE_FILE).is_file())


def release_to_json(row: Release) -> dict[str, Any]:
    data = asdict(row)
    data["tuning_params"] = sorted(row.tuning_params)
    return {"kind": RECORD_KIND, **data}


def release_from_json(data: Any, *, where: str = "release record") -> Release:
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND:
        raise DerivedReleaseError(f"{where} is not a derived release record (kind {RECORD_KIND!r})")
    known = {f.name for f in fields(Release)}
    values = {key: value for key, value in data.items() if key != "kind"}
    unknown, missing = set(values) - known, {"name", "wheel", "container_image", "derived_from"} - set(values)
    if unknown or missing:
        raise DerivedReleaseError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                                  "re-derive it with the release watch or remove it")
    try:
        values["wheel"] = WheelSource(**values["wheel"])
        for key, kind in (("dtypes", tuple), ("flows", tuple), ("tuning_params", frozenset)):
            if key in values:
                values[key] = kind(values[key])
        return Release(**values)
    except TypeError as exc:
        raise DerivedReleaseError(f"{where}: {exc}") from None
