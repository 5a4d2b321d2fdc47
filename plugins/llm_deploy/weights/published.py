"""The record every weight source returns, for a checkpoint published on the volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm_deploy import volume
from llm_deploy.records import Record
from llm_deploy.spec import DeploySpec


@dataclass(frozen=True)
class WeightsRecord(Record):
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



def published_record(spec: DeploySpec, final: Path, *, revision: str | None, reused: bool) -> WeightsRecord:
    """Describe a directory published by volume.publish_dir, from its manifest."""
    manifest = volume.read_manifest(final) or {"files": {}}
    return WeightsRecord(
        checkpoint_dir=str(final),
        source=spec.model_source,
        model_id=spec.model_id,
        revision=revision,
        files=len(manifest["files"]),
        bytes=sum(meta["bytes"] for meta in manifest["files"].values()),
        manifest_sha256=volume.sha256_file(final / volume.MANIFEST),
        reused=reused,
    )
