"""The Hub's failures, from the fake Hub, as errors that say whether to retry and what to fix."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.weights.huggingface import hub_weights
from tests.fixtures.hf_hub import FIXTURE_TOKEN, FakeHub, dead_loopback_url
from tests.weights.tiny_repo import REPO, hub_files, hub_spec


@pytest.mark.parametrize(
    ("gated", "token"),
    [(True, None), (True, "hf_wrongTokenWrongTokenWrongToken"), (False, None), (False, "hf_wrongTokenWrongTokenWrongToken")],
    ids=["gated-401", "gated-403", "private-401", "private-bad-token"],
)
def test_gated_or_private_repos_fail_for_good_with_guidance(
    hf_hub: FakeHub, tmp_path: Path, gated: bool, token: str | None, caplog
) -> None:
    hf_hub.add_repo(REPO, hub_files(), gated=gated, private=not gated)
    spec = hub_spec(tmp_path, hf_conn_id="hf_acme")

    with pytest.raises(NonRetryableError) as failure:
        hub_weights(spec, token, endpoint=hf_hub.endpoint)

    message = str(failure.value)
    assert f"model {REPO} is gated or private: accept its license on the Hub" in message
    assert "Airflow connection 'hf_acme'" in message
    everything = "".join(traceback.format_exception(failure.value)) + caplog.text
    if token:
        assert token not in everything
        assert "refused the configured token" in message
    else:
        assert "no token is configured" in message
        # Neither the implicit HF_TOKEN nor a token file was sent in place of the missing one.
        assert all("authorization" not in r.headers for r in hf_hub.matching())
    assert hf_hub.count("GET", server="cdn") == 0
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no staging dir left behind either


def test_a_missing_revision_is_named(hf_hub: FakeHub, tmp_path: Path) -> None:
    hf_hub.add_repo(REPO, hub_files())

    with pytest.raises(NonRetryableError, match=r"revision 'v9\.9' of model acme/tiny-llama does not exist"):
        hub_weights(hub_spec(tmp_path, model_revision="v9.9"), None, endpoint=hf_hub.endpoint)


def test_a_missing_repo_is_named(hf_hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(NonRetryableError, match=r"model acme/tiny-llama does not exist on the Hub"):
        hub_weights(hub_spec(tmp_path), FIXTURE_TOKEN, endpoint=hf_hub.endpoint)


def test_an_unreachable_hub_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="could not download acme/tiny-llama") as failure:
        hub_weights(hub_spec(tmp_path), None, endpoint=dead_loopback_url())
    assert not isinstance(failure.value, NonRetryableError)
