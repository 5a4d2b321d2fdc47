"""Stop a deployment on purpose: its supervisor and server end, no process is left, and its
engines' leases are released (so retention may remove them).

    find_deployment → stop_deployment, on the deployment's host

Its versions stay on the engines volume: the next deploy_llm promotion, or a rollback, starts
the deployment again.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from llm_deploy.airflow.assets import DEPLOYMENTS
from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.task_policy import RETRIES, placement
from llm_deploy.airflow.tasks import DEPLOYMENT_PARAMS, ON_HOST, announce_deployment, locate_deployment


@dag(
    dag_id="stop_llm_deployment",
    schedule=None,
    params={k: v for k, v in deploy_params().items() if k in DEPLOYMENT_PARAMS},
    default_args=RETRIES,
    max_active_runs=1,
    tags=["llm", "triton", "deployment"],
    doc_md=__doc__,
)
def stop_llm_deployment():
    # Any worker reads the record on the shared volume; the stop then runs where the server does
    # (its one mapped record only routes it: the step reads the record again, under its lock).
    @task
    def find_deployment() -> list[dict]:
        return locate_deployment()

    @task(outlets=[DEPLOYMENTS], map_index_template=ON_HOST,
          **placement("stop_deployment", server_from="find_deployment"))
    def stop_deployment(deployment: dict) -> dict:
        from llm_deploy.airflow.tasks import deployment_spec, run_step

        return announce_deployment(run_step("stop_deployment", spec=deployment_spec()))

    stop_deployment.expand(deployment=find_deployment())


stop_llm_deployment()
