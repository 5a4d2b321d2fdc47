"""Where a step's command runs: ``local`` (a subprocess of the worker), ``docker`` (a container)
or ``kubernetes`` (a pod).

One interface, three runners. A step describes its command as data (``StepCommand``: argv, env,
secrets, volume paths, GPUs, limits); ``runner_for(spec)`` picks the runner the run's ``runner``
param names; ``runner.run(command)`` runs it to completion and ``runner.start``/``stop`` manage a
long-running one (the server). Whole Python steps run on either as ``python -m llm_deploy.cli
<step>`` (``llm_deploy.steps.through_runner``).

Importing this package is cheap: the docker and kubernetes clients and the Airflow providers load
only when used.
"""

from __future__ import annotations

from llm_deploy.runners.command import (
    CommandFailed,
    CommandResult,
    CommandTimedOut,
    GpuRequest,
    Mount,
    Runner,
    Service,
    StepCommand,
    VolumePath,
    sequence_argv,
)
from llm_deploy.runners.docker_runner import DockerRunner
from llm_deploy.runners.kubernetes_runner import KubernetesRunner
from llm_deploy.runners.local_runner import LocalRunner
from llm_deploy.spec import DeploySpec

__all__ = [
    "CommandFailed",
    "CommandResult",
    "CommandTimedOut",
    "DockerRunner",
    "GpuRequest",
    "KubernetesRunner",
    "LocalRunner",
    "Mount",
    "Runner",
    "Service",
    "StepCommand",
    "VolumePath",
    "runner_for",
    "sequence_argv",
    "service_runner",
]


def runner_for(spec: DeploySpec, *, default_image: str = "") -> LocalRunner | DockerRunner | KubernetesRunner:
    """The runner the spec's ``runner`` param names, set up for its image (the ``docker_image``
    param, else the backend's ``default_image``) and volume."""
    if spec.runner == "docker":
        return DockerRunner.for_spec(spec, default_image)
    if spec.runner == "kubernetes":
        return KubernetesRunner.for_spec(spec, default_image)
    return LocalRunner()


def service_runner(record: Service | dict) -> LocalRunner | DockerRunner | KubernetesRunner:
    """The runner that can stop a service started by ``runner.start`` (for stop_server)."""
    runner = record.runner if isinstance(record, Service) else record["runner"]
    if runner == "docker":
        # Stopping needs no image or volume, only the daemon.
        return DockerRunner("", engines_root="/")
    if runner == "kubernetes":
        # Only the API server: the record names the pod, the Service and their namespace.
        return KubernetesRunner("", engines_root="/")
    return LocalRunner()
