"""Faults in the server itself: `kill -9` of its launcher, a frozen or hung server, two commands starting it at once.

`kill -9` of the recorded launcher leaves its uvicorn worker serving; find, stop, status and
reset see it. A server frozen by SIGSTOP (or Ctrl-Z) is named as this project's own, with the
pid on record, not as a stranger on the port, whether a command meets it at its start or in
the middle of a run; a server that answers /health but not its API is said to be stuck.
Every test starts a server of its own in tmp_path and, whatever happens, kills by pid what it started.
A test whose subject is only how the server's processes are found, stopped and described uses a stand-in
for them (`standin`: a launcher and its worker, as those commands see a server) instead of a real MLflow;
one test of the orphaned worker (and reliability/02_local_server) still runs a real one.
"""

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from faultkit import BIN, Project, Server, error_lines, group_of, wait_for
from mlflow import MlflowClient

from mlops_day28 import cli
from mlops_day28.reliability.local_server import (
    TrackingServer,
    database_users,
    find_tracking_server,
    frozen,
    mlflow_version_at,
    recorded_server,
    reset_refusal,
    server_kind,
    server_status,
    start_tracking_server,
    stop_tracking_server,
)
from mlops_day28.reliability.processes import free_port, is_running, port_is_open

pytestmark = [pytest.mark.server, pytest.mark.slow]


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


@contextlib.contextmanager
def killed_after(srv: TrackingServer):
    "Run the block; then kill by pid whatever of `srv` (started by this process) still runs: none may remain."
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
def server(tmp_path):
    "A server of its own in tmp_path; at the end whatever it started still runs is killed by pid, and none may remain."
    with killed_after(start_tracking_server(port=free_port(), root=tmp_path)) as srv:
        yield srv


# A stand-in for an MLflow server's processes, as `find_tracking_server`, stop, status and reset see them: the
# launcher (`... mlflow server --backend-store-uri sqlite:///DB ... --port N`) leads a process group of its own, and
# its worker (`... uvicorn ...`) has the database open, listens on the port and answers /health and /version.
STANDIN_WORKER = """import sqlite3, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
args = sys.argv[1:]
db = sqlite3.connect(args[args.index("--backend-store-uri") + 1].removeprefix("sqlite:///"))
db.execute("create table if not exists t (x)")
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/health": b"OK", "/version": b"3.17.2"}.get(self.path, b"")
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Handler).serve_forever()
"""
STANDIN_LAUNCHER = f"""import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {STANDIN_WORKER!r}, "uvicorn", *sys.argv[3:]])
time.sleep(600)
"""


@pytest.fixture
def standin(tmp_path):
    "The stand-in, recorded in tmp_path/.mlflow/server.json as `start_tracking_server` records a server it started."
    state, port = tmp_path / ".mlflow", free_port()
    state.mkdir()
    store = f"sqlite:///{(state / 'mlflow.db').resolve()}"
    cmd = [sys.executable, "-c", STANDIN_LAUNCHER, "mlflow", "server", "--backend-store-uri", store]
    launcher = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], start_new_session=True)
    srv = TrackingServer(f"http://127.0.0.1:{port}", launcher.pid, True, str(state), pgid=launcher.pid, port=port)
    try:
        assert eventually(lambda: mlflow_version_at(srv.uri) == "3.17.2", 30)
        srv.pids = [launcher.pid, *(c.pid for c in psutil.Process(launcher.pid).children(recursive=True))]
        (state / "server.json").write_text(json.dumps(dataclasses.asdict(srv)))
        with killed_after(srv):
            assert server_kind(psutil.Process(srv.pids[-1]).cmdline()) == "uvicorn"  # what find and stop look for
            yield srv
    finally:
        launcher.kill()
        launcher.wait(10)


def kill_launcher(server: TrackingServer) -> TrackingServer:
    "`server` with its recorded launcher killed by SIGKILL: the uvicorn worker it started still serves."
    os.kill(server.pid, signal.SIGKILL)
    assert eventually(lambda: not is_running(server.pid), 10)
    return server


@pytest.fixture
def orphaned(server):
    "A real server whose launcher was killed by SIGKILL."
    return kill_launcher(server)


@pytest.fixture
def orphaned_standin(standin):
    "The stand-in whose launcher was killed by SIGKILL."
    return kill_launcher(standin)


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


def test_cli_stop_stops_the_server_whose_launcher_was_killed(orphaned_standin, tmp_path, capsys):
    server = orphaned_standin
    code = cli.mlflow(["stop", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "stopped" in out and "no running" not in out
    assert eventually(lambda: all_gone(server))
    assert cli.mlflow(["stop", "--root", str(tmp_path)]) == 0
    assert "no running MLflow server" in capsys.readouterr().out


def test_status_says_it_answers_with_the_launcher_gone(orphaned_standin, tmp_path):
    server = orphaned_standin
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


def test_reset_is_refused_while_the_server_uses_the_database(orphaned_standin, tmp_path):
    server = orphaned_standin
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


FROZEN = "it accepts connections but sends no reply; it is the server in .mlflow/server.json, pid {pid}, frozen (stopped by SIGSTOP or Ctrl-Z): make stop, then make mlflow"


def freeze(pgid: int) -> None:
    "SIGSTOP the whole process group, as Ctrl-Z in the terminal that started it would."
    os.killpg(pgid, signal.SIGSTOP)
    assert eventually(lambda: len(frozen([p.pid for p in group_of(pgid)])) == len(group_of(pgid)), 10)


def command(*args, cwd: Path, **env) -> subprocess.CompletedProcess:
    "Run `mlops-...` in `cwd` with `env` on top of this process's (MLFLOW_TRACKING_URI unset unless given)."
    full = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=cwd, env=full, capture_output=True, text=True, timeout=240
    )


def test_a_frozen_server_is_named_as_this_projects_own_and_make_stop_then_make_mlflow_bring_it_back(server, tmp_path):
    cfg = Project(tmp_path).config()  # a project of its own: config, data and the server's .mlflow/
    (tmp_path / "pyproject.toml").write_text("")
    freeze(server.pgid)
    out = command(
        "mlops-evaluate", "--model", "models:/digits-classifier@champion", "--config", str(cfg),
        cwd=tmp_path, MLFLOW_PORT=str(server.port),
    )  # fmt: skip
    assert out.returncode == 1
    assert error_lines(out.stderr) == [
        f"error: the MLflow server at {server.uri} does not answer: {FROZEN.format(pid=server.pid)}"
    ]
    stop = command("mlops-mlflow", "stop", "--root", str(tmp_path), cwd=tmp_path)  # make stop
    assert stop.returncode == 0 and stop.stdout.startswith(f"stopped the MLflow server at {server.uri} (pids ")
    assert eventually(lambda: all_gone(server))
    try:
        start = command("mlops-mlflow", "start", "--port", str(server.port), "--root", str(tmp_path), cwd=tmp_path)
        assert start.returncode == 0 and start.stdout.startswith(f"MLflow server started: {server.uri}"), start.stderr
        assert mlflow_version_at(server.uri)
    finally:
        stop_tracking_server(tmp_path)


def test_a_server_frozen_mid_run_ends_the_command_in_one_line_and_the_run_is_closed_after(project):
    srv = Server(project)
    project.env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "3"  # each call's silence: 3 s, not 10 (3 tries all the same)
    try:
        cfg = project.config(training={"num_epochs": 3000}, registry={"register_challenger": False})
        proc = project.start("mlops-train", "--config", str(cfg), "--no-progress")
        client = MlflowClient(srv.uri)

        def three_epochs():
            exp = client.get_experiment_by_name("week5_project_optimization")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            return runs and len(client.get_metric_history(runs[0].info.run_id, "val_accuracy")) >= 3 and runs[0]

        run = wait_for(three_epochs, 120, "the run logged three epochs")  # long past the command's health check
        freeze(srv.pgid)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        (line,) = error_lines(err)
        said = re.escape(f"error: training stopped: the tracking server at {srv.uri} stopped answering (")
        said += r"[\w/-]+: no reply within 3 s, 3 tries\): " + re.escape(FROZEN.format(pid=srv.pgid))
        said += re.escape(f"; run {run.info.run_id} will be marked FAILED when the server answers again")
        assert re.match(said, line), line

        stop = project.run("mlops-mlflow", "stop", "--root", str(project.path))  # what the line says to do
        assert stop.returncode == 0 and "stopped the MLflow server" in stop.stdout
        srv.start()
        again = project.run("mlops-mlflow", "start", "--port", str(srv.port), "--root", str(project.path))
        assert again.returncode == 0 and "closed 1 run left open" in again.stdout, again.stdout + again.stderr
        closed = client.get_run(run.info.run_id)
        assert closed.info.status == "FAILED" and "stopped answering" in closed.data.tags["mlops.closed_reason"]
    finally:
        for pid in srv.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        srv.stop()
        stop_tracking_server(project.path)


ANSWERS_HEALTH_ONLY = """import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/health", "/version"):
            body = b"OK" if self.path == "/health" else b"3.17.2"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            time.sleep(600)  # the API: stuck
    do_POST = do_GET
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_server_whose_api_hangs_after_its_health_check_is_named_in_one_line(tmp_path):
    "A stand-in answers /health and /version, then never answers an API call: a hang after the health check."
    cfg = Project(tmp_path).config()
    (tmp_path / "pyproject.toml").write_text("")
    port = free_port()
    standin = subprocess.Popen([sys.executable, "-c", ANSWERS_HEALTH_ONLY, str(port)])
    uri = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: mlflow_version_at(uri) == "3.17.2", 30)
        out = command(
            "mlops-evaluate", "--model", "models:/digits-classifier@champion", "--config", str(cfg),
            cwd=tmp_path, MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_TIMEOUT="2",
        )  # fmt: skip
    finally:
        standin.kill()
        standin.wait(10)
    assert out.returncode == 1
    (line,) = error_lines(out.stderr)
    said = (
        re.escape(f"error: the tracking server at {uri} stopped answering (")
        + r"[\w/-]+: no reply within 2 s, 3 tries\)"
    )
    said += re.escape(", though it still answers /health: it may be stuck on its database; see its log")
    assert re.match(said, line), line
    assert line.endswith("or restart it (make stop, then make mlflow)") and "HTTPConnectionPool" not in out.stderr


def test_two_commands_starting_the_server_at_once_share_one(tmp_path):
    "The second finds the first one's server still starting (not listening yet) on its port: it waits and reuses it."
    (tmp_path / "pyproject.toml").write_text("")
    port, env = free_port(), {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [str(BIN / "mlops-mlflow"), "start", "--port", str(port), "--root", str(tmp_path)]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: find_tracking_server(tmp_path) is not None, 60)  # its launcher runs
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        out, err = first.communicate(timeout=180)
        said = sorted([out.strip(), second.stdout.strip()])
        assert first.returncode == second.returncode == 0, err + second.stderr
        assert said[0] == f"MLflow server already running: http://127.0.0.1:{port}", said
        assert said[1].startswith(f"MLflow server started: http://127.0.0.1:{port} (pid "), said
        found = find_tracking_server(tmp_path)
        assert found and len({os.getpgid(pid) for pid in found.procs}) == 1  # one server, one process group
    finally:
        stop_tracking_server(tmp_path)
        first.wait(30)
