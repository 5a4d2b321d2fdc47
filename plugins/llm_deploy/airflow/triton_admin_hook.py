"""The admin key of a tritonserver other hosts can reach, read from an Airflow connection.

Connection (any type; ``generic`` is Airflow's own): the key goes in the password field, the
header that carries it in the login field (empty: ``triton-admin-key``). For example::

    airflow connections add triton_admin --conn-type generic --conn-password "$(openssl rand -hex 24)"

Airflow masks a connection's password in task logs as it hands the connection out
(airflow.sdk.execution_time.context._mask_connection_secrets); the hook registers the stripped
key it returns too, which can differ from the stored value. The key is never a param, never in
an XCom record: each task that needs it reads it here.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

from llm_deploy.errors import NonRetryableError
from llm_deploy.server.admin_guard import DEFAULT_HEADER, AdminKey


class TritonAdminKeyHook(BaseHook):
    conn_name_attr = "triton_admin_conn_id"
    default_conn_name = "triton_admin"
    conn_type = "generic"
    hook_name = "Triton admin key"

    def __init__(self, triton_admin_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.triton_admin_conn_id = triton_admin_conn_id

    def get_conn(self) -> AdminKey:
        return self.get_key()

    def get_key(self) -> AdminKey:
        """The key and its header; NonRetryableError saying what to create when there is none."""
        conn_id = self.triton_admin_conn_id
        create = (f"create it: `airflow connections add {conn_id} --conn-type generic "
                  f"--conn-password \"$(openssl rand -hex 24)\"` (login: the header, default {DEFAULT_HEADER!r})")
        try:
            conn = self.get_connection(conn_id)
        except AirflowNotFoundException:
            raise NonRetryableError(
                f"no Airflow connection {conn_id!r}: a tritonserver on a non-loopback server_host keeps "
                f"its admin APIs behind the key in that connection's password; {create}") from None
        value = (conn.password or "").strip()
        if not value:
            raise NonRetryableError(f"Airflow connection {conn_id!r} has no password (the admin key); {create}")
        mask_secret(value)
        try:
            return AdminKey(header=(conn.login or "").strip().lower() or DEFAULT_HEADER, value=value)
        except ValueError as exc:
            raise NonRetryableError(f"Airflow connection {conn_id!r}: {exc}") from None
