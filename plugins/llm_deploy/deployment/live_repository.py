"""The deployment's Triton model repository: one set of composing models per version, and one
ensemble, the endpoint clients call, routed to the live set.

Triton keeps one config.pbtxt per model for all its versions, and candidates differ in exactly
what that config holds (the engine, max_batch_size, the batcher's knobs). So a version is not a
version directory of one model but a set of models of its own, ``<model>_v<N>``, copied from the
candidate's rendered repository with only their names changed. The ensemble, whose config is
rewritten to route to the live set, carries the version number clients see
(``version_policy: specific``, one empty version directory per version); each version's own
ensemble config is kept beside the repository (``ensembles/v<N>.pbtxt``), which is what
rollback routes back to. A version's files stay until retention drops the version.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from llm_deploy.errors import NonRetryableError
from llm_deploy.model_config import CONFIG, parse_model_config

log = logging.getLogger(__name__)

ENSEMBLE_PLATFORM = "ensemble"
REPOSITORY = "repository"
ENSEMBLES = "ensembles"


def versioned_name(model: str, version: int) -> str:
    return f"{model}_v{version}"


def candidate_models(candidate_repo: Path) -> tuple[str, list[str]]:
    """The candidate's ensemble and its composing models, in the ensemble's step order."""
    ensembles, others = [], []
    for config_path in sorted(Path(candidate_repo).glob(f"*/{CONFIG}")):
        config = parse_model_config(config_path)
        (ensembles if config.platform == ENSEMBLE_PLATFORM else others).append(config)
    if len(ensembles) != 1:
        raise NonRetryableError(
            f"{candidate_repo}: a deployment serves one ensemble in front of its models; this repository has "
            f"{len(ensembles)} (the llmapi flow serves tensorrt_llm alone, which promotion does not swap yet)")
    ensemble = ensembles[0]
    steps = list(dict.fromkeys(step.model_name for step in ensemble.ensemble_scheduling.step))
    missing = set(steps) - {c.name for c in others}
    if missing:
        raise NonRetryableError(f"{candidate_repo}: the ensemble calls {sorted(missing)}, which the repository lacks")
    return ensemble.name, steps


def add_version(directory: Path, candidate_repo: Path, version: int) -> tuple[str, dict[str, str]]:
    """Copy the candidate's composing models in as version ``version``: (the ensemble's name,
    {candidate model: its name in the live repository}).

    Each model is copied into a scratch directory and renamed into place, so a crash leaves
    either the whole model or a scratch directory that the next call clears.
    """
    from google.protobuf import text_format

    repo = Path(directory) / REPOSITORY
    repo.mkdir(parents=True, exist_ok=True)
    ensemble, steps = candidate_models(candidate_repo)
    names = {}
    for model in steps:
        live_name = versioned_name(model, version)
        final, scratch = repo / live_name, repo / f".{live_name}.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a half-finished earlier promotion of this number
        shutil.copytree(Path(candidate_repo) / model, scratch, symlinks=True)
        config = parse_config(scratch / CONFIG)  # named for its old directory: parse_model_config would refuse it
        config.name = live_name
        (scratch / CONFIG).write_text(f"# Copied by llm_deploy.deployment from {Path(candidate_repo) / model}; "
                                      "only the name differs.\n" + text_format.MessageToString(config))
        os.replace(scratch, final)
        names[model] = live_name
    templates = Path(directory) / ENSEMBLES
    templates.mkdir(exist_ok=True)
    shutil.copyfile(Path(candidate_repo) / ensemble / CONFIG, templates / f"v{version}.pbtxt")
    log.info("copied %s from %s in as version %d", ", ".join(names.values()), candidate_repo, version)
    return ensemble, names


def route_ensemble(directory: Path, ensemble: str, version: int, names: dict[str, str]) -> None:
    """Write the ensemble's config so that it routes to version ``version``'s models (its own
    ensemble config as the template: tensors and max_batch_size). The config it replaces is kept
    as ``config.pbtxt.previous`` for ``restore_ensemble``."""
    from google.protobuf import text_format

    config = parse_config(Path(directory) / ENSEMBLES / f"v{version}.pbtxt")
    for step in config.ensemble_scheduling.step:
        step.model_name = names[step.model_name]
        step.model_version = -1  # each version's models hold one version of their own
    config.version_policy.specific.versions[:] = [version]
    model_dir = Path(directory) / REPOSITORY / ensemble
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    current = model_dir / CONFIG
    if current.exists():
        shutil.copyfile(current, model_dir / f"{CONFIG}.previous")
    scratch = model_dir / f".{CONFIG}.tmp"
    scratch.write_text(f"# Routed by llm_deploy.deployment to version {version}.\n"
                       + text_format.MessageToString(config))
    os.replace(scratch, current)


def restore_ensemble(directory: Path, ensemble: str) -> None:
    """Put the ensemble's config back as it was before the last ``route_ensemble``."""
    model_dir = Path(directory) / REPOSITORY / ensemble
    previous = model_dir / f"{CONFIG}.previous"
    if previous.exists():
        os.replace(previous, model_dir / CONFIG)


def remove_version(directory: Path, ensemble: str, version: int, names: dict[str, str]) -> None:
    """Delete a version's files (its models must be unloaded)."""
    repo = Path(directory) / REPOSITORY
    for live_name in names.values():
        shutil.rmtree(repo / live_name, ignore_errors=True)
    shutil.rmtree(repo / ensemble / str(version), ignore_errors=True)
    (Path(directory) / ENSEMBLES / f"v{version}.pbtxt").unlink(missing_ok=True)


def parse_config(path: Path):
    """A config.pbtxt as Triton's ModelConfig, whatever directory it sits in."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config
