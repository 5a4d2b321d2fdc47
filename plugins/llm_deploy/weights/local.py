"""model_source='local': a checkpoint the user already put on the volume; checked, never written to."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from tqdm import tqdm

from llm_deploy import volume
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec
from llm_deploy.weights.checkpoint import files_under, require_checkpoint, top_level_names
from llm_deploy.weights.published import WeightsRecord

log = logging.getLogger(__name__)


def local_weights(spec: DeploySpec) -> WeightsRecord:
    """Describe ``model_local_dir`` as is, or fail for good if it is not a checkpoint."""
    path = spec.local_model_path()
    if not path.is_dir():
        raise NonRetryableError(
            f"model_local_dir={spec.model_local_dir!r}: {path} does not exist on this worker or is "
            "not a directory; put a Hugging Face checkpoint there (config.json + weights) first"
        )
    require_checkpoint(top_level_names(path), where=f"model_local_dir {path}")
    sizes = [p.stat().st_size for p in files_under(path)]
    manifest = path / volume.MANIFEST
    intact = manifest.is_file() and not volume.check_manifest(path)
    if manifest.is_file() and not intact:
        log.warning("%s: its %s no longer matches the files; identifying it by their names, sizes and "
                    "mtimes instead", path, volume.MANIFEST)
    log.info("using the local checkpoint %s as is (%d files, %s)", path, len(sizes),
             tqdm.format_sizeof(sum(sizes), "B", 1000))
    return WeightsRecord(
        checkpoint_dir=str(path),
        source="local",
        model_id=None,
        revision=None,
        files=len(sizes),
        bytes=sum(sizes),
        manifest_sha256=volume.sha256_file(manifest) if intact else None,
        reused=True,
        files_fingerprint=None if intact else _fingerprint(path),
    )


def published_local(spec: DeploySpec) -> WeightsRecord | None:
    """The local checkpoint's record, or None when it is not (yet) a usable checkpoint."""
    try:
        return local_weights(spec)
    except NonRetryableError:
        return None


def _fingerprint(root: Path) -> str:
    """Cheap identity of an unmanaged dir (no reading of the weights): every file's path, size, mtime."""
    digest = hashlib.sha256()
    for path in files_under(root):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
