"""scripts/ui.sh, README's way to open the UI after the quick start: it comes up on loopback with
a login that works, and Ctrl-C leaves nothing of it running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.airflow_stack import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UI = Path(__file__).resolve().parents[2] / "scripts" / "ui.sh"


def processes_of(airflow_home: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AIRFLOW_HOME") == str(airflow_home):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def as_in_a_terminal() -> None:
    """Ctrl-C's signal at its default, as in the terminal a person runs ui.sh from. A test run
    started in the background (``cmd &`` in a script) ignores SIGINT and would hand that down,
    and bash cannot trap a signal that was ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_ui_comes_up_on_loopback_with_its_login_and_stops_on_ctrl_c(tmp_path):
    home, port = tmp_path / "airflow", free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "LLM_DEPLOY_UI_PORT": str(port),
           "LLM_DEPLOY_ENGINES_ROOT": str(tmp_path / "engines")}
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW__")}
    ui = subprocess.Popen(["bash", str(UI)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True, preexec_fn=as_in_a_terminal)
    try:
        shown, up = [], None
        deadline = time.monotonic() + 200
        while up is None and time.monotonic() < deadline:
            line = ui.stdout.readline()
            if not line:
                break
            shown.append(line)
            up = re.search(r"Airflow is up at (http://127\.0\.0\.1:\d+)\s+\(user: admin, password: (\S+)\)", line)
        assert up, "".join(shown[-40:])
        url, password = up.groups()
        assert url == f"http://127.0.0.1:{port}"

        token = httpx.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=10)
        assert token.status_code == 201, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        pools = httpx.get(f"{url}/api/v2/pools/gpu", headers=headers, timeout=10)
        assert pools.status_code == 200 and pools.json()["slots"] == 1
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}

        os.killpg(ui.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        assert ui.wait(60) is not None
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
        # The components run in sessions of their own: whatever ui.sh left goes, pass or fail.
        left = processes_of(home)
        for process in left:
            process.kill()
    assert not left, [p.cmdline() for p in left]
