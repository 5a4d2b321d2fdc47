"""The report view: what the engines volume holds, as web pages (FastAPI and Jinja2).

    /                          deployments, engines, benchmark reports, config comparisons
    /reports/<hash>/<run>      one benchmark report: levels, plots, HF baseline, regression
                               verdict, the server log's tail, a link to its Airflow run
    /matrix/<runs dir>         one config-matrix comparison: its table and plot
    /files/<path>              a plot, report or log on the volume (an allow-list of kinds)

Airflow's api-server serves it under ``llm_deploy.airflow.ui_plugin``'s prefix, behind
Airflow's own authentication (the plugin passes that in as ``dependencies``; this module knows
nothing of Airflow). It only reads the volume (``catalog``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_deploy.ui import catalog

# What /files serves: plots, reports and logs; never weights, engines or tokenizers' binaries.
SERVED_KINDS = {".png": "image/png", ".json": "application/json", ".md": "text/plain; charset=utf-8",
                ".log": "text/plain; charset=utf-8", ".pbtxt": "text/plain; charset=utf-8"}
RECENT_REPORTS = 50


def create_app(engines_root: Callable[[], Path], *, dependencies: Sequence = (), mounted_at: str = "") -> FastAPI:
    """``engines_root``: where the volume is, asked on every request (a test may move it).
    ``mounted_at``: the prefix the api-server mounts this app under; the Airflow UI is what is
    left of the request's root path without it."""
    app = FastAPI(title="LLM deployments", dependencies=list(dependencies),
                  docs_url=None, redoc_url=None, openapi_url=None)
    pages = _templates()

    def render(request: Request, template: str, status_code: int = 200, **values) -> HTMLResponse:
        here = request.scope.get("root_path", "").rstrip("/")
        airflow = here[: -len(mounted_at)] if mounted_at and here.endswith(mounted_at) else ""
        html = pages.get_template(template).render(here=here, airflow=airflow, root=str(engines_root()), **values)
        return HTMLResponse(html, status_code=status_code)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return render(request, "error.html", exc.status_code, status=exc.status_code, detail=exc.detail)

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request, run_id: str | None = None) -> HTMLResponse:
        """``run_id``: list only that Airflow run's reports (a task's link when it wrote none)."""
        root = engines_root()
        runs, deployed = catalog.reports(root), catalog.deployments(root)
        listed = [r for r in runs if run_id is None or r.run_id == run_id]
        return render(request, "overview.html", deployments=deployed,
                      engines=catalog.engines(root, runs=runs, deployed=deployed), run_id=run_id,
                      reports=listed[:RECENT_REPORTS], more_reports=max(0, len(listed) - RECENT_REPORTS),
                      matrices=catalog.matrices(root))

    @app.get("/reports/{engine_hash}/{run}", response_class=HTMLResponse)
    def benchmark_report(request: Request, engine_hash: str, run: str) -> HTMLResponse:
        page = _found(lambda: catalog.report(engines_root(), f"{engine_hash}/{run}"),
                      f"no benchmark report runs/{engine_hash}/{run} on the engines volume")
        return render(request, "report.html", page=page, report=page.report)

    @app.get("/matrix/{key}", response_class=HTMLResponse)
    def matrix_comparison(request: Request, key: str) -> HTMLResponse:
        found = _found(lambda: catalog.matrix(engines_root(), key),
                       f"no config comparison runs/{key} on the engines volume")
        return render(request, "matrix.html", matrix=found)

    @app.get("/files/{relative:path}")
    def volume_file(relative: str) -> FileResponse:
        path = _found(lambda: catalog.inside(engines_root(), relative), "")
        kind = SERVED_KINDS.get(path.suffix)
        if kind is None:
            raise HTTPException(404, f"{path.suffix or 'files without a suffix'}: not shown here "
                                     f"(plots, reports and logs only: {', '.join(SERVED_KINDS)})")
        if not path.is_file():
            raise HTTPException(404, f"{relative}: no such file on the engines volume")
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})

    return app


def _found(read: Callable, missing: str):
    try:
        value = read()
    except catalog.OutsideVolume as exc:
        raise HTTPException(400, f"refused: {exc}") from None
    if value is None:
        raise HTTPException(404, missing)
    return value


def _templates() -> Environment:
    env = Environment(loader=PackageLoader("llm_deploy.ui", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, num=_num, size=_size, q=lambda s: quote(str(s), safe=""))
    env.globals.update(figure=catalog.figure)
    return env


def _when(unix: float | None) -> str:
    return "-" if not unix else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def _num(value: float | None, digits: int = 1) -> str:
    # Anything but a number (None, a field an older report lacks) shows as "-".
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "-"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

