"""The kubernetes runner's pods and Services, as KubernetesPodOperator itself builds them.

No Kubernetes API server can run here, so nothing is created on a cluster: the pods come from the
operator's own ``build_pod_request_obj`` (serialized as the kubernetes client sends them), are
read field by field, and are validated against Kubernetes' JSON schemas (kubernetes-validate,
generated from each release's OpenAPI spec). start/stop talk to a recording stand-in for the
CoreV1Api client, the one part a cluster would answer.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from llm_deploy.backends.trtllm.execution import runner as trtllm_runner
from llm_deploy.backends.trtllm.serve import launch_command
from llm_deploy.errors import NonRetryableError
from llm_deploy.runners import (
    CommandFailed, CommandTimedOut, GpuRequest, KubernetesRunner, Service, StepCommand, VolumePath, runner_for,
    service_runner,
)
from llm_deploy.runners.kubernetes_runner import HF_SECRET_ENV, LABEL_INSTANCE, exit_code
from llm_deploy.spec import DeploySpec

TOKEN = "hf_canary_" + "7" * 24
IMAGE = "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"
# The Kubernetes releases the objects must be valid for: an old one still common, and the newest.
SCHEMA_VERSIONS = ("1.28", kubernetes_validate.latest_version())
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@pytest.fixture(autouse=True)
def kubeconfig(tmp_path, monkeypatch):
    """A kube config naming an API server nobody listens on: the operator reads it to label its
    pods (in cluster or not) and never connects while building them."""
    config = tmp_path / "kubeconfig.json"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "nowhere", "user": {"token": "not-a-token"}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nowhere"}}],
    }))
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(config)}}))


@pytest.fixture
def runner() -> KubernetesRunner:
    return KubernetesRunner(IMAGE, engines_root="/engines", engines_pvc="llm-engines", secret_name="hf-token",
                            namespace="llm", user="1000:1000")


def pod_of(runner: KubernetesRunner, command: StepCommand) -> dict:
    """The pod the operator would create for ``command``, as JSON the API server receives."""
    return ApiClient().sanitize_for_serialization(runner.operator(command).build_pod_request_obj(None))


def container(pod: dict) -> dict:
    (only,) = pod["spec"]["containers"]
    return only


def build_engine_step(**settings) -> StepCommand:
    paths = (VolumePath("/engines"), VolumePath("/engines/engines/llama", writable=True))
    return StepCommand(**{
        "name": "build_engine", "argv": ("trtllm-build", "--checkpoint_dir", "/engines/ckpt"),
        "env": {"PYTHONUNBUFFERED": "1"}, "secret_env": {"HF_TOKEN": TOKEN}, "volume_paths": paths, **settings})


def test_a_gpu_step_is_a_pod_with_world_size_gpus_the_engines_claim_shm_and_the_token_by_reference(runner):
    pod = pod_of(runner, build_engine_step(gpus=GpuRequest.for_world_size(2), timeout_s=3600))
    base = container(pod)

    assert base["image"] == IMAGE
    assert [*base["command"], *base["args"]] == ["trtllm-build", "--checkpoint_dir", "/engines/ckpt"]
    assert base["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert volumes["engines"]["persistentVolumeClaim"] == {"claimName": "llm-engines"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}  # --shm-size=2g
    # The whole claim read-only at engines_root; only the published directory writable, as a subPath.
    assert [(m["mountPath"], m.get("subPath"), m["readOnly"]) for m in base["volumeMounts"] if m["name"] == "engines"] \
        == [("/engines", None, True), ("/engines/engines/llama", "engines/llama", False)]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in base["volumeMounts"]
    env = {entry["name"]: entry for entry in base["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}
    assert env["PYTHONUNBUFFERED"]["value"] == "1" and env["HOME"]["value"] == "/tmp"
    assert TOKEN not in json.dumps(pod), "the token's value is nowhere in the pod spec"
    assert pod["spec"]["activeDeadlineSeconds"] == 3600  # the kubelet kills a step past its timeout
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000}
    assert pod["metadata"]["namespace"] == "llm"
    assert DNS_1035.match(pod["metadata"]["name"]) and pod["metadata"]["name"].startswith("llm-deploy-build-engine-")


def test_a_cpu_step_asks_for_no_gpu_so_it_schedules_on_any_node(runner):
    base = container(pod_of(runner, build_engine_step()))
    assert "resources" not in base


def test_named_gpu_ids_become_a_count_the_device_plugin_fills(runner):
    base = container(pod_of(runner, build_engine_step(gpus=GpuRequest(device_ids=("2", "3")))))
    assert base["resources"] == {"limits": {"nvidia.com/gpu": "2"}}


def test_a_secret_without_a_kubernetes_secret_to_read_it_from_is_refused(runner):
    runner.secret_name = ""
    with pytest.raises(NonRetryableError, match=f"never the pod spec; set {HF_SECRET_ENV}"):
        runner.operator(build_engine_step())


def test_the_engines_volume_needs_its_claim_and_paths_on_it(runner):
    with pytest.raises(NonRetryableError, match="/opt/elsewhere is not on the engines volume /engines"):
        runner.operator(build_engine_step(volume_paths=(VolumePath("/opt/elsewhere"),)))
    runner.engines_pvc = ""
    with pytest.raises(NonRetryableError, match="set LLM_DEPLOY_ENGINES_PVC"):
        runner.operator(build_engine_step())


def test_the_spec_picks_the_kubernetes_runner_with_the_releases_image():
    spec = DeploySpec.from_params({"engines_root": "/engines", "backend": "trtllm", "trtllm_release": "1.2.1",
                                   "runner": "kubernetes", "world_size": 2})
    chosen = trtllm_runner(spec)
    assert isinstance(chosen, KubernetesRunner) and chosen.image == IMAGE  # the release table's NGC image
    assert runner_for(spec.model_copy(update={"docker_image": "registry.local/trtllm:mine"})).image == \
        "registry.local/trtllm:mine"
    assert isinstance(service_runner({"runner": "kubernetes"}), KubernetesRunner)


class RecordingCoreV1:
    """The CoreV1Api calls start/alive/logs/stop make, answered as a cluster would."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.pods: dict[str, object] = {}
        self.services: dict[str, object] = {}

    def create_namespaced_pod(self, namespace, body):
        self.calls.append(("create pod", namespace, body.metadata.name))
        self.pods[body.metadata.name] = body

    def create_namespaced_service(self, namespace, body):
        self.calls.append(("create service", namespace, body.metadata.name))
        self.services[body.metadata.name] = body

    def read_namespaced_pod(self, name, namespace):
        if name not in self.pods:
            raise ApiException(status=404)
        return SimpleNamespace(status=SimpleNamespace(phase="Running"))

    def read_namespaced_pod_log(self, name, namespace, container, tail_lines):
        if name not in self.pods:
            raise ApiException(status=404)
        return "I1203 server started\nI1203 models ready\n"

    def delete_namespaced_pod(self, name, namespace, grace_period_seconds):
        self.calls.append(("delete pod", namespace, name, grace_period_seconds))
        if self.pods.pop(name, None) is None:
            raise ApiException(status=404)

    def delete_namespaced_service(self, name, namespace, grace_period_seconds):
        self.calls.append(("delete service", namespace, name))
        if self.services.pop(name, None) is None:
            raise ApiException(status=404)


@pytest.fixture
def cluster(runner, monkeypatch) -> RecordingCoreV1:
    core_v1 = RecordingCoreV1()
    monkeypatch.setattr(KubernetesRunner, "core_v1", lambda self: core_v1)
    return core_v1


def trtllm_server_command(engines_root: str) -> StepCommand:
    """trtllm's own start_server command, for a spec with its own ports."""
    spec = DeploySpec.from_params({"engines_root": engines_root, "backend": "trtllm", "trtllm_release": "1.2.1",
                                   "runner": "kubernetes", "world_size": 2,
                                   "http_port": 8100, "grpc_port": 8101, "metrics_port": 8102})
    return launch_command(spec, f"{engines_root}/repos/llama")


@pytest.fixture
def server_command() -> StepCommand:
    return trtllm_server_command("/engines")


@pytest.fixture
def started_here(runner, tmp_path) -> StepCommand:
    """The server command on an engines volume that exists here: start checks the paths, as the
    worker mounts the claim at engines_root too."""
    runner.engines_root = str(tmp_path)
    return trtllm_server_command(str(tmp_path))


def test_the_server_is_a_pod_and_a_service_in_front_of_exactly_that_pod(runner, cluster, started_here, tmp_path):
    record = runner.start(started_here, tmp_path / "tritonserver.log")

    pod, service = cluster.pods[record.pod_name], cluster.services[record.pod_name]
    assert [call[0] for call in cluster.calls] == ["create pod", "create service"]
    assert record.address == f"{record.pod_name}.llm.svc"  # where start_server's clients go
    assert service.spec.type == "ClusterIP"
    assert service.spec.selector == {LABEL_INSTANCE: pod.metadata.labels[LABEL_INSTANCE]}
    assert [(p.name, p.port, p.target_port) for p in service.spec.ports] == [
        ("http", 8100, "http"), ("grpc", 8101, "grpc"), ("metrics", 8102, "metrics")]
    (base,) = pod.spec.containers
    assert [(p.name, p.container_port) for p in base.ports] == [("http", 8100), ("grpc", 8101), ("metrics", 8102)]
    assert base.resources.limits == {"nvidia.com/gpu": "2"}  # world_size
    assert pod.spec.host_network is False  # reached through the Service, not the node's ports
    assert base.image == IMAGE
    assert record.to_xcom()["runner"] == "kubernetes"


def test_a_second_start_gets_its_own_pod_and_service(runner, cluster, started_here, tmp_path):
    first = runner.start(started_here, tmp_path / "a.log")
    second = runner.start(started_here, tmp_path / "b.log")
    assert first.pod_name != second.pod_name
    assert cluster.services[first.pod_name].spec.selector != cluster.services[second.pod_name].spec.selector


def test_stop_deletes_the_pod_and_its_service_and_keeps_the_servers_log(runner, cluster, started_here, tmp_path):
    log_path = tmp_path / "run" / "tritonserver.log"
    record = Service.from_xcom(runner.start(started_here, log_path).to_xcom())  # as stop_server gets it

    assert service_runner(record.to_xcom()).stop(record) is True
    assert cluster.calls[2:] == [("delete pod", "llm", record.pod_name, 30), ("delete service", "llm", record.pod_name)]
    assert cluster.pods == {} and cluster.services == {}
    assert log_path.read_text() == "I1203 server started\nI1203 models ready\n"
    assert runner.alive(record) is False
    assert runner.stop(record, grace_s=0) is False, "stopping twice finds nothing and says so"


def test_a_service_needs_its_ports(runner, cluster, tmp_path):
    with pytest.raises(NonRetryableError, match="needs the ports it listens on"):
        runner.start(StepCommand(name="start_server", argv=("tritonserver",)), tmp_path / "log")


def test_run_needs_the_task_it_runs_in(runner):
    with pytest.raises(NonRetryableError, match="from inside an Airflow task"):
        runner.run(build_engine_step())


def test_the_output_the_operator_follows_is_kept_for_the_steps_outcome(runner):
    from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback

    from llm_deploy.runners.kubernetes_runner import _kept_lines

    kept = _kept_lines()
    operator = runner.operator(build_engine_step(), callbacks=kept)
    assert operator.callbacks == [kept] and isinstance(kept, KubernetesPodOperatorCallback)
    for callback in operator.callbacks:  # as PodManager calls it for each line of the log
        callback.progress_callback(line="+ trtllm-build\nbuilding", client=None, mode="sync",
                                   container_name="base", timestamp=None, pod=None)
        callback.progress_callback(line="sidecar noise", client=None, mode="sync",
                                   container_name="istio-proxy", timestamp=None, pod=None)
    assert kept.lines == ["+ trtllm-build", "building"]


def test_a_failed_pods_exit_code_is_read_from_its_container_status():
    from kubernetes.client import models as k8s

    status = k8s.V1PodStatus(phase="Failed", container_statuses=[k8s.V1ContainerStatus(
        name="base", image=IMAGE, image_id="", ready=False, restart_count=0,
        state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=3)))])
    assert exit_code(status) == 3
    assert exit_code(k8s.V1PodStatus(phase="Pending")) is None


# --- the Kubernetes OpenAPI schema ------------------------------------------------------------------


def built_objects(runner: KubernetesRunner, server: StepCommand) -> dict[str, dict]:
    operator = runner.operator(server, instance="abcd1234")
    server_pod = operator.build_pod_request_obj(None)
    service = runner.service_object(server_pod.metadata.name, "abcd1234", server.ports)
    serialize = ApiClient().sanitize_for_serialization
    return {
        "gpu step pod": pod_of(runner, build_engine_step(gpus=GpuRequest.for_world_size(4), timeout_s=60)),
        "cpu step pod": pod_of(runner, build_engine_step()),
        "server pod": serialize(server_pod),
        "server service": serialize(service),
    }


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_is_valid_for_kubernetes(runner, server_command, version):
    for name, body in built_objects(runner, server_command).items():
        # strict: an unknown field (a typo, a docker-only setting) fails as well as a wrong type.
        assert kubernetes_validate.validate(body, version, strict=True), name
        assert DNS_1035.match(body["metadata"]["name"]), f"{name}: a Service's name must be a DNS-1035 label"


@pytest.mark.parametrize(("break_it", "complaint"), [
    (lambda pod: container(pod).update(shmSize="2g"), "Additional properties are not allowed"),
    (lambda pod: container(pod)["volumeMounts"][0].update(readOnly="yes"), "is not of type 'boolean'"),
    (lambda pod: container(pod)["ports"][0].update(containerPort="http"), "is not of type 'integer'"),
    (lambda pod: pod["spec"].pop("containers"), "'containers' is a required property"),
])
def test_the_same_validator_rejects_a_broken_pod(runner, server_command, break_it, complaint):
    pod = built_objects(runner, server_command)["server pod"]
    break_it(pod)
    with pytest.raises(kubernetes_validate.ValidationError, match=complaint):
        kubernetes_validate.validate(pod, SCHEMA_VERSIONS[-1], strict=True)


def test_what_is_not_built_for_kubernetes_yet_is_refused_by_name():
    from llm_deploy.backends.registry import backend_for

    trtllm = DeploySpec.from_params({"engines_root": "/engines", "backend": "trtllm", "trtllm_release": "1.2.1",
                                     "runner": "kubernetes"})
    assert "runner='kubernetes'" in backend_for(trtllm).deployment_refusal(trtllm)  # no long-running Deployment yet
    twin = DeploySpec.from_params({"engines_root": "/engines", "runner": "kubernetes"})
    assert "runner='kubernetes'" in backend_for(twin).deployment_refusal(twin)
    assert backend_for(twin).runs_python_steps_in_runner(twin), "the twin's steps run whole in pods of its image"


LAST_LINE = "[TensorRT-LLM] Engine written to /engines/engines/llama"


def finished_pod(phase: str, *, reason: str | None = None, code: int | None = None):
    from kubernetes.client import models as k8s

    state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code)) if code is not None else None
    return k8s.V1Pod(status=k8s.V1PodStatus(phase=phase, reason=reason, container_statuses=[k8s.V1ContainerStatus(
        name="base", image=IMAGE, image_id="", ready=False, restart_count=0, state=state)]))


@pytest.mark.parametrize(("pod", "raised", "message"), [
    (finished_pod("Succeeded", code=0), None, ""),
    (finished_pod("Failed", code=3), CommandFailed, "exited with code 3"),
    (finished_pod("Failed", reason="DeadlineExceeded"), CommandTimedOut, "ran past its 60s timeout and was killed"),
])
def test_how_the_pod_ended_is_how_the_command_fails(runner, monkeypatch, tmp_path, pod, raised, message):
    """What the operator's execute would meet on a cluster, stood in for: it follows the log
    (each line through the callbacks), then fails on the pod's end, as its cleanup does."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.common.compat.sdk import AirflowException

    from llm_deploy.runners import kubernetes_runner

    def execute(operator, context):
        for callback in operator.callbacks:
            callback.progress_callback(line=LAST_LINE, client=None, mode="sync",
                                       container_name="base", timestamp=None, pod=None)
        operator.remote_pod = pod
        if pod.status.phase != "Succeeded":
            raise AirflowException(f"Pod {operator.name} returned a failure.")

    monkeypatch.setattr(KubernetesPodOperator, "execute", execute)
    monkeypatch.setattr(kubernetes_runner, "_current_context", lambda: {"ti": None})
    runner.engines_root = str(tmp_path)
    command = StepCommand(name="build_engine", argv=("trtllm-build",), timeout_s=60,
                          volume_paths=(VolumePath(str(tmp_path)),))
    if raised is None:
        assert runner.run(command).lines == [LAST_LINE], "the output comes back (a Python step reports its outcome last)"
        return
    with pytest.raises(raised, match=message) as failure:
        runner.run(command)
    assert failure.value.lines == [LAST_LINE], "the command's last lines travel with its failure"


def test_importing_the_runners_loads_neither_the_provider_nor_the_client():
    import subprocess
    import sys

    probe = ("import sys, llm_deploy.runners; "
             "print([m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kubernetes_asyncio') "
             "or m.startswith('airflow.providers.cncf')])")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
