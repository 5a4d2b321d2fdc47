"""Stop a deployment on purpose: its supervisor and server end, no process is left, and its
engines' leases are released (so retention may remove them).

    stop_deployment

Its versions stay on the engines volume: the next deploy_llm promotion, or a rollback, starts
the deployment again.
"""

from __future__ import annotations

from airflow.sdk import dag, task
from llm_deploy.airflow.assets import DEPLOYMENTS
from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.task_policy import RETRIES, placement
from llm_deploy.airflow.tasks import DEPLOYMENT_PARAMS, announce_deployment


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
    @task(outlets=[DEPLOYMENTS], **placement("stop_deployment"))
    def stop_deployment() -> dict:
        from llm_deploy.airflow.tasks import deployment_spec, run_step

        return announce_deployment(run_step("stop_deployment", spec=deployment_spec()))

    stop_deployment()


stop_llm_deployment()
