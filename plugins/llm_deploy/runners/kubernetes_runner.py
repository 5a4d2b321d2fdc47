"""The ``kubernetes`` runner: a step's command in a pod, through KubernetesPodOperator.

The twin of the docker runner (read its docstring for why an operator is executed in place
rather than placed in the DAG): each one-shot command becomes one ``KubernetesPodOperator``
(apache-airflow-providers-cncf-kubernetes) that the running task executes with
``operator.execute(context)``. The provider creates the pod, streams its log into the task log,
waits for it and deletes it; a progress callback keeps the lines, because Python steps report
their outcome as their last line.

Every pod gets what the tutorial's ``docker run`` gives a container, in Kubernetes' words:

- GPUs as the device plugin's ``nvidia.com/gpu`` limit (world_size of them), only for steps that
  ask for GPUs. The plugin picks the devices: explicit ids cannot be honoured on a cluster.
- the engines volume as a PersistentVolumeClaim (``LLM_DEPLOY_ENGINES_PVC``; ReadWriteMany when
  pods and the worker run on several nodes) mounted at engines_root read-only, plus the one
  directory a step publishes into, writable, as a ``subPath`` mount of the same claim. The claim's
  root is engines_root: the worker mounts the same claim at the same path.
- ``/dev/shm`` as a memory-backed ``emptyDir`` of the step's shm_size (``--shm-size``).
- secrets as ``secretKeyRef`` env entries of a Kubernetes Secret (``LLM_DEPLOY_HF_SECRET``, one
  key per variable, e.g. ``HF_TOKEN``): the value the worker holds never enters the pod spec,
  which anyone who may list pods can read. The worker's value only says that the step wants it.

Not expressible in a pod spec: ``--ulimit`` (memlock, stack). Pods inherit the container
runtime's limits; containerd's default unit sets ``LimitMEMLOCK=infinity``. Host networking is
not used either: the server is reached through its Service, by its cluster DNS name.

The server (``start``/``stop``) is one pod built by the same operator's ``build_pod_request_obj``
(so it has every setting above) and created through the provider's hook, plus a ClusterIP Service
selecting exactly that pod by a label unique to the start; ``stop`` deletes both.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from llm_deploy.errors import NonRetryableError
from llm_deploy.runners.command import (
    CommandFailed,
    CommandResult,
    CommandTimedOut,
    Service,
    StepCommand,
    VolumePath,
    parse_size,
)
from llm_deploy.runners.docker_runner import BASE_ENV, resolve_image
from llm_deploy.runners.local_runner import KEPT_LINES, prepare_volume_paths
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

NAMESPACE_ENV = "LLM_DEPLOY_K8S_NAMESPACE"
# The PersistentVolumeClaim that holds engines_root (its root is engines_root).
ENGINES_PVC_ENV = "LLM_DEPLOY_ENGINES_PVC"
# The Secret whose keys are named like the variables they fill (HF_TOKEN).
HF_SECRET_ENV = "LLM_DEPLOY_HF_SECRET"
CONN_ID_ENV = "LLM_DEPLOY_K8S_CONN_ID"
# "uid:gid" the pods run as; unset = the worker's own (files on the shared claim stay the
# worker's, as with the docker runner); empty = the image's default user.
USER_ENV = "LLM_DEPLOY_K8S_USER"
DEFAULT_CONN_ID = "kubernetes_default"
DEFAULT_NAMESPACE = "default"

GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "base"  # KubernetesPodOperator's own name for the command's container
ENGINES_VOLUME = "engines"
SHM_VOLUME = "dshm"
LABEL_STEP = "llm-deploy.io/step"
# Unique per command: the Service selects its pod by it, find_pod finds exactly this one.
LABEL_INSTANCE = "llm-deploy.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Pulling a multi-GB NGC image onto a fresh node takes minutes; the operator's default is 120 s.
STARTUP_TIMEOUT_S = 1800
STOP_GRACE_S = 30  # a server unloading its models may need this long after SIGTERM
SERVICE_LOG_TAIL = 2000
# A pod the kubelet killed at its activeDeadlineSeconds.
DEADLINE_EXCEEDED = "DeadlineExceeded"


class KubernetesRunner:
    name = "kubernetes"
    python = "python3"  # on PATH in the NGC images and in ours

    def __init__(
        self,
        image: str,
        *,
        engines_root: str,
        engines_pvc: str | None = None,
        secret_name: str | None = None,
        namespace: str | None = None,
        kubernetes_conn_id: str | None = None,
        user: str | None = None,
    ) -> None:
        self.image = image
        self.engines_root = engines_root
        self.engines_pvc = engines_pvc if engines_pvc is not None else os.environ.get(ENGINES_PVC_ENV, "")
        self.secret_name = secret_name if secret_name is not None else os.environ.get(HF_SECRET_ENV, "")
        self.namespace = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
        self.kubernetes_conn_id = kubernetes_conn_id or os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID
        self.user = _default_user() if user is None else user

    @classmethod
    def for_spec(cls, spec: DeploySpec, default_image: str = "") -> KubernetesRunner:
        return cls(resolve_image(spec, default_image), engines_root=spec.engines_root)

    # --- what every pod gets ---------------------------------------------------------------------

    def volumes(self, command: StepCommand) -> tuple[list[Any], list[Any]]:
        """(volumes, volume mounts): the engines claim as the step's paths need it, /dev/shm, and
        host directories for the command's other mounts."""
        from kubernetes.client import models as k8s

        volumes = [k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(
            medium="Memory", size_limit=quantity(parse_size(command.shm_size))))]
        mounts = [k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm")]
        engine_mounts = self._engine_mounts(command.volume_paths)
        if engine_mounts:
            volumes.append(k8s.V1Volume(name=ENGINES_VOLUME, persistent_volume_claim=(
                k8s.V1PersistentVolumeClaimVolumeSource(claim_name=self.engines_pvc))))
            mounts += engine_mounts
        for index, mount in enumerate(command.mounts):
            if mount.type != "bind":
                raise NonRetryableError(f"{command.name}: a {mount.type!r} mount ({mount.source}) is a docker "
                                        "volume; the kubernetes runner mounts host directories only")
            name = f"host-{index}"
            volumes.append(k8s.V1Volume(name=name, host_path=k8s.V1HostPathVolumeSource(path=mount.source)))
            mounts.append(k8s.V1VolumeMount(name=name, mount_path=mount.target, read_only=mount.read_only))
        return volumes, mounts

    def _engine_mounts(self, paths: tuple[VolumePath, ...]) -> list[Any]:
        from kubernetes.client import models as k8s

        if not paths:
            return []
        if not self.engines_pvc:
            raise NonRetryableError(f"the kubernetes runner mounts engines_root {self.engines_root} from a "
                                    f"PersistentVolumeClaim: set {ENGINES_PVC_ENV} to its name")
        root = PurePosixPath(self.engines_root)
        outside = [p.path for p in paths if not PurePosixPath(p.path).is_relative_to(root)]
        if outside:
            raise NonRetryableError(f"{outside[0]} is not on the engines volume {root}")
        writable: dict[str, bool] = {}
        for path in paths:  # a path given both ways is writable
            writable[path.path] = writable.get(path.path, False) or path.writable
        # The claim's root at engines_root, and each writable directory as a subPath of the same
        # claim at its own path (runtimes mount parents before children, as docker does); the
        # kubelet creates a missing subPath directory, prepare_volume_paths already has.
        return [k8s.V1VolumeMount(name=ENGINES_VOLUME, mount_path=path, read_only=not rw,
                                  sub_path=_sub_path(PurePosixPath(path).relative_to(root)))
                for path, rw in sorted(writable.items(), key=lambda item: len(item[0]))]

    def resources(self, command: StepCommand) -> Any:
        from kubernetes.client import models as k8s

        gpus = command.gpus
        if not gpus.wanted:
            return None  # no GPU asked: no limit, so the step schedules on nodes without GPUs
        if gpus.device_ids:
            log.warning("%s: GPUs %s named; on Kubernetes the device plugin picks %d of them",
                        command.name, ",".join(gpus.device_ids), len(gpus.device_ids))
        count = len(gpus.device_ids) or gpus.count
        return k8s.V1ResourceRequirements(limits={GPU_RESOURCE: str(count)})

    def secrets(self, command: StepCommand) -> list[Any]:
        from airflow.providers.cncf.kubernetes.secret import Secret

        if command.secret_env and not self.secret_name:
            raise NonRetryableError(
                f"{command.name} needs {', '.join(sorted(command.secret_env))}: the kubernetes runner takes "
                f"secrets from a Kubernetes Secret, never the pod spec; set {HF_SECRET_ENV} to its name")
        return [Secret("env", name, self.secret_name, name) for name in sorted(command.secret_env)]

    def operator(self, command: StepCommand, *, instance: str | None = None, callbacks: Any = None):
        """The KubernetesPodOperator for ``command``: its pod is the one ``run`` and ``start`` create."""
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes.client import models as k8s

        instance = instance or uuid.uuid4().hex[:8]
        volumes, volume_mounts = self.volumes(command)
        env = {**BASE_ENV, **command.env}
        return KubernetesPodOperator(
            task_id=re.sub(r"[^\w.-]", "_", f"{command.name}_pod"),
            kubernetes_conn_id=self.kubernetes_conn_id,
            namespace=self.namespace,
            name=pod_name(command.name, instance),
            random_name_suffix=False,  # the name already carries the instance
            image=command.image or self.image,
            cmds=[command.argv[0]],
            arguments=list(command.argv[1:]),
            env_vars=[k8s.V1EnvVar(name=key, value=value) for key, value in env.items()],
            secrets=self.secrets(command),
            volumes=volumes,
            volume_mounts=volume_mounts,
            container_resources=self.resources(command),
            ports=[k8s.V1ContainerPort(name=name, container_port=port) for name, port in command.ports.items()]
            or None,
            labels={LABEL_MANAGED_BY: "llm-deploy", LABEL_STEP: label_value(command.name),
                    LABEL_INSTANCE: instance},
            security_context=self._security_context(),
            active_deadline_seconds=int(command.timeout_s) if command.timeout_s else None,
            startup_timeout_seconds=STARTUP_TIMEOUT_S,
            # A nested operator has no pod identity of its own to persist in the task's state:
            # a retried task starts its commands afresh.
            durable=False,
            get_logs=True,
            on_finish_action="delete_pod",  # removed on success and failure alike, like auto_remove
            do_xcom_push=False,
            callbacks=callbacks,
        )

    def _security_context(self) -> Any:
        from kubernetes.client import models as k8s

        if not self.user:
            return None
        uid, _, gid = self.user.partition(":")
        return k8s.V1PodSecurityContext(run_as_user=int(uid), run_as_group=int(gid) if gid else None)

    # --- one-shot commands -------------------------------------------------------------------------

    def run(self, command: StepCommand) -> CommandResult:
        from airflow.providers.common.compat.sdk import AirflowException

        context = _current_context()
        if context is None:
            raise NonRetryableError(f"{command.name}: the kubernetes runner runs commands from inside an Airflow task")
        prepare_volume_paths(command.volume_paths)
        output = _kept_lines()
        operator = self.operator(command, callbacks=output)
        log.info("running in a pod of %s: %s", operator.image, command.describe())
        started = time.monotonic()
        try:
            operator.execute(context)
        except AirflowException:
            status = operator.remote_pod.status if operator.remote_pod is not None else None
            if status is not None and status.reason == DEADLINE_EXCEEDED:
                raise CommandTimedOut(command, None, output.lines,
                                      why=f"ran past its {command.timeout_s}s timeout and was killed") from None
            raise CommandFailed(command, exit_code(status), output.lines) from None
        seconds = time.monotonic() - started
        log.info("%s finished in %.1fs", command.name, seconds)
        return CommandResult(0, output.lines, seconds)

    # --- background services (the server) ---------------------------------------------------------

    def core_v1(self):
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id).core_v1_client

    def service_object(self, name: str, instance: str, ports: Mapping[str, int]) -> Any:
        """A ClusterIP Service in front of exactly the pod labelled ``instance``."""
        from kubernetes.client import models as k8s

        return k8s.V1Service(
            api_version="v1", kind="Service",
            metadata=k8s.V1ObjectMeta(name=name, namespace=self.namespace,
                                      labels={LABEL_MANAGED_BY: "llm-deploy", LABEL_INSTANCE: instance}),
            spec=k8s.V1ServiceSpec(
                type="ClusterIP", selector={LABEL_INSTANCE: instance},
                ports=[k8s.V1ServicePort(name=port_name, port=port, target_port=port_name, protocol="TCP")
                       for port_name, port in ports.items()]),
        )

    def start(self, command: StepCommand, log_path: str | Path) -> Service:
        """Create the server's pod and its Service; clients reach it at the Service's DNS name."""
        if not command.ports:
            raise NonRetryableError(f"{command.name}: a service on Kubernetes needs the ports it listens on")
        prepare_volume_paths(command.volume_paths)
        instance = uuid.uuid4().hex[:8]
        operator = self.operator(command, instance=instance)
        pod = operator.build_pod_request_obj(_current_context())
        service = self.service_object(pod.metadata.name, instance, command.ports)
        client = self.core_v1()
        client.create_namespaced_pod(namespace=self.namespace, body=pod)
        try:
            client.create_namespaced_service(namespace=self.namespace, body=service)
        except BaseException:
            client.delete_namespaced_pod(name=pod.metadata.name, namespace=self.namespace, grace_period_seconds=0)
            raise
        address = f"{pod.metadata.name}.{self.namespace}.svc"
        log.info("started pod %s and Service %s from %s: %s", pod.metadata.name, address,
                 pod.spec.containers[0].image, command.describe())
        return Service(runner=self.name, name=command.name, pod_name=pod.metadata.name,
                       namespace=self.namespace, address=address, log_path=str(log_path))

    def alive(self, record: Service | Mapping[str, Any]) -> bool:
        from kubernetes.client.exceptions import ApiException

        record = Service.of(record)
        try:
            pod = self.core_v1().read_namespaced_pod(name=record.pod_name, namespace=record.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        # Pending counts: a pod waiting for its image or its GPUs is on its way up.
        return pod.status is not None and pod.status.phase in ("Pending", "Running")

    def logs(self, record: Service | Mapping[str, Any], tail: int = SERVICE_LOG_TAIL) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        record = Service.of(record)
        try:
            text = self.core_v1().read_namespaced_pod_log(name=record.pod_name, namespace=record.namespace,
                                                          container=CONTAINER, tail_lines=tail)
        except ApiException as exc:
            if exc.status in (400, 404):  # gone, or its container has not started yet
                return []
            raise
        return (text or "").splitlines()

    def stop(self, record: Service | Mapping[str, Any], *, grace_s: float | None = None) -> bool:
        """Delete the pod (SIGTERM, SIGKILL after ``grace_s``) and its Service, keeping the pod's
        output in the record's log_path; True if the pod was still running."""
        from kubernetes.client.exceptions import ApiException

        record = Service.of(record)
        client = self.core_v1()
        was_running = self.alive(record)
        if record.log_path:
            Path(record.log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(record.log_path, "a") as out:
                out.writelines(line + "\n" for line in self.logs(record))
        grace = STOP_GRACE_S if grace_s is None else int(grace_s)
        for delete in (client.delete_namespaced_pod, client.delete_namespaced_service):
            try:
                delete(name=record.pod_name, namespace=record.namespace, grace_period_seconds=grace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                log.info("%s %s is gone already", delete.__name__.removeprefix("delete_namespaced_"),
                         record.pod_name)
        log.info("%s (pod and Service %s) %s", record.name, record.pod_name,
                 "stopped" if was_running else "had already exited")
        return was_running


def _kept_lines():
    """A KubernetesPodOperator callback that keeps the command container's last output lines as
    the provider follows its log (its other hooks are the base class's, doing nothing)."""
    from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback

    class KeptLines(KubernetesPodOperatorCallback):
        def __init__(self) -> None:
            self.kept: deque[str] = deque(maxlen=KEPT_LINES)

        def progress_callback(self, *, line: str, container_name: str, **_: Any) -> None:
            if container_name == CONTAINER:
                self.kept.extend(line.splitlines())

        @property
        def lines(self) -> list[str]:
            return list(self.kept)

    return KeptLines()


def exit_code(status: Any) -> int | None:
    """The command container's exit code in a pod status, if it terminated."""
    for container in (status.container_statuses or []) if status is not None else []:
        if container.name == CONTAINER and container.state and container.state.terminated:
            return container.state.terminated.exit_code
    return None


def pod_name(step: str, instance: str) -> str:
    """A DNS-1035 label (Service names need one): lowercase, '-', at most 63 characters."""
    stem = re.sub(r"[^a-z0-9-]+", "-", step.lower()).strip("-")[: 63 - len("llm-deploy--") - len(instance)]
    return f"llm-deploy-{stem}-{instance}" if stem else f"llm-deploy-{instance}"


def _sub_path(relative: PurePosixPath) -> str | None:
    return None if relative == PurePosixPath(".") else str(relative)


def label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity: 2147483648 -> '2Gi'."""
    for suffix, unit in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _default_user() -> str:
    if USER_ENV in os.environ:
        return os.environ[USER_ENV]
    return f"{os.getuid()}:{os.getgid()}"


def _current_context() -> Any:
    """The running task's context, None outside one: the operator labels its pods with the
    task's ids and pushes their names to its XCom."""
    from airflow.sdk import get_current_context

    try:
        return get_current_context()
    except Exception:  # noqa: BLE001 - outside a task (tests, the CLI)
        return None
