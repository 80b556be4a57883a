"""A temporary project with both tracking servers in it, for the team benches (bench_team, bench_team_sweep)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mlops_day28.reliability.local_server import start_tracking_server, stop_tracking_server
from mlops_day28.reliability.processes import free_port
from mlops_day28.team.server import TeamServer, start_team_server, stop_team_server


@contextlib.contextmanager
def team_and_local(prefix: str) -> Iterator[tuple[Path, TeamServer, object, dict[str, float]]]:
    "(project, team server, local server, seconds each took to start): free ports; both stopped by pid, the folder removed."
    project = Path(tempfile.mkdtemp(prefix=prefix))
    project.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must reach .team/pg
    (project / "pyproject.toml").touch()  # a project root of its own
    started: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        team = start_team_server(project, free_port())
        started["team"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        local = start_tracking_server(port=free_port(), root=project)
        started["local"] = time.perf_counter() - t0
        yield project, team, local, started
    finally:
        stop_team_server(project)
        stop_tracking_server(project)
        shutil.rmtree(project, ignore_errors=True)
