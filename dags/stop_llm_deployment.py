"""Stop a deployment on purpose: its supervisor and server end, no process is left, and its
engines' leases are released (so retention may remove them).

    find_deployment → stop_deployment, on the deployment's host

Its versions stay on the engines volume: the next deploy_llm promotion, or a rollback, starts
the deployment again.

A host that is gone for good (its machine retired, its disk lost) took its server with it, and
no worker will ever take tasks from its queue again: name it in ``host_gone`` and the run lets
go of the deployment instead (``forget_host``, on any worker: its record marked stopped, its
leases released), so that the next promotion starts it elsewhere.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from llm_deploy.airflow.assets import DEPLOYMENTS
from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.task_policy import RETRIES, placement
from llm_deploy.airflow.tasks import DEPLOYMENT_PARAMS, ON_HOST, announce_deployment, locate_deployment

HOST_GONE = "host_gone"


@dag(
    dag_id="stop_llm_deployment",
    schedule=None,
    params={**{k: v for k, v in deploy_params().items() if k in DEPLOYMENT_PARAMS},
            HOST_GONE: Param(None, type=["string", "null"], section="Deployment", description=(
                "Only when the deployment's host is gone for good: its host name, as the "
                "deployment's record and the task logs name it. The run then lets go of the "
                "deployment without reaching its server; leave it empty to stop the server."))},
    default_args=RETRIES,
    max_active_runs=1,
    tags=["llm", "triton", "deployment"],
    doc_md=__doc__,
)
def stop_llm_deployment():
    # Any worker reads the record on the shared volume; the stop then runs where the server does
    # (its one mapped record only routes it: the step reads the record again, under its lock).
    # With host_gone, nothing is there to stop: the stop is mapped over no record (skipped).
    @task
    def find_deployment(params: dict | None = None) -> list[dict]:
        return [] if params.get(HOST_GONE) else locate_deployment()

    @task(outlets=[DEPLOYMENTS], map_index_template=ON_HOST,
          **placement("stop_deployment", server_from="find_deployment"))
    def stop_deployment(deployment: dict) -> dict:
        from llm_deploy.airflow.tasks import deployment_spec, run_step

        return announce_deployment(run_step("stop_deployment", spec=deployment_spec()))

    @task(outlets=[DEPLOYMENTS], **placement("forget_host"))
    def forget_host(params: dict | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from llm_deploy.airflow.tasks import deployment_spec, run_step

        if not params.get(HOST_GONE):
            raise AirflowSkipException("host_gone is empty: the deployment is stopped on its host")
        return announce_deployment(run_step("forget_host", {"host": params[HOST_GONE].strip()},
                                            spec=deployment_spec()))

    stop_deployment.expand(deployment=find_deployment())
    forget_host()


stop_llm_deployment()
