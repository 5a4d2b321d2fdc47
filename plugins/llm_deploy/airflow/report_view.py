"""The report view inside the Airflow UI: an Airflow plugin that serves ``llm_deploy.ui``.

The api-server mounts the pages under ``/llm-deploy`` and the UI lists them in its navigation as
"LLM deployments" (an external view with a ``url_route``, which Airflow 3 renders inside its own
frame, under ``/plugin/llm-deployments``). pyproject.toml registers the plugin through the
``airflow.plugins`` entry point, so every Airflow process of an installation finds it.

Authentication is Airflow's own: a request must carry the UI's session cookie (or an API token),
and its user must be allowed to read DAG runs (the view shows every DAG's runs and what they
built); anonymous requests get 401, others without that right 403. The volume is the
api-server's ``LLM_DEPLOY_ENGINES_ROOT`` (the params' default engines_root), read only.

Every Airflow process loads plugins, task processes included: Airflow's authentication code
is imported only when a request arrives.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from airflow.plugins_manager import AirflowPlugin
from llm_deploy.ui import PREFIX
from llm_deploy.ui.app import create_app

URL_ROUTE = "llm-deployments"


def engines_root() -> Path:
    from llm_deploy.spec import DEFAULT_ENGINES_ROOT

    return Path(os.environ.get("LLM_DEPLOY_ENGINES_ROOT") or DEFAULT_ENGINES_ROOT)


async def may_read_dag_runs(request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(
        HTTPBearer(auto_error=False))) -> None:
    """Airflow's user of this request (401 if none), who must be allowed to read DAG runs (403)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, None, bearer)
    if not get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN, user=user):
        raise HTTPException(403, "reading DAG runs is not allowed for this user: the view shows every DAG's runs")


class LlmDeploymentsPlugin(AirflowPlugin):
    name = "llm_deployments"
    fastapi_apps = [{
        "app": create_app(engines_root, dependencies=[Depends(may_read_dag_runs)], mounted_at=PREFIX),
        "url_prefix": PREFIX,
        "name": "LLM deployments",
    }]
    external_views = [{
        "name": "LLM deployments",
        "href": f"{PREFIX}/",
        "url_route": URL_ROUTE,
        "destination": "nav",
        "nav_top_level": True,  # its own entry in the navigation bar, not under "Plugins"
    }]
