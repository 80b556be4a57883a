"""Helpers for the fault tests: a project of their own, an MLflow server of their own, commands as real processes.

Each fault test kills, fills or races something, so none of them may share the session's
server. A test gets a throw-away project (`project`: a folder with its own `.mlflow/`, its
config and a link to the bundled data), starts its own server there (`server`) when the
fault hits the server, or else shares its module's (`shared_server`, in an experiment of its
own), and runs the real `mlops-*` commands against it. Everything started is stopped by
process id at the end, even when the test fails, and the test then checks that nothing it
started is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from paths import ROOT, TINY_CONFIG

from mlops_day28.reliability.local_server import start_tracking_server
from mlops_day28.reliability.processes import free_port, stop_process

BIN = Path(sys.executable).parent


class Project:
    "A throw-away project: its folder, its config, and the commands run in it."

    def __init__(self, path: Path):
        self.path = path
        self.procs: list[subprocess.Popen] = []
        # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID for subprocesses: an earlier test's, on another server
        inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
        self.env = {
            **inherited,
            "MLFLOW_TRACKING_URI": "",
            "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def config(self, name: str = "config", **sections) -> Path:
        "Write configs/`name`.yaml: the tiny config, the bundled data, and `sections` merged in."
        data = yaml.safe_load((TINY_CONFIG).read_text())
        data.setdefault("data", {})["dataset_path"] = str(ROOT / "data" / "digits.csv")
        for section, values in sections.items():
            if isinstance(values, dict):
                data.setdefault(section, {}).update(values)
            else:
                data[section] = values
        path = self.path / "configs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        return path

    def start(self, *cmd: str) -> subprocess.Popen:
        "Start `mlops-...` (or a program by its full path) in the background (its own session), output captured."
        proc = subprocess.Popen(
            [cmd[0] if Path(cmd[0]).is_absolute() else str(BIN / cmd[0]), *cmd[1:]],
            cwd=self.path,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *cmd: str, timeout: float = 240) -> subprocess.CompletedProcess:
        "Run `mlops-...` to the end (at most `timeout` s)."
        proc = self.start(*cmd)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc.pid, timeout=5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything of its session still there (a worker)
            proc.wait(10)


class Server:
    "A tracking server of the test's own; `kill()` kills its whole process group, `restart()` brings it back."

    def __init__(self, project: Project):
        self.project, self.port = project, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.pids: set[int] = set()
        self.start()

    def start(self):
        srv = start_tracking_server(port=self.port, root=self.project.path, timeout=120)
        self.pgid = srv.pid
        self.pids |= {srv.pid, *(c.pid for c in psutil.Process(srv.pid).children(recursive=True))}
        self.project.env["MLFLOW_TRACKING_URI"] = self.uri
        return srv

    def kill(self):
        "SIGKILL every process of the server, as a crash or the OOM killer would."
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in self.pids):
            assert time.monotonic() < deadline, "the killed server's processes did not exit"
            time.sleep(0.1)

    def stop(self):
        for pid in list(self.pids):
            stop_process(pid, timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)


@contextlib.contextmanager
def frozen_group(pgid: int, timeout: float = 10):
    "Stop process group `pgid` (SIGSTOP, as Ctrl-Z would) while the block runs; SIGCONT after it, even on failure."
    os.killpg(pgid, signal.SIGSTOP)
    try:
        wait_for(lambda: _all_stopped(pgid), timeout, f"process group {pgid} stopped")
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGCONT)


def _all_stopped(pgid: int) -> bool:
    "Whether every live process of group `pgid` is stopped (SIGSTOP has reached them all)."
    for p in group_of(pgid):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_STOPPED:
                return False
    return True


def group_of(pgid: int) -> list[psutil.Process]:
    "The live (not zombie) processes of process group `pgid`."
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
    return members


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    "Poll `check()` until it returns something truthy; fail the test after `timeout` s."
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def error_lines(stderr: str) -> list[str]:
    "The `error: ...` lines a command printed."
    return [line for line in stderr.splitlines() if line.startswith("error: ")]
