"""HuggingFaceTokenHook reads real Airflow connections (from AIRFLOW_CONN_* env vars, JSON form)."""

from __future__ import annotations

import json
import logging

import pytest

from llm_deploy.airflow import hf_hook
from llm_deploy.airflow.hf_hook import HuggingFaceTokenHook

TOKEN = "hf_connectionTokenForTheHookTest0001"


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "huggingface", **fields}))


@pytest.fixture
def masked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(hf_hook, "mask_secret", lambda secret, *a, **k: calls.append(secret))
    return calls


def test_the_token_is_the_connection_password_and_is_masked(monkeypatch: pytest.MonkeyPatch, masked: list[str]) -> None:
    set_connection(monkeypatch, "hf_pw", password=TOKEN, extra={"token": "hf_notThisOneNotThisOne"})

    assert HuggingFaceTokenHook(hf_conn_id="hf_pw").get_token() == TOKEN
    assert masked == [TOKEN]


def test_the_extra_token_is_the_fallback(monkeypatch: pytest.MonkeyPatch, masked: list[str]) -> None:
    set_connection(monkeypatch, "hf_extra", extra={"token": f"  {TOKEN}\n"})

    assert HuggingFaceTokenHook(hf_conn_id="hf_extra").get_token() == TOKEN
    assert masked == [TOKEN]


def test_the_default_connection_id(monkeypatch: pytest.MonkeyPatch, masked: list[str]) -> None:
    set_connection(monkeypatch, "huggingface_default", password=TOKEN)

    assert HuggingFaceTokenHook().get_token() == TOKEN
    assert HuggingFaceTokenHook.default_conn_name == "huggingface_default"
    assert (HuggingFaceTokenHook.conn_name_attr, HuggingFaceTokenHook.conn_type) == ("hf_conn_id", "huggingface")


def test_a_missing_connection_means_no_token(
    monkeypatch: pytest.MonkeyPatch, masked: list[str], caplog, capsys
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_HF_NOWHERE", raising=False)
    caplog.set_level(logging.INFO)

    assert HuggingFaceTokenHook(hf_conn_id="hf_nowhere").get_token() is None
    # Hook.log is Airflow's structlog logger: stdout outside a task, the task log inside one.
    assert "no Airflow connection 'hf_nowhere'" in caplog.text + capsys.readouterr().out
    assert masked == []


def test_a_connection_without_a_token_means_no_token(monkeypatch: pytest.MonkeyPatch, masked: list[str]) -> None:
    set_connection(monkeypatch, "hf_empty", extra={"other": "x"})

    assert HuggingFaceTokenHook(hf_conn_id="hf_empty").get_token() is None
    assert masked == []


def test_the_token_is_redacted_by_airflows_secrets_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk._shared.secrets_masker import redact

    token = "hf_extraOnlyTokenMaskedByTheHook0002"
    set_connection(monkeypatch, "hf_masked", extra={"token": token})

    assert HuggingFaceTokenHook(hf_conn_id="hf_masked").get_token() == token
    assert token not in str(redact(f"Authorization: Bearer {token}"))
