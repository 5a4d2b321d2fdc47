"""What the engines volume holds, as the report view shows it: engines, deployments, benchmark
reports and config-matrix comparisons.

Read only: nothing here writes, renames or removes (not even a stale lease, which the steps
clean up). Every path a request names goes through ``inside``, which refuses whatever would leave
``engines_root``: absolute paths, ``..``, and symlinks that point out of the volume. Records
written by other versions of this project, or half-written by a killed step, are skipped or shown
as unreadable, never raised: one bad file must not take the whole view down.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from llm_deploy import engine_cache, volume
from llm_deploy.bench.report import REPORT_NAME, figure
from llm_deploy.deployment import record as deployment_record
from llm_deploy.matrix import COMPARISON_JSON, COMPARISON_PNG, MATRIX_DIR_PREFIX

log = logging.getLogger(__name__)

RUNS, ENGINES, DEPLOYMENTS = "runs", "engines", "deployments"
# One path segment of a key (an engine hash, a run's directory, a matrix directory).
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,159}$")
LOG_TAIL_BYTES = 16 * 1024
LOG_TAIL_LINES = 60


class OutsideVolume(ValueError):
    """A requested path that does not lie inside the engines volume."""


def inside(root: Path, relative: str) -> Path:
    """``relative`` resolved under ``root``; OutsideVolume for anything that would leave it."""
    rel = PurePosixPath(relative)
    if not relative or "\x00" in relative or "\\" in relative or rel.is_absolute() or ".." in rel.parts:
        raise OutsideVolume(f"{relative!r} is not a path inside the engines volume")
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):  # a symlink on the volume that points out of it
        raise OutsideVolume(f"{relative!r} leads out of the engines volume")
    return path


def segment(value: str) -> str:
    if not _SEGMENT.match(value):
        raise OutsideVolume(f"{value!r} is not a name on the engines volume")
    return value


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _engine_key(engine_dir: str) -> str:
    """backend/model/id, the same on every host whatever its mount point of the volume."""
    return "/".join(PurePosixPath(engine_dir).parts[-3:]) if engine_dir else ""


# --- benchmark reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportEntry:
    key: str  # "<engine hash>/<run directory>" under runs/
    run_id: str
    engine_hash: str
    created_unix: float
    model: str
    backend: str
    concurrency: int | None
    output_token_throughput_per_s: float | None
    time_to_first_token_p50_ms: float | None
    regressions: int | None  # None: no earlier run of the same load to compare with
    verdict: str  # "first of its load", "no regression", "N regressed", "inconclusive"
    engine_key: str  # backend/model/id of the engine served; "" for older reports
    airflow: dict | None  # dag_id, run_id, task_id


def reports(root: Path) -> list[ReportEntry]:
    """Every benchmark report on the volume, newest first."""
    entries = []
    for path in Path(root, RUNS).glob(f"*/*/{REPORT_NAME}"):
        entry = _report_entry(path)
        if entry is not None:
            entries.append(entry)
    return sorted(entries, key=lambda e: e.created_unix, reverse=True)


def _report_entry(path: Path) -> ReportEntry | None:
    report = _json(path)
    if not isinstance(report, dict) or not isinstance(report.get("streaming"), dict):
        return None
    headline, spec = report["streaming"], report.get("spec") or {}
    regression = report.get("regression")
    return ReportEntry(
        key=f"{path.parent.parent.name}/{path.parent.name}", run_id=str(report.get("run_id", "")),
        engine_hash=str(report.get("engine_hash", "")), created_unix=float(report.get("created_unix") or 0),
        model=str(spec.get("model_id", "")), backend=str(spec.get("backend", "")),
        concurrency=headline.get("concurrency"),
        output_token_throughput_per_s=headline.get("output_token_throughput_per_s"),
        time_to_first_token_p50_ms=figure(headline, "time_to_first_token_ms", "p50"),
        regressions=len(regression["regressions"]) if isinstance(regression, dict) else None,
        verdict=_verdict(regression),
        engine_key=_engine_key((report.get("served") or {}).get("engine_dir", "")),
        airflow=report.get("airflow"))


def _verdict(regression: dict | None) -> str:
    if not isinstance(regression, dict):
        return "first of its load"
    if regression.get("verdict") == "inconclusive":
        return "inconclusive"
    count = len(regression.get("regressions", []))
    return f"{count} regressed" if count else "no regression"


@dataclass(frozen=True)
class ReportPage:
    entry: ReportEntry
    report: dict
    plots: list[str]  # paths relative to the volume, for the files route
    previous_key: str | None  # the report the regression verdict compared with, if on this volume
    log_tail: str
    log_path: str  # relative to the volume; "" if the run left no log here


def report(root: Path, key: str) -> ReportPage | None:
    """The report ``<engine hash>/<run directory>``; None if there is none (OutsideVolume if
    the key leaves the volume)."""
    engine_hash, _, run = key.partition("/")
    directory = inside(root, f"{RUNS}/{segment(engine_hash)}/{segment(run)}")
    entry = _report_entry(directory / REPORT_NAME)
    if entry is None:
        return None
    data = _json(directory / REPORT_NAME)
    rel = f"{RUNS}/{engine_hash}/{run}"
    # Plots by name in the report's own directory: the worker's absolute paths may be another
    # mount point of the same volume.
    plots = [f"{rel}/{Path(p).name}" for p in (data.get("artifacts") or {}).get("plots", [])
             if (directory / Path(p).name).is_file()]
    previous = (data.get("regression") or {}).get("previous_report") or ""
    previous_key = "/".join(PurePosixPath(previous).parts[-3:-1]) if previous else None
    if previous_key and not (Path(root) / RUNS / previous_key / REPORT_NAME).is_file():
        previous_key = None
    log_name = Path((data.get("served") or {}).get("log_path") or "tritonserver.log").name
    log_file = directory / log_name
    return ReportPage(entry=entry, report=data, plots=plots, previous_key=previous_key,
                      log_tail=tail(log_file), log_path=f"{rel}/{log_name}" if log_file.is_file() else "")


def tail(path: Path, max_bytes: int = LOG_TAIL_BYTES, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(volume.read_tail(path, max_bytes).splitlines()[-lines:])


# --- engines --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineEntry:
    key: str  # backend/model/id under engines/
    backend: str
    model: str
    engine_id: str
    runtime: str  # the release that built it ("tensorrt_llm 0.19.0", "torch 2.13.0+cpu")
    image: str
    gpu: str
    dtype: str
    max_batch_size: int | None
    world_size: int | None
    size_bytes: int
    verified_unix: float | None
    held_by: list[str]  # run ids of the servers that hold a lease on it now
    served_in: list[ReportEntry] = field(default_factory=list)  # its benchmark reports, newest first
    deployed_as: list[str] = field(default_factory=list)  # "deployment vN"


def engines(root: Path, *, runs: list[ReportEntry] | None = None,
            deployed: list[DeploymentEntry] | None = None) -> list[EngineEntry]:
    """The published engines, newest verification first (unverified ones last).

    ``runs`` and ``deployed``: the volume's reports and deployments, when the caller has read
    them already (they are matched to the engines they served)."""
    runs = reports(root) if runs is None else runs
    deployed = deployments(root) if deployed is None else deployed
    entries = []
    for directory in Path(root, ENGINES).glob("*/*/*"):
        manifest = volume.read_manifest(directory) if directory.is_dir() else None
        if not manifest:
            continue  # scratch dirs, trash, half-written or foreign directories
        config = manifest.get("engine_config") or {}
        target = config.get("build_target") or {}
        key = "/".join(directory.parts[-3:])
        marker = _json(directory / engine_cache.MARKER) or {}
        spec = config.get("spec") or {}
        served = [r for r in runs if r.engine_key == key
                  or (not r.engine_key and r.engine_hash and r.engine_hash == config.get("spec_hash"))]
        entries.append(EngineEntry(
            key=key, backend=directory.parts[-3],
            model=str(spec.get("model") or directory.parts[-2].replace("--", "/")),
            engine_id=directory.name, runtime=str(target.get("runtime", "")), image=str(target.get("image", "")),
            gpu=str(target.get("gpu", "")), dtype=str(config.get("dtype", "")),
            max_batch_size=config.get("max_batch_size"), world_size=config.get("world_size"),
            size_bytes=sum(int(meta.get("bytes", 0)) for meta in manifest.get("files", {}).values()),
            verified_unix=marker.get("verified_unix"),
            held_by=sorted(str(lease.get("run_id", "")) for lease in engine_cache.holders(directory)),
            served_in=served,
            deployed_as=[f"{d.name} v{v['version']}" for d in deployed for v in d.versions
                         if v.get("engine_id") == directory.name]))
    return sorted(entries, key=lambda e: (e.verified_unix is not None, e.verified_unix or 0), reverse=True)


# --- deployments ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentEntry:
    name: str
    backend: str
    state: str
    live: int
    url: str
    live_since_unix: float | None
    live_run_id: str
    live_engine_id: str
    versions: list[dict]
    problem: str = ""  # why the record could not be read


def deployments(root: Path) -> list[DeploymentEntry]:
    entries = []
    for directory in sorted(Path(root, DEPLOYMENTS).glob("*")):
        if not (directory / deployment_record.RECORD).is_file():
            continue
        try:
            found = deployment_record.read(directory)
        except Exception as exc:  # noqa: BLE001 - shown in the view, never fatal to it
            entries.append(DeploymentEntry(directory.name, "", "unreadable", 0, "", None, "", "", [], str(exc)))
            continue
        versions = [vars(v) for v in found.versions]
        live = next((v for v in found.versions if v.version == found.live), None)  # retention may have dropped it
        entries.append(DeploymentEntry(
            name=found.name, backend=found.backend, state=found.state, live=found.live,
            url=found.http_url,
            live_since_unix=found.live_since_unix or None, live_run_id=found.live_run_id,
            live_engine_id=live.engine_id if live else "", versions=versions))
    return entries


# --- config-matrix comparisons --------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixEntry:
    key: str  # its directory under runs/
    run_id: str
    rows: list[dict]
    plot: str  # relative to the volume; "" if missing
    best: dict | None  # the row with the highest throughput


def matrices(root: Path) -> list[MatrixEntry]:
    """Every comparison of a benchmark_llm_engines run, newest first."""
    found = [matrix(root, d.name) for d in Path(root, RUNS).glob(f"{MATRIX_DIR_PREFIX}*") if d.is_dir()]
    return sorted((m for m in found if m is not None), key=lambda m: m.key, reverse=True)


def matrix(root: Path, key: str) -> MatrixEntry | None:
    directory = inside(root, f"{RUNS}/{segment(key)}")
    data = _json(directory / COMPARISON_JSON)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        return None
    rows = data["rows"]
    for row in rows:  # each config's benchmark report, as a key of this view when it is on the volume
        path = PurePosixPath(str(row.get("report_path", "")))
        candidate = "/".join(path.parts[-3:-1])
        row["report_key"] = candidate if (Path(root) / RUNS / candidate / REPORT_NAME).is_file() else None
    measured = [r for r in rows if r.get("throughput") is not None]
    plot = directory / COMPARISON_PNG
    return MatrixEntry(key=key, run_id=str(data.get("run_id", "")), rows=rows,
                       plot=f"{RUNS}/{key}/{COMPARISON_PNG}" if plot.is_file() else "",
                       best=max(measured, key=lambda r: r["throughput"]) if measured else None)
