"""TritonAdminKeyHook reads real Airflow connections (AIRFLOW_CONN_* env vars, JSON form)."""

from __future__ import annotations

import json

import pytest

from llm_deploy.airflow import triton_admin_hook
from llm_deploy.airflow.tasks import triton_admin_key
from llm_deploy.airflow.triton_admin_hook import TritonAdminKeyHook
from llm_deploy.errors import NonRetryableError
from llm_deploy.server.admin_guard import DEFAULT_HEADER, AdminKey

KEY = "tritonAdminKeyForTheHookTest0001"


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "generic", **fields}))


def test_the_key_is_the_password_and_the_header_the_login(monkeypatch):
    set_connection(monkeypatch, "admin_login", login="X-Site-Admin", password=f" {KEY}\n")

    key = TritonAdminKeyHook(triton_admin_conn_id="admin_login").get_key()

    assert (key.header, key.value) == ("x-site-admin", KEY)
    assert KEY not in repr(key)


def test_without_a_login_the_header_is_the_default(monkeypatch):
    set_connection(monkeypatch, "triton_admin", password=KEY)

    assert TritonAdminKeyHook().get_key() == AdminKey(DEFAULT_HEADER, KEY)


@pytest.mark.parametrize("fields, message", [
    ({}, "has no password"),
    ({"password": KEY, "login": "two words"}, "admin key header 'two words' must match"),
])
def test_a_connection_that_cannot_guard_is_refused(monkeypatch, fields, message):
    set_connection(monkeypatch, "admin_bad", **fields)

    with pytest.raises(NonRetryableError, match=message):
        TritonAdminKeyHook(triton_admin_conn_id="admin_bad").get_key()


def test_a_missing_connection_says_what_to_create(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_ADMIN_NOWHERE", raising=False)

    with pytest.raises(NonRetryableError, match="no Airflow connection 'admin_nowhere'.*"
                       "`airflow connections add admin_nowhere --conn-type generic --conn-password"):
        TritonAdminKeyHook(triton_admin_conn_id="admin_nowhere").get_key()


def test_a_loopback_server_needs_no_connection(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_TRITON_ADMIN", raising=False)

    assert triton_admin_key("127.0.0.1", "triton_admin") is None
    assert triton_admin_key("localhost", "triton_admin") is None
    with pytest.raises(NonRetryableError, match="no Airflow connection 'triton_admin'"):
        triton_admin_key("0.0.0.0", "triton_admin")


def test_airflow_masks_the_connection_password_by_itself(monkeypatch):
    """Not assumed: with the hook's own mask_secret disabled, Airflow 3's connection lookup still
    registers the password with its secrets masker, so a task log line holding it is redacted."""
    from airflow.sdk._shared.secrets_masker import redact

    key = "tritonAdminKeyMaskedByAirflowItself02"
    monkeypatch.setattr(triton_admin_hook, "mask_secret", lambda *a, **k: None)
    set_connection(monkeypatch, "admin_masked", password=key)

    assert TritonAdminKeyHook(triton_admin_conn_id="admin_masked").get_key().value == key
    assert key not in str(redact(f"--http-restricted-api=model-repository:triton-admin-key={key}"))
