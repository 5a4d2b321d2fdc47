"""The Hugging Face token, read from an Airflow connection and masked in every task log.

Connection (type ``huggingface``): the token goes in the password field; an extra field
``{"token": "hf_..."}`` is accepted too, for connections created from a JSON blob. For example::

    AIRFLOW_CONN_HUGGINGFACE_DEFAULT='{"conn_type": "huggingface", "password": "hf_..."}'

The connection type and its form (the token field, the others hidden) are declared in
llm_deploy/airflow/provider.py, which is where Airflow 3 looks for them.

A missing connection is not an error: public models, the builtin model and local checkpoints
need no token, so get_token() returns None and the download step says so if the Hub refuses.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret


class HuggingFaceTokenHook(BaseHook):
    conn_name_attr = "hf_conn_id"
    default_conn_name = "huggingface_default"
    conn_type = "huggingface"
    hook_name = "Hugging Face"

    def __init__(self, hf_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hf_conn_id = hf_conn_id

    def get_conn(self) -> str | None:
        return self.get_token()

    def get_token(self) -> str | None:
        """The token, or None when the connection is missing or holds none."""
        try:
            conn = self.get_connection(self.hf_conn_id)
        except AirflowNotFoundException:
            self.log.info(
                "no Airflow connection %r: using the Hub without a token (fine for public models)",
                self.hf_conn_id,
            )
            return None
        token = (conn.password or conn.extra_dejson.get("token") or "").strip()
        if not token:
            self.log.info(
                "Airflow connection %r holds no token (password or extra 'token'): using the Hub "
                "without one", self.hf_conn_id,
            )
            return None
        # Airflow masks a connection's password by itself, but not a token kept in its extra,
        # and a stripped token differs from the stored value; register exactly what we hand out.
        mask_secret(token)
        return token

