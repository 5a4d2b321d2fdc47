"""The huggingface source against a fake Hub on loopback: nothing here reaches huggingface.co."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from tqdm import tqdm

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.weights.huggingface import hub_weights, published_hub
from llm_deploy.weights.published import WeightsRecord
from tests.fixtures.hf_hub import FIXTURE_TOKEN, FakeHub, dead_loopback_url, tiny_model_files, use_default_endpoint
from tests.weights.tiny_repo import REPO, SELECTED, hub_files, hub_spec, leftovers, on_disk


def test_hub_download_pins_the_commit_and_honours_allow_patterns(hf_hub: FakeHub, tmp_path: Path, caplog) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    caplog.set_level(logging.INFO, logger="llm_deploy")

    record = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint, progress_every_bytes=64 * 1024)

    final = tmp_path / "models" / "acme--tiny-llama" / commit
    assert record.checkpoint_dir == str(final)
    assert (record.source, record.model_id, record.revision, record.reused) == ("huggingface", REPO, commit, False)
    assert on_disk(final) == SELECTED | {volume.MANIFEST}
    assert volume.check_manifest(final, deep=True) == []
    manifest = volume.read_manifest(final)
    assert manifest["commit"] == commit and manifest["revision"] == "main"
    assert record.files == len(SELECTED)
    assert record.bytes == sum(len(c) for n, c in hub_files().items() if n in SELECTED)
    assert record.manifest_sha256 == hashlib.sha256((final / volume.MANIFEST).read_bytes()).hexdigest()
    assert leftovers(final.parent) == []  # staging and scratch dirs are gone
    # Files outside allow_patterns were never requested; the weights came from the "CDN" without auth.
    assert hf_hub.count(contains="pytorch_model.bin") == hf_hub.count(contains="README.md") == 0
    assert hf_hub.count("GET", server="cdn") == 1
    assert all("authorization" not in r.headers for r in hf_hub.matching())
    # tqdm's own lines now (they were "fetched 6/6 files ..." and "downloaded ..."): files and bytes, all done.
    assert "Fetching 6 files: 100%" in caplog.text and "| 6/6 [" in caplog.text
    assert "Reconstruction complete: 100%" in caplog.text and tqdm.format_sizeof(record.bytes, "B", 1000) in caplog.text
    assert json.loads(json.dumps(record.to_xcom())) == record.to_xcom()


def test_second_call_reuses_without_downloading(hf_hub: FakeHub, tmp_path: Path) -> None:
    hf_hub.add_repo(REPO, hub_files())
    first = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)
    file_requests, api_requests = len(hf_hub.file_requests()), hf_hub.count(contains="/api/")

    second = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    assert second.reused and second.checkpoint_dir == first.checkpoint_dir
    assert second.manifest_sha256 == first.manifest_sha256
    assert len(hf_hub.file_requests()) == file_requests  # not even a HEAD
    assert hf_hub.count(contains="/api/") == api_requests + 1  # only resolving the branch


def test_pinned_commit_is_reused_without_the_hub(hf_hub: FakeHub, tmp_path: Path) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    hub_weights(hub_spec(tmp_path, model_revision=commit), None, endpoint=hf_hub.endpoint)

    record = hub_weights(hub_spec(tmp_path, model_revision=commit), None, endpoint=dead_loopback_url())

    assert record.reused and record.revision == commit


def test_the_cache_lookup_resolves_the_branch_and_never_downloads(hf_hub: FakeHub, tmp_path: Path) -> None:
    hf_hub.add_repo(REPO, hub_files())
    assert published_hub(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint) is None  # nothing on the volume
    assert hf_hub.file_requests() == []
    downloaded = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)
    file_requests, api_requests = len(hf_hub.file_requests()), hf_hub.count(contains="/api/")

    found = published_hub(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    assert found == WeightsRecord(**{**downloaded.to_xcom(), "reused": True})
    assert len(hf_hub.file_requests()) == file_requests
    assert hf_hub.count(contains="/api/") == api_requests + 1  # one revision lookup
    # The branch moved: the cached copy is not what the run would serve.
    hf_hub.push(REPO, tiny_model_files(seed=1))
    assert published_hub(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint) is None
    # A Hub that does not answer: "not known to be cached", the download step reports the error.
    assert published_hub(hub_spec(tmp_path), None, endpoint=dead_loopback_url()) is None


def test_a_moved_branch_gets_a_new_directory(hf_hub: FakeHub, tmp_path: Path) -> None:
    old = hf_hub.add_repo(REPO, hub_files())
    first = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)
    new = hf_hub.push(REPO, tiny_model_files(seed=1))

    second = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    assert (first.revision, second.revision) == (old, new)
    assert not second.reused and Path(second.checkpoint_dir).name == new
    assert volume.is_published(Path(first.checkpoint_dir))


def test_other_allow_patterns_get_their_own_directory(hf_hub: FakeHub, tmp_path: Path) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    default = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    wider = hub_weights(
        hub_spec(tmp_path, hf_allow_patterns=["*.json", "*.safetensors", "*.md"]), None, endpoint=hf_hub.endpoint
    )

    assert Path(default.checkpoint_dir).name == commit
    assert Path(wider.checkpoint_dir).name.startswith(f"{commit}-") and not wider.reused
    assert "README.md" in on_disk(Path(wider.checkpoint_dir))


def test_the_endpoint_defaults_to_huggingface_hubs_configuration(
    hf_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    use_default_endpoint(monkeypatch, hf_hub.endpoint)  # what HF_ENDPOINT does at import time

    record = hub_weights(hub_spec(tmp_path), None)

    assert record.revision == commit and hf_hub.count("GET", server="cdn") == 1


def test_a_dropped_connection_resumes_mid_file(
    hf_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub writes (and so can resume from) whole chunks only: 10 MB by default.
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 32 * 1024)
    hf_hub.add_repo(REPO, hub_files())
    hf_hub.drop_connection_once("model.safetensors", after_bytes=100_000)

    record = hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    weights = Path(record.checkpoint_dir) / "model.safetensors"
    assert weights.read_bytes() == tiny_model_files()["model.safetensors"]
    ranges = [r.headers.get("range") for r in hf_hub.matching("GET", server="cdn")]
    assert ranges == [None, "bytes=98304-"]  # the retry asked only for what was not yet written


def test_a_failed_attempt_publishes_nothing_and_the_retry_fetches_only_the_rest(
    hf_hub: FakeHub, tmp_path: Path
) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    hf_hub.fail_downloads("model.safetensors", status=503)
    spec = hub_spec(tmp_path)
    final = volume.checkpoint_dir(spec).parent / commit

    with pytest.raises(StepError) as failure:
        hub_weights(spec, None, endpoint=hf_hub.endpoint)

    assert not isinstance(failure.value, NonRetryableError)  # Airflow retries this one
    assert "503" in str(failure.value)
    assert not final.exists()
    assert leftovers(final.parent) == [f".partial-{commit}"]
    staged = on_disk(final.parent / f".partial-{commit}") - {"model.safetensors"}
    staged = {name for name in staged if not name.startswith(".cache")}
    assert staged == SELECTED - {"model.safetensors"}  # the rest finished and stays for the retry

    hf_hub.clear_failures()
    record = hub_weights(spec, None, endpoint=hf_hub.endpoint)

    assert record.checkpoint_dir == str(final) and volume.check_manifest(final, deep=True) == []
    for name in staged:  # fetched once, by the failed attempt
        assert hf_hub.count("GET", contains=f"/resolve/{commit}/{name}") == 1, name
    assert hf_hub.count("GET", server="cdn") == 2  # the failed weights request, then the good one
    assert leftovers(final.parent) == []


def test_the_right_token_opens_a_gated_repo_and_is_never_logged(hf_hub: FakeHub, tmp_path: Path, caplog) -> None:
    hf_hub.add_repo(REPO, hub_files(), gated=True)
    caplog.set_level(logging.DEBUG)

    record = hub_weights(hub_spec(tmp_path), FIXTURE_TOKEN, endpoint=hf_hub.endpoint)

    assert on_disk(Path(record.checkpoint_dir)) == SELECTED | {volume.MANIFEST}
    assert FIXTURE_TOKEN not in caplog.text
    assert FIXTURE_TOKEN not in json.dumps(record.to_xcom())
    assert FIXTURE_TOKEN not in (Path(record.checkpoint_dir) / volume.MANIFEST).read_text()
    hub_auth = {r.headers.get("authorization") for r in hf_hub.matching(server="hub")}
    assert hub_auth == {f"Bearer {FIXTURE_TOKEN}"}
    assert all("authorization" not in r.headers for r in hf_hub.matching(server="cdn"))


def test_a_selection_without_weights_fails_before_downloading(hf_hub: FakeHub, tmp_path: Path) -> None:
    files = {n: c for n, c in hub_files().items() if n != "model.safetensors"}
    hf_hub.add_repo(REPO, files)

    with pytest.raises(NonRetryableError) as failure:
        hub_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    message = str(failure.value)
    assert "no weights (*.safetensors or *.bin)" in message
    assert "found: config.json" in message and "not selected by hf_allow_patterns: " in message
    assert "pytorch_model.bin" in message
    assert hf_hub.file_requests() == []
