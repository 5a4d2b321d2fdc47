"""The torch backend bound to the Backend interface: the CPU (or CUDA) twin of TensorRT-LLM.

Its engine is the checkpoint cast to the serving dtype, served by our own Llama forward and
in-flight batcher inside Triton's python backend, from our own model repository templates.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_deploy.backends.base import Backend
from llm_deploy.backends.torch import build_engine, build_target, deployment_server, serve, verify_engine
from llm_deploy.backends.torch.build_target import TORCH_IMAGE_ENV
from llm_deploy.build_target import BuildTarget
from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.errors import NonRetryableError, SkipStep
from llm_deploy.records import ServerRecord, VerifyRecord, WheelRecord
from llm_deploy.server.admin_guard import AdminKey
from llm_deploy.runners.command import NO_GPU, GpuRequest
from llm_deploy.spec import DeploySpec

__all__ = ["TORCH_IMAGE_ENV", "TorchBackend"]


class TorchBackend(Backend):
    name = "torch"
    compares_with_hf_generate = True

    def runs_python_steps_in_runner(self, spec: DeploySpec) -> bool:
        # The twin's steps are our Python: with the docker or kubernetes runner they run whole in its image.
        return spec.runner in ("docker", "kubernetes")

    def gpus(self, spec: DeploySpec) -> GpuRequest:
        # The twin runs on CPU unless pointed at GPUs.
        return super().gpus(spec) if spec.gpu_device_ids else NO_GPU

    def default_image(self, spec: DeploySpec) -> str:
        image = os.environ.get(TORCH_IMAGE_ENV, "")
        if not image:
            raise NonRetryableError(
                f"docker_image is empty and this worker sets no {TORCH_IMAGE_ENV}: name an image that "
                "carries torch and llm_deploy (python docker/build_torch_image.py builds one from Debian and PyPI)"
            )
        return image

    def build_wheel(self, spec: DeploySpec) -> WheelRecord:
        raise SkipStep("backend 'torch' runs on the PyTorch already installed on this worker; there is no "
                       "TensorRT-LLM wheel to build")

    def parallelism(self, spec: DeploySpec) -> tuple[int, int]:
        return build_engine.parallelism(spec)

    def build_target(self, spec: DeploySpec, step: str) -> BuildTarget:
        return build_target.build_target(spec, step)

    def build_engine(self, spec: DeploySpec, checkpoint: dict, out_dir: Path, config: dict) -> None:
        build_engine.build_engine(spec, checkpoint, out_dir, config)

    def verify_engine(self, spec: DeploySpec, engine: dict, checkpoint: dict) -> VerifyRecord:
        return verify_engine.verify_engine(spec, engine, checkpoint)

    def model_repo_source(self, spec: DeploySpec) -> str:
        from llm_deploy.backends.torch.model_repo import templates_fingerprint

        return templates_fingerprint()

    def render_model_repo(self, spec: DeploySpec, engine: dict, checkpoint: dict, out_dir: Path) -> None:
        from llm_deploy.backends.torch.model_repo import render_repository

        render_repository(
            spec,
            engine_dir=Path(engine["engine_dir"]),
            tokenizer_dir=Path(checkpoint["checkpoint_dir"]),
            out_dir=out_dir,
            decoupled=spec.decoupled_mode,
            # Clients want the completion, not the prompt echoed back (0.5.0 echoed it; later
            # releases added this switch and recommend it on).
            exclude_input_in_output=spec.exclude_input_in_output,
        )

    def start_server(self, spec: DeploySpec, model_repo: Path, log_path: Path, *,
                     admin_key: AdminKey | None = None) -> ServerRecord:
        return serve.start_server(spec, model_repo, log_path, admin_key)

    def deployment_refusal(self, spec: DeploySpec) -> str | None:
        return deployment_server.refusal(spec)

    def deployment_launch(self, spec: DeploySpec, repository: Path) -> ServerLaunch:
        return deployment_server.launch(spec, repository)
