"""model_source='huggingface': a snapshot of ``model_id`` published as ``models/<slug>/<commit sha>``.

The revision is resolved to its commit first, so a branch that moves gets a new directory instead
of silently mixing two commits, and a pinned commit that is already published needs no network.

The Hub token is only ever handed to huggingface_hub: it is not logged, not put in argv, not
stored in the record, and never part of an error message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.spec import DeploySpec
from llm_deploy.weights.checkpoint import files_under, listing, require_checkpoint
from llm_deploy.weights.hub_errors import hub_call
from llm_deploy.weights.progress import log_bar_class
from llm_deploy.weights.published import WeightsRecord, published_record

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
# huggingface_hub keeps its per-file download state (metadata, locks, temp files) here in local_dir.
_HF_STATE_DIR = ".cache"
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_DEFAULT_PATTERNS = DeploySpec.model_fields["hf_allow_patterns"].default_factory()  # type: ignore[misc]
_MAX_WORKERS = 8


def hub_weights(
    spec: DeploySpec, token: str | None, *, endpoint: str | None = None, progress_every_bytes: int = 512 * 2**20
) -> WeightsRecord:
    """Download the spec's revision (the files hf_allow_patterns select) and publish it, once."""
    parent = volume.checkpoint_dir(spec).parent
    if _COMMIT_SHA.match(spec.model_revision):
        # A commit never changes, so a published copy answers without asking the Hub (offline reruns).
        pinned = parent / _dir_name(spec.model_revision, spec.hf_allow_patterns)
        if volume.is_published(pinned):
            return _reuse(spec, pinned, spec.model_revision)

    info = _resolve_revision(spec, token, endpoint)
    commit = str(info.sha)
    final = parent / _dir_name(commit, spec.hf_allow_patterns)
    if volume.is_published(final):
        return _reuse(spec, final, commit)

    expected = _selected_files(info, spec.hf_allow_patterns)
    require_checkpoint(
        [name for name in expected if "/" not in name],
        where=f"model {spec.model_id}@{commit[:12]} (files matching hf_allow_patterns {spec.hf_allow_patterns})",
        others=[s.rfilename for s in info.siblings or [] if s.rfilename not in expected],
    )
    _download_and_publish(spec, commit, expected, final, token, endpoint, progress_every_bytes)
    return published_record(spec, final, revision=commit, reused=False)


def published_hub(spec: DeploySpec, token: str | None, *, endpoint: str | None = None) -> WeightsRecord | None:
    """The published snapshot of the spec's revision, or None; never downloads.

    One revision lookup at most (none for a pinned commit that is published); any Hub error means
    "not known to be cached", and the download step reports it.
    """
    parent = volume.checkpoint_dir(spec).parent
    if _COMMIT_SHA.match(spec.model_revision):
        commit = spec.model_revision
    else:
        try:
            commit = str(_resolve_revision(spec, token, endpoint).sha)
        except Exception as exc:  # noqa: BLE001 - the download step says what is wrong with the Hub
            log.info("cannot tell whether %s@%s is cached (%s)", spec.model_id, spec.model_revision, exc)
            return None
    final = parent / _dir_name(commit, spec.hf_allow_patterns)
    return published_record(spec, final, revision=commit, reused=True) if volume.is_published(final) else None


def _auth(token: str | None) -> str | bool:
    # False, not None: None would make huggingface_hub fall back to HF_TOKEN or a token file on
    # the worker, and the Airflow connection is meant to be the only source of credentials.
    return token or False


def _resolve_revision(spec: DeploySpec, token: str | None, endpoint: str | None) -> Any:
    """The Hub's ModelInfo at the spec's revision: its commit sha and file list with sizes."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=_auth(token), library_name="llm-deploy")
    info = hub_call(
        spec,
        lambda: api.model_info(spec.model_id, revision=spec.model_revision, files_metadata=True, token=_auth(token)),
        token,
    )
    if not info.sha:
        raise StepError(f"the Hub did not say which commit {spec.model_revision!r} of {spec.model_id} is")
    return info


def _download_and_publish(
    spec: DeploySpec, commit: str, expected: dict[str, int | None], final: Path,
    token: str | None, endpoint: str | None, progress_every_bytes: int,
) -> None:
    staging = final.parent / f"{PARTIAL_PREFIX}{final.name}"
    total = sum(size or 0 for size in expected.values())
    log.info(
        "downloading %d files (%s) of %s at %s (revision %r) into %s: %s",
        len(expected), tqdm.format_sizeof(total, "B", 1000), spec.model_id, commit, spec.model_revision,
        staging, listing(expected),
    )
    try:
        hub_call(spec, lambda: _snapshot(spec, commit, staging, token, endpoint, progress_every_bytes), token)
    except NonRetryableError:
        # No retry will resume it, and these errors (access, a vanished revision) strike before
        # any file arrives; keep the volume clean.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _require_complete(staging, expected)
    _publish_staged(staging, final, {
        "source": "huggingface",
        "model_id": spec.model_id,
        "revision": spec.model_revision,
        "commit": commit,
        "allow_patterns": list(spec.hf_allow_patterns),
    })


def _snapshot(
    spec: DeploySpec, commit: str, staging: Path, token: str | None, endpoint: str | None, progress_every_bytes: int
) -> None:
    """Download into a staging dir that outlives a failed attempt, so a retry resumes.

    The staging dir is named by the commit (not random like publish_dir's scratch) precisely so
    the next attempt finds it: huggingface_hub skips every file of ``local_dir`` whose recorded
    commit matches, so a retry only fetches what the failed attempt had not finished. Within one
    attempt, a dropped connection is resumed mid-file with a Range request (up to 5 times). Note
    that huggingface_hub 2.x downloads each file to a process-unique temp file and deletes it on
    failure, so across attempts the unit of resume is the completed file, not the byte. Only when
    every file is there is the directory published under its final name, so readers never see a
    partial snapshot.

    Progress goes through ``tqdm_class`` rather than calling hf_hub_download file by file, which
    keeps snapshot_download's parallel workers and its handling of Xet storage, redirects and retries.
    """
    from huggingface_hub import snapshot_download

    snapshot_download(
        spec.model_id,
        revision=commit,
        local_dir=staging,
        allow_patterns=list(spec.hf_allow_patterns),
        token=_auth(token),
        endpoint=endpoint,
        max_workers=_MAX_WORKERS,
        tqdm_class=log_bar_class(progress_every_bytes),  # type: ignore[arg-type]
        library_name="llm-deploy",
    )


def _reuse(spec: DeploySpec, final: Path, commit: str) -> WeightsRecord:
    log.info("%s at %s already downloaded and intact: reusing %s", spec.model_id, commit, final)
    return published_record(spec, final, revision=commit, reused=True)


def _dir_name(commit: str, patterns: Iterable[str]) -> str:
    """The commit names the dir; a non-default file selection gets its own dir beside it.

    Otherwise a snapshot published with narrower patterns (say, no tokenizer.model) would be
    reused, silently, by a run that asked for more files of the same commit.
    """
    chosen = sorted(set(patterns))
    if chosen == sorted(set(_DEFAULT_PATTERNS)):
        return commit
    digest = hashlib.sha256("\n".join(chosen).encode()).hexdigest()[:8]
    return f"{commit}-{digest}"


def _selected_files(info: Any, patterns: list[str]) -> dict[str, int | None]:
    """Name -> size of the repo files snapshot_download will fetch (same filter as it uses)."""
    from huggingface_hub.utils import filter_repo_objects

    sizes = {s.rfilename: s.size for s in info.siblings or []}
    return {name: sizes[name] for name in filter_repo_objects(list(sizes), allow_patterns=patterns)}


def _require_complete(staging: Path, expected: dict[str, int | None]) -> None:
    """The Hub listed these files; anything missing or short means the transfer did not finish."""
    problems = []
    for name, size in expected.items():
        path = staging / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif size is not None and path.stat().st_size != size:
            problems.append(f"{name}: {path.stat().st_size} bytes, the Hub lists {size}")
    if problems:
        raise StepError(f"the download into {staging} is incomplete ({'; '.join(problems[:10])}); a retry resumes it")


def _publish_staged(staging: Path, final: Path, manifest_extra: dict) -> None:
    """Publish the staged files atomically, then drop the staging dir.

    Files are hard-linked rather than moved: if this process dies while publish_dir hashes a
    multi-GB snapshot, the staging dir is still whole and the retry only re-hashes it.
    """
    with volume.publish_dir(final, manifest_extra) as scratch:
        for source in files_under(staging, skip_top=(_HF_STATE_DIR,)):
            target = scratch / source.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_move(source, target)
    shutil.rmtree(staging, ignore_errors=True)


def _link_or_move(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # some network filesystems refuse hard links; a rename is still cheap
        os.replace(source, target)
