"""Promote, roll back and stop a deployment: what is served changes only here.

A switch from one version to another, on the running server, is the tutorial's "load the model"
made safe: the new version's composing models are loaded next to the old ones (each load
returns once the model is ready), the ensemble is reloaded routing to them (Triton replaces a
reloaded model without a moment of unavailability, and requests already in the old ensemble
finish on the old models), and only then are the old models unloaded, which Triton does once
their requests in flight are done. If any load fails, what was loaded of the new version is
unloaded again and the old version never stopped serving.

Each kept version's engine holds a lease (``engine_cache``) named for the deployment, so engine
retention leaves alone both what is live and what a rollback would return to.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from llm_deploy import engine_cache, hosts, processes, volume
from llm_deploy.deployment import launch as server_launch
from llm_deploy.deployment import live_repository, record, server
from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.deployment.record import Deployment, Version
from llm_deploy.deployment.repository_api import RepositoryApi
from llm_deploy.errors import NonRetryableError
from llm_deploy.records import Record
from llm_deploy.runners.command import Service
from llm_deploy.server.admin_guard import AdminKey, is_loopback

log = logging.getLogger(__name__)

# The live version and the one a rollback returns to (the one live before it); the other
# versions' files are removed.
KEPT_VERSIONS = 2


@dataclass(frozen=True)
class DeploymentRecord(Record):
    """What a promotion, rollback or stop left: which version serves, and where."""

    deployment: str
    action: str  # promoted | started | rolled_back | stopped
    live_version: int
    previous_version: int
    http_url: str
    grpc_url: str
    record_path: str


@dataclass(frozen=True)
class Settings:
    """How a deployment is reached and how long its loads may take (from the run's spec)."""

    backend: str
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    load_timeout_s: float
    # How the server runs (the backend's answer for the run's spec); None: as it last started.
    launch: ServerLaunch | None = None
    # The Airflow connection of the admin key, for a non-loopback host (kept in the record by name).
    admin_conn_id: str = "triton_admin"


def lease_name(name: str) -> str:
    return f"deployment-{name}"


def promote(directory: Path, settings: Settings, candidate_repo: Path, *, run_id: str,
            qualification: dict, admin_key: AdminKey | None = None) -> DeploymentRecord:
    """Make the candidate's repository the deployment's next version, and serve it.

    A deployment whose server is not running (a first deploy, or one stopped on purpose) is
    started on the new version; a running one switches to it without downtime. ``admin_key``:
    the guard of a server on a non-loopback host (its start and its repository API calls).
    """
    with record.operation(directory, "promote"):
        deployment = _open(directory, settings)
        number = deployment.next_number()
        ensemble, names = live_repository.add_version(directory, candidate_repo, number)
        engine_dir = volume.served_engine_dir(candidate_repo)
        version = Version(version=number, models=names, engine_dir=engine_dir,
                          engine_id=Path(engine_dir).name if engine_dir else "",
                          source_repo=str(candidate_repo), run_id=run_id, promoted_unix=round(time.time(), 3),
                          max_batch_size=_max_batch_size(directory, number), qualification=qualification)
        previous, before_previous = deployment.live, deployment.previous
        with record.updating(directory) as current:
            current.ensemble = ensemble
            current.versions.append(version)
            deployment = current
        action = "promoted" if server.running(deployment) else "started"
        try:
            if action == "promoted":
                _switch(directory, deployment, to=version, run_id=run_id, action=action, admin_key=admin_key)
            else:
                _start(directory, number, settings, run_id=run_id, admin_key=admin_key)
        except BaseException:
            _forget(directory, version, live=previous, previous=before_previous)
            raise
        deployment = _retain(directory)
        return _result(directory, deployment, action, previous)


def rollback(directory: Path, settings: Settings | None, *, run_id: str, to_version: int | None = None,
             admin_key: AdminKey | None = None) -> DeploymentRecord:
    """Serve an earlier kept version again (the previous one unless ``to_version`` names one);
    ``admin_key``: as for ``promote`` (the record's ``admin_conn_id`` says whether one is needed)."""
    with record.operation(directory, "rollback"):
        deployment = record.read(directory)
        if deployment is None or not deployment.versions:
            raise NonRetryableError(f"{directory}: no deployment to roll back (nothing was ever promoted there)")
        target = deployment.version(to_version) if to_version else _previous(deployment)
        if target.version == deployment.live and server.running(deployment):
            raise NonRetryableError(f"deployment {deployment.name} already serves version {target.version}")
        previous = deployment.live
        if server.running(deployment):
            _switch(directory, deployment, to=target, run_id=run_id, action="rolled_back", admin_key=admin_key)
        else:
            _start(directory, target.version, settings or _settings_of(deployment), run_id=run_id,
                   action="rolled_back", admin_key=admin_key)
        return _result(directory, _retain(directory), "rolled_back", previous)


def stop(directory: Path, *, run_id: str) -> DeploymentRecord:
    """Stop the deployment on purpose: its supervisor and server end, its leases are released.

    Its versions stay on disk, so the next promotion (or a rollback) starts it again.
    """
    with record.operation(directory, "stop"):
        deployment = record.read(directory)
        if deployment is None:
            raise NonRetryableError(f"{directory}: no deployment there to stop")
        stopped = server.stop(deployment)
        left = _left_running(deployment)
        if left:
            raise NonRetryableError(f"deployment {deployment.name}: {left} outlived the stop; "
                                    "they hold its ports: end them by hand")
        _release_leases(deployment)
        with record.updating(directory) as current:
            current.state = "stopped"
            current.supervisor = {}
            current.server_pid = 0
            current.event("stopped", run_id=run_id, was_running=stopped)
        log.info("deployment %s stopped (%s); its versions stay in %s", deployment.name,
                 "its server was running" if stopped else "nothing was running", directory)
        return _result(directory, record.read(directory), "stopped", deployment.live)


def forget_host(directory: Path, *, host: str, run_id: str) -> DeploymentRecord:
    """Let go of a deployment whose host is gone for good (its server went with it).

    Its record still names that host, so every task acting on it would wait for a worker on
    ``gpu@<host>`` that never comes. Nothing can be stopped from here: the record is marked
    stopped and its engines' leases are released, and the next promotion starts the deployment
    on whichever host runs it. ``host`` must be the host the record names, typed by a person
    who knows it is gone; the host this task runs on is up, so it is refused.
    """
    with record.operation(directory, "forget_host"):
        deployment = record.read(directory)
        if deployment is None:
            raise NonRetryableError(f"{directory}: no deployment there")
        if deployment.state != "serving" or not deployment.machine:
            raise NonRetryableError(
                f"deployment {deployment.name} is {deployment.state} and served from no host: nothing to "
                "forget (leave host_gone empty to stop it)")
        if deployment.machine != host:
            raise NonRetryableError(
                f"deployment {deployment.name} is served from host {deployment.machine}, not {host}: "
                "host_gone must name the host its record names")
        if host == hosts.this_host():
            raise NonRetryableError(
                f"host {host} is up (this task runs on it): stop deployment {deployment.name} with "
                "host_gone left empty")
        _release_leases(deployment)
        with record.updating(directory) as current:
            supervisor = current.supervisor
            current.state = "stopped"
            current.machine = ""
            current.supervisor = {}
            current.server_pid = 0
            current.event("host_gone", run_id=run_id, host=host, supervisor_pid=supervisor.get("pid"))
        log.warning("deployment %s let go of host %s: if that host comes back, stop its server there by "
                    "hand (supervisor pid %s, process group %s) before it serves version %s unmanaged",
                    deployment.name, host, supervisor.get("pid"), supervisor.get("pgid"), deployment.live)
        return _result(directory, record.read(directory), "host_gone", deployment.live)


def note_refusal(directory: Path, *, run_id: str, reason: str) -> None:
    """Record in the deployment's history that a candidate was refused, and why."""
    with record.updating(directory) as current:
        if current is not None:
            current.event("refused", run_id=run_id, reason=reason)


# --- the switch ------------------------------------------------------------------------------


def _switch(directory: Path, deployment: Deployment, *, to: Version, run_id: str, action: str,
            admin_key: AdminKey | None = None) -> None:
    api = RepositoryApi(deployment.http_url, timeout_s=deployment.load_timeout_s,
                        headers=admin_key.headers if admin_key else None)
    old = deployment.live_version()
    _unload_strays(api, deployment, keep=set(old.models.values()) if old else set())
    loaded: list[str] = []
    try:
        for name in to.models.values():
            log.info("%s: loading %s (version %d)", deployment.name, name, to.version)
            api.load(name)
            loaded.append(name)
        live_repository.route_ensemble(directory, deployment.ensemble, to.version, to.models)
        try:
            api.load(deployment.ensemble)  # the reload that moves traffic to the new version
        except BaseException:
            live_repository.restore_ensemble(directory, deployment.ensemble)
            raise
        if not api.ready(deployment.ensemble, str(to.version)):
            raise NonRetryableError(f"{deployment.ensemble} version {to.version} is not ready after its load")
    except BaseException:
        for name in loaded:
            if old is None or name not in old.models.values():
                with contextlib.suppress(Exception):
                    api.unload(name)
        with record.updating(directory) as current:
            current.event("switch_failed", run_id=run_id, to_version=to.version)
        api.close()
        raise
    with record.updating(directory) as current:
        if old is not None and old.version != to.version:
            current.previous = old.version
        current.live, current.live_since_unix, current.live_run_id = to.version, round(time.time(), 3), run_id
        current.event(action, run_id=run_id, version=to.version, previous=old.version if old else 0)
    log.info("%s: %s now routes to version %d", deployment.name, deployment.ensemble, to.version)
    if old is not None and old.version != to.version:
        for name in old.models.values():
            api.unload(name)  # Triton finishes the requests still in it first
        left = api.wait_unloaded(list(old.models.values()))
        if left:
            log.warning("%s: %s still loaded (long requests in flight?); they unload once done", deployment.name, left)
        else:
            log.info("%s: version %d unloaded", deployment.name, old.version)
    api.close()


def _forget(directory: Path, version: Version, *, live: int, previous: int) -> None:
    """Drop a version that never went live (its switch or start failed), so that it is neither
    kept as the rollback target nor left on disk; the live version stays what it was."""
    with record.updating(directory) as current:
        current.versions = [v for v in current.versions if v.version != version.version]
        current.live, current.previous = live, previous
        live_repository.remove_version(directory, current.ensemble, version.version, version.models)
        current.event("not_promoted", version=version.version, run_id=version.run_id)


def _unload_strays(api: RepositoryApi, deployment: Deployment, *, keep: set[str]) -> None:
    """Unload what an interrupted switch left loaded besides the live version: a killed promote
    task may have loaded a version that never went live, and would hold its memory for good."""
    strays = [name for name, state in api.states().items()
              if state == "READY" and name != deployment.ensemble and name not in keep]
    for name in strays:
        log.warning("%s: unloading %s, loaded by a switch that did not finish", deployment.name, name)
        api.unload(name)


def _start(directory: Path, number: int, settings: Settings, *, run_id: str, action: str = "started",
           admin_key: AdminKey | None = None) -> None:
    with record.updating(directory) as current:
        live_repository.route_ensemble(directory, current.ensemble, number, current.version(number).models)
        if current.live and current.live != number:
            current.previous = current.live
        current.live = number
        current.host, current.http_port, current.grpc_port, current.metrics_port = (
            settings.host, settings.http_port, settings.grpc_port, settings.metrics_port)
        deployment = current
    launch = settings.launch or server_launch.read(directory)
    if launch is None:
        raise NonRetryableError(f"deployment {deployment.name} never started, so nothing says how its server "
                                "runs: promote a candidate with deploy_llm first")
    service = server.start(directory, deployment, launch, deployment.ensemble, timeout_s=settings.load_timeout_s,
                           admin_key=admin_key)
    with record.updating(directory) as current:
        current.state = "serving"
        current.supervisor = service.to_xcom()
        current.machine = hosts.this_host()
        current.live_since_unix, current.live_run_id = round(time.time(), 3), run_id
        current.event(action, run_id=run_id, version=number, supervisor_pid=service.pid)


# --- record keeping --------------------------------------------------------------------------


def _open(directory: Path, settings: Settings) -> Deployment:
    """The deployment's record, created on its first promotion; a running one must match the
    run's settings (the ports clients use do not move under a running server)."""
    with record.updating(directory) as current:
        if current is None:
            current = Deployment(name=Path(directory).name, backend=settings.backend, host=settings.host,
                                 http_port=settings.http_port, grpc_port=settings.grpc_port,
                                 metrics_port=settings.metrics_port)
            current.event("created")
        if current.backend != settings.backend:
            raise NonRetryableError(f"deployment {current.name} serves backend {current.backend}; this run "
                                    f"builds for {settings.backend}: name another deployment (deployment_name)")
        wanted = (settings.host, settings.http_port, settings.grpc_port, settings.metrics_port)
        serving = (current.host, current.http_port, current.grpc_port, current.metrics_port)
        if server.running(current) and wanted != serving:
            raise NonRetryableError(
                f"deployment {current.name} serves on {current.host} ports {serving[1:]}; this run asks for "
                f"{settings.host} ports {wanted[1:]}: use its ports, or stop it first (DAG stop_llm_deployment)")
        current.load_timeout_s = settings.load_timeout_s
        current.admin_conn_id = "" if is_loopback(settings.host) else settings.admin_conn_id
        record.write(directory, current)  # under the lock; a new record has nothing to write it back
        return current


def _settings_of(deployment: Deployment) -> Settings:
    return Settings(deployment.backend, deployment.host, deployment.http_port, deployment.grpc_port,
                    deployment.metrics_port, deployment.load_timeout_s,
                    admin_conn_id=deployment.admin_conn_id or Settings.admin_conn_id)


def _previous(deployment: Deployment) -> Version:
    """The version that was live before the live one (not merely the newest other one: after a
    rollback and a new promotion, that would be the version rolled away from)."""
    others = _others_in_rollback_order(deployment)
    if not others:
        raise NonRetryableError(f"deployment {deployment.name} keeps no version besides {deployment.live}: "
                                "nothing to roll back to")
    return others[0]


def _others_in_rollback_order(deployment: Deployment) -> list[Version]:
    """The versions besides the live one: the one live before it first, then the newest."""
    return sorted((v for v in deployment.versions if v.version != deployment.live),
                  key=lambda v: (v.version == deployment.previous, v.promoted_unix), reverse=True)


def _retain(directory: Path) -> Deployment:
    """Keep the live version and the rollback target; lease their engines, drop the rest."""
    with record.updating(directory) as current:
        live = current.live_version()
        others = _others_in_rollback_order(current)
        kept = ([live] if live else []) + others[:KEPT_VERSIONS - (1 if live else 0)]
        dropped = [v for v in current.versions if v not in kept]
        current.versions = sorted(kept, key=lambda v: v.version)
        supervisor = Service.from_xcom(current.supervisor) if current.supervisor else None
        for version in dropped:
            live_repository.remove_version(directory, current.ensemble, version.version, version.models)
            if version.engine_dir:
                engine_cache.release_lease(version.engine_dir, lease_name(current.name))
            log.info("%s: dropped version %d (kept: %s)", current.name, version.version,
                     ", ".join(str(v.version) for v in current.versions))
        if supervisor is not None:
            # Held until the deployment releases them (a stop, a dropped version): retention on
            # another GPU host cannot check this host's pids, and would let a lease of a
            # deployment that serves for months expire after FOREIGN_LEASE_TTL_S; nor can a
            # worker check a container's.
            for version in current.versions:
                if version.engine_dir and Path(version.engine_dir).is_dir():
                    engine_cache.take_lease(version.engine_dir, run_id=lease_name(current.name), pid=supervisor.pid,
                                           container_id=supervisor.container_id, until_released=True)
        deployment = current
    return deployment


def _result(directory: Path, deployment: Deployment, action: str, previous: int) -> DeploymentRecord:
    return DeploymentRecord(deployment=deployment.name, action=action, live_version=deployment.live,
                            previous_version=previous, http_url=deployment.http_url,
                            grpc_url=deployment.grpc_url, record_path=str(Path(directory) / record.RECORD))


def _max_batch_size(directory: Path, number: int) -> int:
    config = live_repository.parse_config(Path(directory) / live_repository.ENSEMBLES / f"v{number}.pbtxt")
    return int(config.max_batch_size)


def _release_leases(deployment: Deployment) -> None:
    for version in deployment.versions:
        if version.engine_dir:
            engine_cache.release_lease(version.engine_dir, lease_name(deployment.name))


def _left_running(deployment: Deployment) -> str:
    """What of the stopped server still runs: processes of the supervisor's group, or its container."""
    if not deployment.supervisor:
        return ""
    service = Service.from_xcom(deployment.supervisor)
    if service.runner == "docker":
        return f"container {service.container_id[:12]}" if server.running(deployment) else ""
    left = processes.group_members(service.pgid)
    return f"processes {left}" if left else ""
