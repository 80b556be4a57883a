"""Fault: `kill -9` of the recorded launcher leaves its uvicorn worker serving; find, stop, status and reset see it.

Every test starts a server of its own in tmp_path and, whatever happens, kills by pid what it started.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from mlops_day28 import cli
from mlops_day28.processes import free_port, is_running, port_is_open
from mlops_day28.tracking_server import (
    database_users,
    find_tracking_server,
    mlflow_version_at,
    recorded_server,
    reset_refusal,
    server_status,
    start_tracking_server,
    stop_tracking_server,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]


def group_of(pgid: int) -> list[psutil.Process]:
    "The live (not zombie) processes of process group `pgid`."
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
    return members


def eventually(check, timeout: float = 30.0) -> bool:
    "Whether `check()` becomes true within `timeout` seconds."
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def all_gone(server) -> bool:
    "Its port is closed and no process of its group is alive."
    return not port_is_open(server.port) and not group_of(server.pgid)


def _alive(p: psutil.Process) -> bool:
    "Whether `p` (the very process, not a later one with its pid) still runs."
    with contextlib.suppress(psutil.Error):
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    return False


@pytest.fixture
def server(tmp_path):
    "A server of its own in tmp_path; at the end whatever it started still runs is killed by pid, and none may remain."
    srv = start_tracking_server(port=free_port(), root=tmp_path)
    launcher = psutil.Process(srv.pid)
    started = [launcher, *launcher.children(recursive=True), *group_of(srv.pgid)]  # collected before any kill
    try:
        yield srv
    finally:
        left = [p for p in {p.pid: p for p in [*started, *group_of(srv.pgid)]}.values() if _alive(p)]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        with contextlib.suppress(ChildProcessError):  # the launcher is this process's child: reap it
            os.waitpid(srv.pid, os.WNOHANG)
        assert not group_of(srv.pgid), f"still running after SIGKILL: {[p.pid for p in group_of(srv.pgid)]}"


@pytest.fixture
def orphaned(server):
    "The server with its recorded launcher killed by SIGKILL: the uvicorn worker it started still serves."
    os.kill(server.pid, signal.SIGKILL)
    assert eventually(lambda: not is_running(server.pid), 10)
    return server


def test_the_record_names_group_processes_and_port(server, tmp_path):
    record = json.loads((tmp_path / ".mlflow" / "server.json").read_text())
    assert record["pid"] == record["pgid"] == server.pid and record["port"] == server.port
    assert server.pid in record["pids"] and len(record["pids"]) >= 2  # the launcher and its uvicorn worker
    assert {p.pid for p in group_of(server.pid)} >= set(record["pids"])
    assert stop_tracking_server(tmp_path) and eventually(lambda: all_gone(server))


def test_an_old_record_without_group_or_port_still_stops_everything(server, tmp_path):
    (tmp_path / ".mlflow" / "server.json").write_text(json.dumps({"uri": server.uri, "pid": server.pid}))
    found = find_tracking_server(tmp_path)
    assert found and found.uri == server.uri and server.pid in found.procs and not found.launcher_gone
    said = stop_tracking_server(tmp_path)
    assert said and said.startswith(f"stopped the MLflow server at {server.uri} (pids ") and str(server.pid) in said
    assert eventually(lambda: all_gone(server))


def test_stop_finds_and_stops_the_server_whose_launcher_was_killed(orphaned, tmp_path):
    server = orphaned
    assert mlflow_version_at(server.uri)  # the fault: it still answers
    assert recorded_server(tmp_path) is None  # and the recorded pid alone no longer shows it
    found = find_tracking_server(tmp_path)
    assert found and found.uri == server.uri and found.launcher == server.pid and found.launcher_gone
    assert found.procs and server.pid not in found.procs
    assert f"the recorded launcher {server.pid} is gone" in str(found) and "listening on port" in str(found)
    said = stop_tracking_server(tmp_path)
    assert said.startswith(f"stopped the MLflow server at {server.uri} (pid") and "\n" not in said
    assert f"the recorded launcher {server.pid} was already gone" in said
    assert all(str(pid) in said for pid in found.procs)
    assert eventually(lambda: all_gone(server))
    assert not (tmp_path / ".mlflow" / "server.json").exists()
    assert find_tracking_server(tmp_path) is None and stop_tracking_server(tmp_path) is False


def test_cli_stop_stops_the_server_whose_launcher_was_killed(orphaned, tmp_path, capsys):
    server = orphaned
    code = cli.mlflow(["stop", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "stopped" in out and "no running" not in out
    assert eventually(lambda: all_gone(server))
    assert cli.mlflow(["stop", "--root", str(tmp_path)]) == 0
    assert "no running MLflow server" in capsys.readouterr().out


def test_status_says_it_answers_with_the_launcher_gone(orphaned, tmp_path):
    server = orphaned
    found = find_tracking_server(tmp_path)
    for port in (None, server.port):  # the recorded port, and the same one asked for
        version, line = server_status(tmp_path, port)
        assert version and line.startswith(f"MLflow {version} at {server.uri}") and "\n" not in line
        assert f"the recorded launcher {server.pid} is gone" in line
        assert all(f"pid {pid}" in line for pid in found.procs)
    elsewhere = free_port()
    version, line = server_status(tmp_path, elsewhere)
    assert (
        version is None
        and line == f"no MLflow server at http://127.0.0.1:{elsewhere} (this project's server is at {server.uri})"
    )
    assert stop_tracking_server(tmp_path)
    assert eventually(lambda: all_gone(server))
    version, line = server_status(tmp_path, server.port)
    assert version is None and line == f"no MLflow server at {server.uri}"


def test_reset_is_refused_while_the_server_uses_the_database(orphaned, tmp_path):
    server = orphaned
    reason = reset_refusal(tmp_path)
    assert reason and reason.startswith("refusing to reset: pid ") and "\n" not in reason
    users = database_users(tmp_path)
    assert users and server.pid not in {p.pid for p in users}
    assert all(f"pid {p.pid} (" in reason for p in users) and "make stop" in reason
    assert reset_refusal(tmp_path).startswith("refusing to reset: pid ")
    assert (tmp_path / ".mlflow" / "mlflow.db").exists()
    assert stop_tracking_server(tmp_path)
    assert eventually(lambda: all_gone(server))
    assert reset_refusal(tmp_path) is None and not database_users(tmp_path)


def test_reset_names_any_other_process_with_the_database_open(tmp_path):
    "Not a server, so stop leaves it alone; but reset must not pull the file from under it."
    db = tmp_path / ".mlflow" / "mlflow.db"
    db.parent.mkdir()
    code = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('create table t (x)'); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)])
    try:
        assert eventually(lambda: str(db.resolve()) in {f.path for f in psutil.Process(holder.pid).open_files()}, 20)
        assert reset_refusal(tmp_path).startswith(f"refusing to reset: pid {holder.pid} ")
        assert stop_tracking_server(tmp_path) is False and holder.poll() is None  # not a server: not stopped
    finally:
        holder.kill()
        holder.wait(10)
    assert reset_refusal(tmp_path) is None
