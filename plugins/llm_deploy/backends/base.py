"""The operations a backend provides for the tutorial's steps, chosen once from the spec.

A step in ``llm_deploy.steps`` does what every backend shares (cache lookup, atomic publish on
the engines volume, records, logging) and asks the spec's backend for the work itself. A backend
is a package under ``llm_deploy.backends`` with one module per operation, side by side with the
other backends' (``build_engine.py``, ``verify_engine.py``, ``model_repo.py``, ``serve.py`` ...),
and one ``backend.py`` that binds them to this interface. Adding a backend or a flow is a new
package and one line in ``backends/registry.py``; no step changes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llm_deploy.runners import service_runner
from llm_deploy.runners.command import GpuRequest
from llm_deploy.spec import DeploySpec

if TYPE_CHECKING:  # records import volume and spec only; this keeps the interface import-light
    from llm_deploy.build_target import BuildTarget
    from llm_deploy.deployment.launch import ServerLaunch
    from llm_deploy.records import ServerRecord, VerifyRecord, WheelRecord
    from llm_deploy.server.admin_guard import AdminKey


log = logging.getLogger(__name__)


class Backend(ABC):
    name: ClassVar[str]
    # The HF transformers generate() baseline in the benchmark is a like-for-like peer: the same
    # checkpoint, dtype and machine as the served model.
    compares_with_hf_generate: ClassVar[bool] = False

    # --- where its steps run ----------------------------------------------------------------

    def runs_python_steps_in_runner(self, spec: DeploySpec) -> bool:
        """Whether the Python steps themselves run through the spec's runner (``python -m
        llm_deploy.cli`` in a container of the run's image), rather than in the worker, which
        then sends only the backend's own commands to the runner."""
        return False

    def gpus(self, spec: DeploySpec) -> GpuRequest:
        """The GPUs a GPU step of this spec holds."""
        return GpuRequest.for_world_size(spec.world_size, spec.gpu_device_ids)

    @abstractmethod
    def default_image(self, spec: DeploySpec) -> str:
        """The docker runner's image when the spec names none; NonRetryableError saying what to
        set when there is none."""

    # --- the tutorial's operations ---------------------------------------------------------------

    @abstractmethod
    def build_wheel(self, spec: DeploySpec) -> WheelRecord:
        """Make the runtime installable; raise SkipStep when the backend needs no build."""

    @abstractmethod
    def parallelism(self, spec: DeploySpec) -> tuple[int, int]:
        """(tensor parallel, pipeline parallel) of the spec's engine; refuse what cannot be built."""

    def engine_free_reason(self, spec: DeploySpec) -> str | None:
        """Why this spec's flow builds no engine (build_engine then skips itself), or None."""
        return None

    @abstractmethod
    def build_target(self, spec: DeploySpec, step: str) -> BuildTarget:
        """What an engine of this spec is built for where ``step`` runs (its runtime, image and
        GPU type): part of the engine's identity, and what start_server holds the engine to."""

    @abstractmethod
    def build_engine(self, spec: DeploySpec, checkpoint: dict, out_dir: Path, config: dict) -> None:
        """Build the engine from the checkpoint record into ``out_dir`` (a scratch directory that
        the step publishes atomically); ``config`` is the engine's description, to keep in it."""

    @abstractmethod
    def verify_engine(self, spec: DeploySpec, engine: dict | None, checkpoint: dict) -> VerifyRecord:
        """The tutorial's run.py check: generate for its prompt, and fail if the output is wrong.
        ``engine`` is None in a flow without one (``engine_free_reason``): check the checkpoint."""

    @abstractmethod
    def model_repo_source(self, spec: DeploySpec) -> str:
        """What the model repository is rendered from (part of its cache key)."""

    @abstractmethod
    def render_model_repo(self, spec: DeploySpec, engine: dict | None, checkpoint: dict, out_dir: Path) -> None:
        """Write the model repository for the engine (None: for the checkpoint, in a flow without
        an engine) into ``out_dir`` (scratch)."""

    @abstractmethod
    def start_server(self, spec: DeploySpec, model_repo: Path, log_path: Path, *,
                     admin_key: AdminKey | None = None) -> ServerRecord:
        """Start Triton on the repository; return once it and every model are ready, having
        stopped whatever it started if they are not. ``admin_key`` (given for a non-loopback
        ``server_host``): restrict the admin APIs to requests carrying it (``admin_guard``)."""

    def stop_server(self, server: dict) -> bool:
        """Stop the server a start_server record describes, through the runner that started it
        (its process group or its container); True if it was still running."""
        service = server["service"]
        stopped = service_runner(service).stop(service)
        log.info("tritonserver %s; its log: %s", "stopped" if stopped else "was not running", server["log_path"])
        return stopped

    # --- the long-running deployment -------------------------------------------------------------

    def deployment_refusal(self, spec: DeploySpec) -> str | None:
        """Why this spec's candidate cannot be promoted into a long-running server (the run then
        qualifies it and skips the promotion, saying so), or None."""
        return None

    @abstractmethod
    def deployment_launch(self, spec: DeploySpec, repository: Path) -> ServerLaunch:
        """How the deployment's tritonserver runs on ``repository`` (the live one), on the spec's
        deployment ports, in explicit model-control mode."""
