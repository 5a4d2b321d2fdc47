"""A TensorRT-LLM release's deployment server: the release's tritonserver, as its launcher runs
rank 0, in explicit model-control mode on the deployment's ports.

launch_triton_server.py cannot be the deployment's command: it starts rank 0 in the default
model-control mode, where the repository API refuses loads and unloads, and offers no option to
change that. So the command is the one the launcher builds for rank 0 of a one-GPU engine
(``mpirun --allow-run-as-root -n 1 tritonserver ...``), plus ``--model-control-mode=explicit``, loopback addresses, and a
python-backend shared-memory prefix of its own, so that its stubs and those of the qualification
server beside it (``prefix0_``) do not share regions.

With the ``docker`` runner it is a container of the release's image that Docker restarts
(``deployment.container_entry``); with ``local`` (a worker inside that image) a process under
our supervisor.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_deploy.backends.trtllm import NGC_TRITONSERVER, TRITONSERVER_ENV, validation
from llm_deploy.backends.trtllm.execution import gpus, preflight, runner, wheel_prefix
from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.runners.docker_runner import ENGINES_VOLUME_ENV, resolve_image
from llm_deploy.spec import DeploySpec


def refusal(spec: DeploySpec) -> str | None:
    if spec.runner == "kubernetes":
        return ("runner='kubernetes': the deployment's long-running server is a supervised process or a "
                "container Docker restarts, both on the worker's host; as a Kubernetes workload (a "
                "Deployment and its Service) it is not built yet, so the engine is qualified and not promoted")
    if spec.triton_flow == "llmapi":
        return ("triton_flow='llmapi' serves its tensorrt_llm model with no ensemble in front, and a deployment "
                "swaps versions behind its ensemble; promoting the llmapi flow is not built yet, so the "
                "checkpoint is qualified and not promoted")
    if spec.world_size != 1:
        return (f"world_size={spec.world_size}: a deployment swaps versions through one tritonserver's "
                "repository API, and launch_triton_server.py's other ranks load their model only when they "
                "start; multi-GPU deployments (the launcher's --multi-model orchestrator mode) are not built "
                "yet, so the engine is qualified and not promoted")
    return None


def shm_prefix(spec: DeploySpec) -> str:
    return f"deployment_{spec.deployment}_"


def server_argv(spec: DeploySpec, repository: Path, tritonserver: str) -> list[str]:
    """tritonserver for rank 0 of a one-GPU engine, as the release's launcher runs it, made a
    deployment: explicit model control, loopback HTTP and gRPC (the admin endpoints)."""
    return [
        "mpirun", "--allow-run-as-root", "-n", "1",
        tritonserver,
        f"--model-repository={repository}",
        f"--grpc-address={spec.server_host}",
        f"--grpc-port={spec.deployment_grpc_port}",
        f"--http-address={spec.server_host}",
        f"--http-port={spec.deployment_http_port}",
        f"--metrics-port={spec.deployment_metrics_port}",
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(spec)}",
        "--model-control-mode=explicit",
    ]


def launch(spec: DeploySpec, repository: Path) -> ServerLaunch:
    release = validation.release_of(spec)
    on = runner(spec)
    preflight(spec, on, "promote")
    setup = tuple(tuple(command) for command in wheel_prefix(spec))
    if on.name == "docker":
        wanted = gpus(spec)
        return ServerLaunch(
            runner="docker", argv=tuple(server_argv(spec, repository, NGC_TRITONSERVER)), setup=setup,
            image=resolve_image(spec, release.container_image), gpu_count=wanted.count,
            gpu_device_ids=wanted.device_ids, engines_root=spec.engines_root,
            engines_volume=os.environ.get(ENGINES_VOLUME_ENV, ""))
    tritonserver = os.environ.get(TRITONSERVER_ENV) or NGC_TRITONSERVER
    return ServerLaunch(runner="local", argv=tuple(server_argv(spec, repository, tritonserver)), setup=setup,
                        workdir=str(repository))
