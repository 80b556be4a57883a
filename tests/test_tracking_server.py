"""The local MLflow server: started once, reused, refused on a foreign port, stopped by process id; why one is silent."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_day28 import cli
from mlops_day28.config import InputError
from mlops_day28.reliability import local_server
from mlops_day28.reliability.local_server import (
    TrackingServerError,
    ensure_tracking_server,
    find_tracking_server,
    silent_server,
    start_tracking_server,
    stop_tracking_server,
)
from mlops_day28.reliability.processes import free_port, is_running, port_is_open

MLOPS_MLFLOW = str(Path(sys.executable).parent / "mlops-mlflow")


def run_cli(*args, cwd, port):
    env = {**os.environ, "MLFLOW_PORT": str(port)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([MLOPS_MLFLOW, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=180)


@pytest.mark.server
@pytest.mark.slow
def test_cli_start_status_stop_by_recorded_pid(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")  # a project of its own: state goes to tmp_path/.mlflow
    port = free_port()
    r = run_cli("start", cwd=tmp_path, port=port)
    assert r.returncode == 0, r.stderr
    assert f"MLflow server started: http://127.0.0.1:{port}" in r.stdout
    record = json.loads((tmp_path / ".mlflow" / "server.json").read_text())
    pid = record["pid"]
    try:
        assert is_running(pid) and port_is_open(port)
        assert (tmp_path / ".mlflow" / "mlflow.db").exists()
        again = run_cli("start", cwd=tmp_path, port=port)
        assert "already running" in again.stdout
        status = run_cli("status", cwd=tmp_path, port=port)
        assert status.returncode == 0 and f"(pid {pid})" in status.stdout
    finally:
        stop = run_cli("stop", cwd=tmp_path, port=port)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not is_running(pid) and not port_is_open(port)
    assert not (tmp_path / ".mlflow" / "server.json").exists()
    assert run_cli("status", cwd=tmp_path, port=port).returncode == 1
    assert "no running MLflow server recorded in .mlflow/server.json" in run_cli("stop", cwd=tmp_path, port=port).stdout


def test_stale_record_never_kills_another_program(tmp_path):
    """A pid in .mlflow/server.json that now belongs to something else is not signalled."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / ".mlflow").mkdir()
        (tmp_path / ".mlflow" / "server.json").write_text(json.dumps({"uri": "http://127.0.0.1:1", "pid": other.pid}))
        assert stop_tracking_server(tmp_path) is False
        assert other.poll() is None  # still running
        assert not (tmp_path / ".mlflow" / "server.json").exists()  # the stale record is gone
    finally:
        other.kill()
        other.wait()


@pytest.mark.server
def test_second_server_on_another_port_is_refused(tmp_path, request, tracking_uri):
    "A project whose recorded server runs (here: the session's, recorded in this project too) gets no second one."
    session = getattr(request.config, "_mlops_server", None)  # None when MLFLOW_TRACKING_URI came from outside
    first = session[0] if session else start_tracking_server(port=free_port(), root=tmp_path)
    try:
        (tmp_path / ".mlflow").mkdir(exist_ok=True)
        (tmp_path / ".mlflow" / "server.json").write_text(json.dumps({"uri": first.uri, "pid": first.pid}))
        with pytest.raises(TrackingServerError, match=f"already running at {first.uri}"):
            start_tracking_server(port=free_port(), root=tmp_path)
    finally:
        if not session:
            assert stop_tracking_server(tmp_path)


def test_port_held_by_something_else_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(local_server, "HEALTH_TIMEOUT", 0.2)  # what holds the port never answers: no need to wait 2 s
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli.mlflow(["start", "--port", str(port), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"port {port} on 127.0.0.1 is in use by something that is not an MLflow server" in err
    assert f"MLFLOW_PORT={port + 1}" in err
    assert not (tmp_path / ".mlflow" / "server.json").exists()


def test_bad_mlflow_port_is_bad_input(monkeypatch):
    monkeypatch.setenv("MLFLOW_PORT", "five")
    with pytest.raises(InputError, match="MLFLOW_PORT='five' is not a port number"):
        start_tracking_server()


def test_tracking_uri_that_is_down_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TrackingServerError, match="does not answer as an MLflow server"):
        ensure_tracking_server()


def test_a_given_tracking_uri_is_used_not_started(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    server = ensure_tracking_server(tmp_path)
    assert server.uri == tracking_uri and not server.started
    assert not (tmp_path / ".mlflow").exists()


@pytest.mark.server
def test_server_that_dies_at_start_shows_its_log(tmp_path):
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "mlflow.db").write_text("this is not a sqlite database")
    with pytest.raises(TrackingServerError, match=r"exited with code .* before it was ready"):
        start_tracking_server(port=free_port(), root=tmp_path, timeout=120)
    assert not (tmp_path / ".mlflow" / "server.json").exists()


def test_why_a_server_is_silent_is_said_in_one_clause(tmp_path, monkeypatch):
    monkeypatch.setattr(local_server, "HEALTH_TIMEOUT", 0.2)  # the silent one never answers: no need to wait 2 s
    port = free_port()
    assert silent_server(f"http://127.0.0.1:{port}", tmp_path) == f"nothing listens on port {port}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert silent_server(f"http://127.0.0.1:{taken}", tmp_path) == (
            f"something accepts connections on port {taken} but does not answer as MLflow (hung, or another program)"
        )
    assert silent_server("file:///tmp/mlruns", tmp_path) is None  # a file store always answers


def starting_standin(root: Path, port: int) -> subprocess.Popen:
    "A process with the command line of this project's server that another command is starting: it never listens."
    db = (root / ".mlflow" / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", "import time; time.sleep(120)", "mlflow", "server"]
    return subprocess.Popen(
        [*cmd, "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)]
    )


def test_a_server_still_starting_is_named_with_its_port(tmp_path, capsys):
    port = free_port()
    standin = starting_standin(tmp_path, port)
    try:
        found = find_tracking_server(tmp_path)
        assert found.starting and found.port == port and found.uri == f"http://127.0.0.1:{port}"
        elsewhere = free_port()
        code = cli.mlflow(["start", "--port", str(elsewhere), "--root", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 1 and err == (
            f"error: this project's MLflow server is still starting at http://127.0.0.1:{port} "
            f"(pid {standin.pid} (mlflow server, using mlflow.db)); use it (MLFLOW_PORT={port}) or stop it first (make stop)\n"
        )
        with pytest.raises(TrackingServerError, match=f"at http://127.0.0.1:{port} was still starting after 1 s"):
            start_tracking_server(port=port, root=tmp_path, timeout=1)  # the same port: it waits for it, a while
        assert silent_server(found.uri, tmp_path).startswith("it is still starting (this project's server: pid ")
    finally:
        standin.kill()
        standin.wait(10)
    assert not (tmp_path / ".mlflow" / "server.json").exists()
