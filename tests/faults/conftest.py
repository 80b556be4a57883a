"""Fixtures for the fault tests (tests/faults/): a project of each test's own, and a tracking server of its own
(`server`: for a test that kills, freezes or fills it) or one per module (`shared_server`: for the tests that never
harm it, each in an experiment of its own); see faultkit.py."""

from __future__ import annotations

import psutil
import pytest
from faultkit import Project, Server


@pytest.fixture
def project(tmp_path):
    (tmp_path / "pyproject.toml").write_text("# a throw-away project for a fault test\n")
    p = Project(tmp_path)
    yield p
    p.stop_all()


def _stopped(srv: Server) -> None:
    "Stop `srv` by process id, and check that none of its processes is left."
    srv.stop()
    left = [p for p in srv.pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"server processes left running: {left}"


@pytest.fixture
def server(project):
    "A server of the test's own, in its project: for a test that kills, freezes or restarts it."
    srv = Server(project)
    yield srv
    _stopped(srv)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    "One server for the module's tests that leave it as they found it, in a project folder of its own."
    folder = tmp_path_factory.mktemp("module_server")
    (folder / "pyproject.toml").write_text("# the project of a server shared by a module's fault tests\n")
    home = Project(folder)
    srv = Server(home)
    yield srv
    _stopped(srv)
    home.stop_all()


@pytest.fixture
def shared_server(project, module_server):
    "The module's server, for the test's own project: its commands talk to it (give each test its own experiment)."
    project.env["MLFLOW_TRACKING_URI"] = module_server.uri
    return module_server
