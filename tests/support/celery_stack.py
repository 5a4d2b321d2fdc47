"""A real Airflow 3 with the CeleryExecutor and GPU workers on hosts of their own.

The control plane (PostgreSQL, Redis as the Celery broker, the api-server, scheduler,
dag-processor, triggerer, and a worker for the ``default`` queue, as docker-compose.yaml has it)
runs in this network namespace and serves the hosts' bridge address. Each GPU host
(``host_network.TestHost``: a network namespace and a host name of its own) runs one Celery
worker on ``gpu`` and its own ``gpu@<host>`` queue, with the command README gives, one task at a
time (one GPU set per host). The hosts share the filesystem, as with an NFS engines volume.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from tests.support.airflow_stack import AirflowStack, Component
from tests.support.host_network import GATEWAY, NETWORK, HostNetwork, TestHost
from tests.support.postgres import ThrowawayPostgres, find_or_install_bindir
from tests.support.redis_server import ThrowawayRedis

DEFAULT_WORKER = "worker"
# The queues of a GPU host's worker, as README and docker-compose.yaml start it.
GPU_WORKER = ('exec "$0" -m airflow celery worker --queues "$("$0" -m llm_deploy.airflow.locality gpu)" '
              "--concurrency 1")


@dataclass
class CeleryStack(AirflowStack):
    network: HostNetwork = field(default_factory=HostNetwork)
    gpu_hosts: tuple[str, ...] = ("gpu-host-a", "gpu-host-b")
    redis: ThrowawayRedis | None = None

    def __post_init__(self) -> None:
        self.api_host = GATEWAY
        self.gpu_slots = len(self.gpu_hosts)

    def worker_name(self, host: str) -> str:
        return f"worker@{host}"

    def host(self, name: str) -> TestHost:
        return self.network.hosts[name]

    def start_worker(self, host: str) -> Component:
        """(Re)start the Celery worker of ``host``, as its process supervisor would."""
        component = Component(self.worker_name(host), self.host(host).argv(["sh", "-c", GPU_WORKER, sys.executable]),
                              self.logs / f"{self.worker_name(host)}.log")
        self._start_process(component, self._host_environment())
        return component

    # --- AirflowStack's executor hooks --------------------------------------------------------------
    def _start_services(self) -> None:
        self.network.open()
        for name in self.gpu_hosts:
            self.network.add_host(name)
        self.postgres = ThrowawayPostgres(find_or_install_bindir(), self.logs / "postgres.log", track=self.tree.track,
                                          also_on=(GATEWAY, NETWORK))
        self.postgres.start()
        self.redis = ThrowawayRedis(self.logs / "redis.log", also_on=(GATEWAY,), track=self.tree.track)
        self.redis.start()

    def _stop_services(self, timeout_s: float) -> None:
        super()._stop_services(timeout_s)
        if self.redis:
            self.redis.stop()
        self.network.close()

    def _start_workers(self) -> None:
        argv = [sys.executable, "-m", "airflow", "celery", "worker", "--queues", "default", "--concurrency", "2"]
        self._start_process(Component(DEFAULT_WORKER, argv, self.logs / f"{DEFAULT_WORKER}.log"))
        for host in self.gpu_hosts:
            self.start_worker(host)

    def _workers(self) -> list[str]:
        return [DEFAULT_WORKER, *(self.worker_name(host) for host in self.gpu_hosts)]

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.redis.url_at(GATEWAY, 0),
            "AIRFLOW__CELERY__RESULT_BACKEND": self.redis.url_at(GATEWAY, 1),
            # A worker reserves no task beyond the one it runs: a second build goes to the other host.
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        })
        return env

    def _host_environment(self) -> dict[str, str]:
        """What a GPU host's processes see: the control plane at the bridge address."""
        return {**self.env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url_at(GATEWAY)}
