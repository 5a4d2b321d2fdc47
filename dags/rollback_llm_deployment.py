"""Roll a deployment back: its server serves an earlier kept version again, without downtime.

    find_deployment → rollback (the previous version, or ``to_version``), on the deployment's host

The same switch as a promotion: the kept version's models are loaded next to the live ones, the
ensemble is routed to them, and the live ones are unloaded once their requests are done. A
deployment that is stopped is started on that version. Its record on the engines volume
(``deployments/<name>/deployment.json``) keeps the history.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from llm_deploy.airflow.assets import DEPLOYMENTS
from llm_deploy.airflow.params import deploy_params
from llm_deploy.airflow.task_policy import RETRIES, placement
from llm_deploy.airflow.tasks import DEPLOYMENT_PARAMS, ON_HOST, announce_deployment, locate_deployment

TO_VERSION = Param(
    None,
    type=["integer", "null"],
    minimum=1,
    title="to_version",
    description="The version to serve again; empty = the one that was live before the current one.",
    section="Deployment",
)


@dag(
    dag_id="rollback_llm_deployment",
    schedule=None,
    params={**{k: v for k, v in deploy_params().items() if k in DEPLOYMENT_PARAMS}, "to_version": TO_VERSION},
    default_args=RETRIES,
    max_active_runs=1,
    tags=["llm", "triton", "deployment"],
    doc_md=__doc__,
)
def rollback_llm_deployment():
    # Any worker reads the record on the shared volume; rollback then runs where its server does
    # (its one mapped record only routes it: the step reads the record again, under its lock).
    @task
    def find_deployment() -> list[dict]:
        return locate_deployment()

    @task(outlets=[DEPLOYMENTS], retries=0, map_index_template=ON_HOST,
          **placement("rollback", server_from="find_deployment"))
    def rollback(deployment: dict) -> dict:
        from airflow.sdk import get_current_context

        from llm_deploy.airflow.tasks import deployment_spec, run_step

        context = get_current_context()
        return announce_deployment(run_step("rollback", context["params"]["to_version"], spec=deployment_spec(context)))

    rollback.expand(deployment=find_deployment())


rollback_llm_deployment()
