"""A tritonserver other hosts can reach keeps its admin endpoints behind a header key.

Triton's ``--http-restricted-api`` and ``--grpc-restricted-protocol`` refuse the listed endpoint
groups unless a request carries ``<header>: <key>``. tritonserver takes the key only in argv, so
it is visible in the server's own command line (``/proc/<pid>/cmdline``, ``ps``) to users of its
host; everything we control keeps it out: the argv we build, log and write to the engines volume
names the key as ``$LLM_DEPLOY_TRITON_ADMIN_KEY``, and ``/bin/sh`` puts the value in only as it
execs tritonserver, from an environment variable the runner sets as a secret. The same argv
therefore works wherever the server is restarted without Airflow (our supervisor re-runs it from
``server.json``, Docker re-runs the container's entry): the variable lives in that process's or
that container's environment, never in a file.

A loopback server is not guarded: only its own host can reach it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llm_deploy.errors import NonRetryableError

KEY_ENV = "LLM_DEPLOY_TRITON_ADMIN_KEY"
HEADER_ENV = "LLM_DEPLOY_TRITON_ADMIN_HEADER"  # outside Airflow: the header, if not the default
DEFAULT_HEADER = "triton-admin-key"
# gRPC metadata keys must be lowercase, and the header goes into a shell word unquoted: keep it plain.
HEADER_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# What other hosts must not do without the key: load, unload or reconfigure models
# (model-repository; model-config reads every model's full configuration, paths included),
# map memory into the server (shared-memory), read the server's internals (statistics, trace) or
# change what it logs (logging). Left open, because the clients of a served model need them:
# inference, health (liveness, readiness) and metadata (a model's inputs and outputs). So the
# benchmark, readiness waits and the supervisor's health checks work without the key, which is
# never sent on the inference path; only the repository API calls (deployment switches) send it.
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
OPEN_APIS = ("health", "metadata", "inference")
# Triton expects a restricted gRPC call's metadata key with this prefix (its refusal names it).
GRPC_METADATA_PREFIX = "triton-grpc-protocol-"


def is_loopback(host: str) -> bool:
    """Whether only the server's own host can reach ``host`` (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class AdminKey:
    """The header our clients send to a guarded server's admin endpoints, and its value."""

    header: str
    value: str = field(repr=False)  # never in a repr, so never in a traceback or a log line

    def __post_init__(self) -> None:
        if not HEADER_PATTERN.match(self.header):
            raise ValueError(f"admin key header {self.header!r} must match {HEADER_PATTERN.pattern} "
                             "(a lowercase HTTP header and gRPC metadata key)")
        if not self.value or any(ch.isspace() or ord(ch) < 32 for ch in self.value):
            raise ValueError("the admin key must be non-empty, without whitespace or control characters")

    @property
    def headers(self) -> dict[str, str]:
        """For HTTP calls."""
        return {self.header: self.value}

    @property
    def grpc_headers(self) -> dict[str, str]:
        """For gRPC calls (tritonclient's ``headers=``: sent as metadata)."""
        return {GRPC_METADATA_PREFIX + self.header: self.value}

    @property
    def secret_env(self) -> dict[str, str]:
        """What the runner puts in the server's environment, for ``guarded_argv`` to read."""
        return {KEY_ENV: self.value}

    def redact(self, text: str) -> str:
        return text.replace(self.value, "***")


def restricted_api_options(header: str) -> list[str]:
    """tritonserver's options that restrict the admin APIs to requests carrying ``header``; the
    value is the shell's expansion of ``KEY_ENV``, failing the start if it is unset."""
    apis = ",".join(RESTRICTED_APIS)
    value = "${" + KEY_ENV + ":?the Triton admin key is not set}"
    # Triton 2.51 parses <apis>:<header>=<value> (its --help says "," before the header, which it refuses).
    return [f"--http-restricted-api={apis}:{header}={value}",
            f"--grpc-restricted-protocol={apis}:{header}={value}"]


_SHELL_NAME = "llm-deploy-guard"


def guarded_argv(argv: list[str] | tuple[str, ...], header: str) -> list[str]:
    """``argv`` run by ``/bin/sh``, which appends the restricted-API options with the key from
    the environment and execs it (same pid, so runners and process checks see tritonserver)."""
    script = "exec \"$@\" " + " ".join(f'"{option}"' for option in restricted_api_options(header))
    # The word after the script is the shell's $0: it names the shell in its own error messages.
    return ["/bin/sh", "-c", script, _SHELL_NAME, *unguarded_argv(argv)]


def unguarded_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """``argv`` without ``guarded_argv``'s wrapper (a deployment's stored launch may have one)."""
    argv = list(argv)
    if argv[:2] == ["/bin/sh", "-c"] and len(argv) > 3 and argv[3] == _SHELL_NAME:
        return argv[4:]
    return argv


def require_key_beyond_loopback(host: str, key: AdminKey | None, conn_id: str = "triton_admin") -> None:
    """Refuse to start a server other hosts can reach without its admin key."""
    if key is None and not is_loopback(host):
        raise NonRetryableError(
            f"server_host={host} is reachable from other hosts, so tritonserver's admin APIs "
            f"({', '.join(RESTRICTED_APIS)}) are put behind a header key, and there is none: create the "
            f"Airflow connection {conn_id!r} whose password is the key (login: the header, default "
            f"{DEFAULT_HEADER!r}), e.g. `airflow connections add {conn_id} --conn-type generic "
            f"--conn-password \"$(openssl rand -hex 24)\"`; outside Airflow set {KEY_ENV}; "
            "or serve on 127.0.0.1")


# How a step gets the key of a server it starts or administers: (server host, connection id) ->
# the key, or None for a loopback host. The Airflow task passes one that reads the connection
# (llm_deploy.airflow.tasks); a step reads it only once it knows the host (a rollback: from the
# deployment's record).
KeyFor = Callable[[str, str], "AdminKey | None"]


def key_from_environ(host: str, conn_id: str, environ: Mapping[str, str] = os.environ) -> AdminKey | None:
    """``KeyFor`` outside Airflow (``python -m llm_deploy.cli``): the key from ``KEY_ENV``."""
    if is_loopback(host) or not environ.get(KEY_ENV):
        return None
    return AdminKey(environ.get(HEADER_ENV) or DEFAULT_HEADER, environ[KEY_ENV].strip())


def key_for(host: str, conn_id: str, source: KeyFor | None) -> AdminKey | None:
    """The key of a server on ``host`` from ``source``; NonRetryableError when one is needed and
    there is none."""
    key = None if is_loopback(host) or source is None else source(host, conn_id)
    require_key_beyond_loopback(host, key, conn_id)
    return key
