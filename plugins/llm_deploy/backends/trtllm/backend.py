"""The trtllm backend bound to the Backend interface: upstream's TensorRT-LLM and tensorrtllm_backend.

Every operation runs upstream's own scripts for the spec's release (``commands``) through the
spec's runner (``execution``); the model repository is upstream's inflight_batcher_llm from the
backend clone, every placeholder filled (``model_repo``).
"""

from __future__ import annotations

from pathlib import Path

from llm_deploy.backends.base import Backend
from llm_deploy.backends.trtllm import (
    build_engine, build_target, build_wheel, deployment_server, llmapi_repo, serve, validation, verify_engine,
)
from llm_deploy.backends.trtllm.execution import backend_dir
from llm_deploy.backends.trtllm.model_repo import render_upstream_repository, template_dir
from llm_deploy.build_target import BuildTarget
from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.records import ServerRecord, VerifyRecord, WheelRecord
from llm_deploy.server.admin_guard import AdminKey
from llm_deploy.spec import DeploySpec


class TrtllmBackend(Backend):
    name = "trtllm"

    def default_image(self, spec: DeploySpec) -> str:
        return validation.release_of(spec).container_image

    def build_wheel(self, spec: DeploySpec) -> WheelRecord:
        return build_wheel.build_wheel(spec)

    def parallelism(self, spec: DeploySpec) -> tuple[int, int]:
        return validation.parallelism(spec)

    def engine_free_reason(self, spec: DeploySpec) -> str | None:
        if spec.triton_flow != "llmapi":
            return None
        return (f"triton_flow='llmapi': TensorRT-LLM {spec.trtllm_release}'s LLM API (PyTorch backend) serves "
                "the Hugging Face checkpoint itself, so no engine is built")

    def build_target(self, spec: DeploySpec, step: str) -> BuildTarget:
        return build_target.build_target(spec, step)

    def build_engine(self, spec: DeploySpec, checkpoint: dict, out_dir: Path, config: dict) -> None:
        build_engine.build_engine(spec, checkpoint, out_dir)

    def verify_engine(self, spec: DeploySpec, engine: dict | None, checkpoint: dict) -> VerifyRecord:
        if spec.triton_flow == "llmapi":
            return verify_engine.verify_checkpoint(spec, checkpoint)
        return verify_engine.verify_engine(spec, engine, checkpoint)

    def model_repo_source(self, spec: DeploySpec) -> str:
        release = validation.release_of(spec)
        source = f"tensorrtllm_backend@{release.backend_commit}"
        return f"{source}:{release.llmapi_templates}" if spec.triton_flow == "llmapi" else source

    def render_model_repo(self, spec: DeploySpec, engine: dict | None, checkpoint: dict, out_dir: Path) -> None:
        release = validation.validate_spec(spec)
        clone = backend_dir(spec)
        validation.require_backend_clone(clone, release, need_trtllm=False, flow=spec.triton_flow)
        if spec.triton_flow == "llmapi":
            llmapi_repo.render_llmapi_repository(spec, source=llmapi_repo.llmapi_template_dir(clone, release),
                                                 out_dir=out_dir, checkpoint_dir=checkpoint["checkpoint_dir"])
            return
        render_upstream_repository(spec, source=template_dir(clone, release), out_dir=out_dir,
                                   engine_dir=engine["engine_dir"], tokenizer_dir=checkpoint["checkpoint_dir"])

    def start_server(self, spec: DeploySpec, model_repo: Path, log_path: Path, *,
                     admin_key: AdminKey | None = None) -> ServerRecord:
        return serve.start_server(spec, model_repo, log_path)

    def deployment_refusal(self, spec: DeploySpec) -> str | None:
        return deployment_server.refusal(spec)

    def deployment_launch(self, spec: DeploySpec, repository: Path) -> ServerLaunch:
        return deployment_server.launch(spec, repository)
