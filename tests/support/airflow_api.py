"""The Airflow 3 REST API as the tests drive it: trigger a run, wait for it, read its tasks.

Shared by every real deployment the tests start: the processes of ``airflow_stack`` (LocalExecutor
or, in ``celery_stack``, Celery workers on test hosts) and the containers of ``compose_stack``
(``docker compose up``). A stack supplies ``api_url``, ``token`` (a JWT from ``/auth/token``) and
``logs_tail()`` for the error messages.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

TERMINAL_RUN_STATES = {"success", "failed"}


class StackError(RuntimeError):
    """The deployment did not come up (or a call to it failed); the message holds the logs."""


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _log_line(entry: Any) -> str:
    """One structured task-log entry as text: its event, then any exception it carries."""
    if not isinstance(entry, dict):
        return str(entry)
    errors = [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in entry.get("error_detail") or []]
    return "\n".join([entry.get("event", ""), *errors])


def fetch_token(api_url: str, username: str, password: str) -> str:
    """A JWT for the REST API from the auth manager's token endpoint (simple or FAB)."""
    import httpx

    response = httpx.post(f"{api_url}/auth/token", json={"username": username, "password": password}, timeout=30)
    if response.status_code != 201:
        raise StackError(f"POST /auth/token -> {response.status_code}: {response.text[:500]}")
    return response.json()["access_token"]


class AirflowRestApi:
    api_url: str
    token: str

    def logs_tail(self, lines: int = 40) -> str:
        raise NotImplementedError

    def is_healthy(self) -> bool:
        """The api-server answers, and reports its metadata DB and a scheduler healthy."""
        import httpx

        try:
            health = httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return health.get("metadatabase", {}).get("status") == "healthy" and \
            health.get("scheduler", {}).get("status") == "healthy"

    # --- REST API ----------------------------------------------------------------------------
    def api(self, method: str, path: str, *, expect: tuple[int, ...] = (200, 201), **kwargs) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(kwargs.pop("headers", {}))
        response = httpx.request(method, self.api_url + path, headers=headers, timeout=30, **kwargs)
        if response.status_code not in expect:
            raise StackError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120) -> dict:
        """The DAG as the API shows it, once the dag-processor has serialized it."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.api("GET", f"/api/v2/dags/{dag_id}", expect=(200, 404))
            if found and "dag_id" in found:
                return found
            if time.monotonic() > deadline:
                errors = self.api("GET", "/api/v2/importErrors")
                raise StackError(f"DAG {dag_id} not parsed within {timeout_s:.0f}s; import errors: "
                                 f"{json.dumps(errors)[:3000]}\n{self.logs_tail()}")
            time.sleep(0.5)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Unpause the DAG and trigger a run with ``conf``, as the UI's trigger form does."""
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 600) -> dict:
        deadline = time.monotonic() + timeout_s
        while (run := self.run(dag_id, run_id))["state"] not in TERMINAL_RUN_STATES:
            if time.monotonic() > deadline:
                states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
                raise StackError(f"run {run_id} still {run['state']} after {timeout_s:.0f}s; tasks: {states}")
            time.sleep(0.5)
        return run

    def wait_until_running(self, dag_id: str, run_id: str, task_id: str, timeout_s: float = 480) -> dict:
        """The task instance once a worker runs it (its pid and host name known)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ti = self.task_instance(dag_id, run_id, task_id)
            if ti["state"] == "running" and ti["pid"] and ti["hostname"]:
                return ti
            if self.run(dag_id, run_id)["state"] in TERMINAL_RUN_STATES:
                break
            time.sleep(0.5)
        states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
        raise StackError(f"{task_id} never ran in run {run_id}; task states: {states}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def map_index(self, dag_id: str, run_id: str, task_id: str) -> int:
        """-1 for a plain task; the one instance's index for a task mapped over the run's server."""
        indexes = [ti["map_index"] for ti in self.task_instances(dag_id, run_id) if ti["task_id"] == task_id]
        return indexes[0] if len(indexes) == 1 else -1

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict:
        # From the run's list: a mapped task's placeholder (-1) turns into its instance 0 when
        # the scheduler expands it, and the list always shows whichever exists.
        found = [ti for ti in self.task_instances(dag_id, run_id) if ti["task_id"] == task_id]
        if len(found) != 1:
            raise StackError(f"{len(found)} instances of {task_id} in run {run_id}")
        return found[0]

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict]:
        index = self.map_index(dag_id, run_id, task_id)
        suffix = f"/{index}" if index >= 0 else ""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}/tries"
        return self.api("GET", path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        params = {"deserialize": "true", "map_index": self.map_index(dag_id, run_id, task_id)}
        return self.api("GET", path, params=params)["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        content = self.api("GET", path, params={"full_content": "true", "map_index": self.map_index(
                           dag_id, run_id, task_id)}, headers={"Accept": "application/json"})["content"]
        return "\n".join(_log_line(entry) for entry in content)

    def task_graph(self, dag_id: str) -> dict[str, list[str]]:
        """task_id -> its upstream task ids."""
        upstream: dict[str, list[str]] = {}
        for task in self.api("GET", f"/api/v2/dags/{dag_id}/tasks")["tasks"]:
            upstream.setdefault(task["task_id"], [])
            for down in task["downstream_task_ids"]:
                upstream.setdefault(down, []).append(task["task_id"])
        return upstream

