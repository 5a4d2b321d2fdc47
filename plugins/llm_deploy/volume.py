"""The shared engines volume: where each artifact lives, and how it is published safely.

Layout under ``engines_root`` (one tree that GPU workers, the server and the benchmark share):

    models/<org--name>/<revision>/         downloaded or converted HF checkpoints
    engines/<backend>/<org--name>/<id>/    built engines, named by engine_id (spec + weights)
    model_repos/<hash>/inflight_batcher_llm/  rendered Triton model repositories
    runs/<hash>/<run>/                     server logs and benchmark reports of one DAG run

Every directory a step produces is written under a hidden temporary name beside its final one
and renamed into place only when complete, with a manifest (sha256 per file) written last. A
reader therefore never sees a half-written engine under its final name, and a killed step leaves
only a ``.tmp-*`` directory that the next attempt removes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from llm_deploy import processes
from llm_deploy.build_target import BuildTarget
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"
_OWNER = ".owner"
_STALE_TMP_S = 24 * 3600


def checkpoint_dir(spec: DeploySpec) -> Path:
    if spec.model_source == "local":
        return spec.local_model_path()
    revision = "builtin" if spec.model_source == "builtin" else spec.model_revision.replace("/", "--")
    return spec.root / "models" / spec.model_slug / revision


def engine_id(spec: DeploySpec, weights_digest: str | None, target: BuildTarget) -> str:
    """The engine's content address: the spec's engine inputs, the exact weights it reads, and
    the target it is built for.

    The weights digest (sha256 of the checkpoint's manifest) matters when a branch such as
    "main" moves: the spec is unchanged, the weights are not, so the engine must be rebuilt. The
    target (runtime, image, GPU type) matters because an engine loads only there: hosts of
    different GPU types keep an engine each instead of taking one another's.
    """
    digest = hashlib.sha256(f"{spec.engine_hash}:{weights_digest or 'unversioned'}:{target.identity()}".encode())
    return digest.hexdigest()[:16]


def weights_digest(checkpoint: dict) -> str | None:
    """Identity of the weights an engine is built from: their manifest's hash, or for a user's
    unmanaged local dir (no intact manifest of ours) its path and files' fingerprint."""
    if checkpoint.get("manifest_sha256"):
        return checkpoint["manifest_sha256"]
    return f"{checkpoint['checkpoint_dir']}:{checkpoint.get('files_fingerprint') or ''}"


def model_engines_dir(spec: DeploySpec) -> Path:
    """Where the engines of the spec's model (and backend) live, one directory each."""
    return spec.root / "engines" / spec.backend / spec.model_slug


def engine_dir(spec: DeploySpec, weights_digest: str | None, target: BuildTarget) -> Path:
    return model_engines_dir(spec) / engine_id(spec, weights_digest, target)


def model_repo_dir(spec: DeploySpec) -> Path:
    return spec.root / "model_repos" / spec.engine_hash / "inflight_batcher_llm"


def run_dir(spec: DeploySpec, run_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:120] or "run"
    path = spec.root / "runs" / spec.engine_hash / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, extra: dict | None = None) -> dict:
    files = {
        str(p.relative_to(directory)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"files": files, **(extra or {})}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def served_engine_dir(model_repo: Path | str) -> str:
    """The engine a rendered model repository serves (its manifest's settings); "" in a flow
    that serves the checkpoint itself, or for a repository that is not ours."""
    return (read_manifest(Path(model_repo)) or {}).get("settings", {}).get("engine_dir") or ""


def read_tail(path: Path | str, max_bytes: int) -> str:
    """The last ``max_bytes`` of a text file (a server's log), "" if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - max_bytes))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def check_manifest(directory: Path, *, deep: bool = False) -> list[str]:
    """Problems with a published directory: missing manifest, missing/resized/corrupt files."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"{directory}: no readable {MANIFEST} (never completed, or not ours)"]
    problems = []
    for name, meta in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != meta["bytes"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {meta['bytes']}")
        elif deep and sha256_file(path) != meta["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    return problems


def is_published(directory: Path) -> bool:
    return directory.is_dir() and not check_manifest(directory)


@contextlib.contextmanager
def publish_dir(final: Path, manifest_extra: dict | None = None) -> Iterator[Path]:
    """Yield a scratch directory; on success write its manifest and rename it to ``final``.

    If another attempt published ``final`` meanwhile, that copy wins and ours is discarded (both
    were built from the same inputs). On any error the scratch directory is removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(final)
    scratch = final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    _claim(scratch)
    try:
        yield scratch
        (scratch / _OWNER).unlink()
        write_manifest(scratch, manifest_extra)
        if final.exists():
            if is_published(final):
                log.info("%s was published by another attempt; keeping it", final)
                shutil.rmtree(scratch)
                return
            log.warning("replacing incomplete %s", final)
            shutil.rmtree(final)
        os.rename(scratch, final)
        log.info("published %s", final)
    except BaseException as exc:
        full = _is_out_of_space(exc)
        written = _tree_bytes(scratch) if full else 0
        shutil.rmtree(scratch, ignore_errors=True)
        if full:
            raise _volume_full(final, written) from exc
        raise


def _is_out_of_space(exc: BaseException) -> bool:
    """ENOSPC, also when a library wraps it (safetensors raises "... (os error 28)")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _volume_full(final: Path, written: int) -> NonRetryableError:
    """Not retried: rewriting the same bytes onto the same full volume fails the same way, and
    only someone (or the retention of old engines) freeing space changes that."""
    usage = shutil.disk_usage(final.parent)
    return NonRetryableError(
        f"the engines volume is full: no space left on device while writing {final} "
        f"(needs more than {_human(written)}: that much was written before the volume filled; "
        f"{_human(usage.free)} free of {_human(usage.total)} now that the partial copy is removed). "
        "Free space (delete unused engines under engines/, or let retention do it) or grow the volume, "
        "then rerun this step")


def _tree_bytes(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _remove_stale_scratch(final: Path) -> None:
    """Remove scratch dirs that killed attempts left for this target, never a live writer's."""
    for leftover in final.parent.glob(f"{_TMP_PREFIX}{final.name}-*"):
        if _is_abandoned(leftover):
            log.info("removing scratch %s left by an interrupted attempt", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _claim(scratch: Path) -> None:
    (scratch / _OWNER).write_text(f"{socket.gethostname()} {os.getpid()}")


def _is_abandoned(scratch: Path) -> bool:
    try:
        host, pid = (scratch / _OWNER).read_text().split()
    except (OSError, ValueError):
        host, pid = "", "0"
    if host == socket.gethostname():
        return not processes.is_alive(int(pid))
    # Another worker's scratch: only its age tells whether that worker died.
    return time.time() - scratch.stat().st_mtime > _STALE_TMP_S
