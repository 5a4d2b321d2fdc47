"""The engine cache: verified engines found again, leases of running servers, and retention.

An engine directory is named by the content hash of everything it depends on (``volume.engine_id``:
the spec's engine inputs, the sha256 of the checkpoint's manifest and the build target, so a host
finds only the engines its runtime and GPU type can load). verify_engine leaves a
``verified.json`` marker in it that names the manifest it verified, so an engine is a cache hit
only if it is published, its files still hash to that manifest, and the manifest is the one that
was verified. Then download, build and verify are skipped.

A server that serves an engine leaves a lease file in its directory (``lease-*.json``: host, pid,
the process's start time, run id); retention never removes a leased engine whose server is still
alive. Retention keeps the ``keep_engines`` most recently verified engines of a model (per
backend) and removes the others by renaming them to a trash name first, so a crash mid-delete
never leaves a half-deleted directory under an engine's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from llm_deploy import hosts, processes, volume
from llm_deploy.build_target import RuntimeMismatch
from llm_deploy.errors import BackendNotAvailable
from llm_deploy.processes import ProcessIdentity
from llm_deploy.records import engine_record
from llm_deploy.spec import DeploySpec

log = logging.getLogger(__name__)

MARKER = "verified.json"
LEASE_GLOB = "lease-*.json"
TRASH_PREFIX = ".trash-"
# A lease whose liveness cannot be checked here (another host, a container) is honoured this long.
FOREIGN_LEASE_TTL_S = 7 * 24 * 3600


# --- verified marker ----------------------------------------------------------------------------


def manifest_digest(directory: Path) -> str | None:
    try:
        return hashlib.sha256((Path(directory) / volume.MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def mark_verified(engine_dir: str | Path, record: dict) -> dict:
    """Record that the engine, exactly as its manifest describes it, passed verify_engine."""
    engine_dir = Path(engine_dir)
    marker = {"manifest_sha256": manifest_digest(engine_dir), "verified_unix": time.time(),
              "prompt": record.get("prompt"), "output_text": record.get("output_text")}
    tmp = engine_dir / f".{MARKER}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, engine_dir / MARKER)
    return marker


def verified_marker(engine_dir: str | Path, *, deep: bool = True) -> dict | None:
    """The marker of an intact, verified engine; None (with the reason logged) otherwise."""
    engine_dir = Path(engine_dir)
    try:
        marker = json.loads((engine_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("manifest_sha256") != manifest_digest(engine_dir):
        log.warning("%s: verified marker names another manifest: not a cache hit", engine_dir)
        return None
    problems = volume.check_manifest(engine_dir, deep=deep)
    if problems:
        log.warning("%s no longer matches its manifest (%s): not a cache hit", engine_dir, "; ".join(problems[:3]))
        return None
    return marker


def find_cached(spec: DeploySpec, token: str | None, *, endpoint: str | None = None) -> dict | None:
    """{"weights", "engine", "verified"} records of a verified engine for ``spec``, or None."""
    from llm_deploy.backends.registry import backend_for
    from llm_deploy.steps.download_weights import published_weights

    reason = backend_for(spec).engine_free_reason(spec)
    if reason:
        log.info("%s: nothing to cache, the checkpoint is checked and served as it is", reason)
        return None
    weights = published_weights(spec, token, endpoint=endpoint)
    if weights is None:
        log.info("no checkpoint for %s on the volume yet: nothing cached", spec.model_id)
        return None
    try:
        target = backend_for(spec).build_target(spec, "find_cached_engine")
    except (BackendNotAvailable, RuntimeMismatch) as exc:
        # Not a worker that can tell the target (its GPU, its image), or one whose runtime
        # build_wheel has yet to install: the build steps run where the target is known, and
        # build_engine still reuses a published engine of that target (or says what is wrong).
        log.info("cannot tell the build target here (%s): no cache lookup", exc)
        return None
    engine_dir = volume.engine_dir(spec, volume.weights_digest(weights.to_xcom()), target)
    if not engine_dir.is_dir():
        log.info("no engine %s built yet for %s", engine_dir.name, target.describe())
        return None
    marker = verified_marker(engine_dir)
    if marker is None:
        log.info("engine %s exists but is not verified and intact: it will be (re)built and verified", engine_dir.name)
        return None
    return {"weights": weights.to_xcom(), "engine": engine_record(spec, engine_dir, reused=True).to_xcom(),
            "verified": marker}


# --- leases -------------------------------------------------------------------------------------


def take_lease(engine_dir: str | Path, *, run_id: str, pid: int = 0, container_id: str = "",
               until_released: bool = False) -> Path:
    """Mark ``engine_dir`` as served by this run's server until ``release_lease``.

    ``until_released``: the lease holds until released, whatever its age (a deployment's
    container, which Docker restarts, and whose record releases its leases when it stops)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:100] or "run"
    path = Path(engine_dir) / f"lease-{name}.json"
    server = ProcessIdentity.of(pid) if pid else ProcessIdentity(0, None)
    lease = {"host": hosts.this_host(), **server.to_dict(),
             "container_id": container_id, "run_id": run_id, "created_unix": time.time(),
             **({"until_released": True} if until_released else {})}
    path.write_text(json.dumps(lease, indent=2))
    return path


def release_lease(engine_dir: str | Path, run_id: str) -> None:
    for path in Path(engine_dir).glob(LEASE_GLOB):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("run_id") == run_id:
                path.unlink()


@contextlib.contextmanager
def in_use(engine_dir: str | Path, what: str) -> Iterator[None]:
    """A lease held by this process while it uses the engine outside a server (verify_engine).

    A rebuilt request can reuse an engine verified long ago, which makes it one of retention's
    oldest candidates: without the lease, another run finishing its own verify removed it in
    the middle of this one's check. The lease names this process, so it ends with it on this
    host; other hosts honour it for FOREIGN_LEASE_TTL_S unless it is released.
    """
    name = f"{what}-{hosts.this_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    take_lease(engine_dir, run_id=name, pid=os.getpid())
    try:
        yield
    finally:
        release_lease(engine_dir, name)


def live_leases(engine_dir: str | Path) -> list[dict]:
    """Leases whose server may still run; stale ones (a dead pid on this host) are removed."""
    live = []
    for path, lease in _leases(engine_dir):
        if _lease_alive(lease):
            live.append(lease)
        else:
            log.info("removing stale lease %s (run %s, pid %s gone)", path.name, lease.get("run_id"), lease.get("pid"))
            path.unlink(missing_ok=True)
    return live


def holders(engine_dir: str | Path) -> list[dict]:
    """The leases whose server may still run, read only: for a view, which must change nothing."""
    return [lease for _, lease in _leases(engine_dir) if _lease_alive(lease)]


def _leases(engine_dir: str | Path) -> Iterator[tuple[Path, dict]]:
    for path in Path(engine_dir).glob(LEASE_GLOB):
        try:
            yield path, json.loads(path.read_text())
        except (OSError, ValueError):
            continue


def _lease_alive(lease: dict) -> bool:
    if lease.get("until_released"):
        return True
    if lease.get("host") == hosts.this_host() and lease.get("pid"):
        if "create_time" not in lease:  # written before leases named the process for good
            return processes.is_alive(int(lease["pid"]))
        return ProcessIdentity.from_dict(lease).alive()  # same pid, same process
    # Another host's process, or a container: not checkable from here.
    return time.time() - float(lease.get("created_unix", 0)) < FOREIGN_LEASE_TTL_S


# --- retention ----------------------------------------------------------------------------------


def apply_retention(spec: DeploySpec, current: str | Path) -> list[str]:
    """Keep the spec's ``keep_engines`` most recently verified engines of this model; remove the
    rest unless a live server holds them. Returns the removed directories."""
    if spec.keep_engines == 0:
        return []
    current = Path(current)
    verified = []
    for candidate in current.parent.iterdir():
        if candidate.name.startswith(".") or not candidate.is_dir():
            continue
        marker = verified_marker(candidate, deep=False)
        if marker is not None:
            verified.append((marker["verified_unix"], candidate))
    verified.sort(reverse=True)
    keep = {current} | {path for _, path in verified[: spec.keep_engines]}
    removed = []
    for _, path in verified:
        if path in keep:
            continue
        leases = live_leases(path)
        if leases:
            log.info("retention: keeping %s, served by run %s", path.name, leases[0].get("run_id"))
            continue
        size = discard(path)
        removed.append(str(path))
        log.info("retention (keep_engines=%d): removed %s, %.1f MiB freed", spec.keep_engines, path.name, size / 2**20)
    _remove_old_trash(current.parent)
    return removed


def discard(directory: Path) -> int:
    """Rename to a trash name (atomic), then delete; returns the bytes freed."""
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    trash = directory.parent / f"{TRASH_PREFIX}{directory.name}-{uuid.uuid4().hex[:8]}"
    os.rename(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return size


def _remove_old_trash(parent: Path) -> None:
    """Trash a crash left behind (its rename happened, the delete did not finish)."""
    for leftover in parent.glob(f"{TRASH_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
