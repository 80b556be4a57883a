"""Fixtures for the fault tests (tests/faults/): a project and a tracking server of each test's own; see faultkit.py."""

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


@pytest.fixture
def server(project):
    srv = Server(project)
    yield srv
    srv.stop()
    left = [p for p in srv.pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"server processes left running: {left}"
