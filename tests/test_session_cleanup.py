"""A test session stopped by SIGTERM (CI's timeout, `kill`) cleans up as one that ends: the project's
conftest.py stops its MLflow server by process id and removes the server's temporary folder.

In one process the default SIGTERM would end pytest on the spot, its server left running. Under xdist
the workers own the servers: the controller passes the SIGTERM on to them, so each ends its session
(its server stopped) before xdist stops it, and ends itself as after Ctrl-C (exit code 2). Without
that, xdist killed workers that were busy, and their servers stayed (seen in CI)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from paths import ROOT

from mlops_day28.reliability.processes import stop_process

pytestmark = [pytest.mark.slow, pytest.mark.server]  # each session starts an MLflow server of its own

HOLDS_THE_SESSION = """
import json, os, pathlib, time

import pytest


@pytest.fixture
def tracking_uri():  # its name is what makes the project's conftest.py start the session's server
    return os.environ["MLFLOW_TRACKING_URI"]


def test_holds_the_session(request, tracking_uri):
    server, root = request.config._mlops_server  # what the project's conftest.py started for this session
    pathlib.Path(os.environ["STARTED"]).write_text(json.dumps({"root": root, "pids": server.pids}))
    time.sleep(300)  # until the SIGTERM
"""


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["one process", "xdist"])
def test_sigterm_stops_the_session_server_and_removes_its_folder(tmp_path, workers):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # this folder is the session's root, not the project
    (tmp_path / "test_holds.py").write_text(HOLDS_THE_SESSION)
    started = tmp_path / "started.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_TEAM", "PYTEST_"))}
    env.update(STARTED=str(started), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", *workers, "test_holds.py"]
    # its own session: the SIGTERM goes to the pytest process alone, as `kill PID` sends it
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    record = None
    try:
        assert _wait(lambda: started.exists() or proc.poll() is not None, 180), "the session never started its test"
        assert proc.poll() is None, proc.communicate(timeout=30)[0]
        time.sleep(0.5)  # the file is written whole: json.dumps before write_text
        record = json.loads(started.read_text())
        assert Path(record["root"]).is_dir() and _alive(record["pids"])
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
        assert _wait(lambda: not _alive(record["pids"]), 15), f"server processes left: {_alive(record['pids'])}\n{out}"
        assert not Path(record["root"]).exists(), out
        assert proc.returncode == pytest.ExitCode.INTERRUPTED, out  # as after Ctrl-C
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        if record:  # what the session left, if it did: stopped by process id, the folder removed
            for pid in _alive(record["pids"]):
                stop_process(pid)
            shutil.rmtree(record["root"], ignore_errors=True)
