"""The team server reached from another machine (nbs/00db_team_server): network namespaces made by the test.

One namespace is the server's machine: PostgreSQL on its own loopback, the MLflow team
server on its address on a bridge. Another is a worker's machine, with a host name of its
own, linked to the bridge by a veth pair. The worker trains, logs, registers and runs the
gate against the server over that network only: the address exists nowhere else, so the
test's own namespace cannot reach it. Needs root; skipped with the reason elsewhere,
except where MLOPS_REQUIRE_NETNS=1 (set by .ci/run): there it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from netns import Machines, netns_unavailable

from mlops_day28.tracking_server import mlflow_version_at

pytestmark = [pytest.mark.server, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def machines():
    why = netns_unavailable()
    if why:
        if os.environ.get("MLOPS_REQUIRE_NETNS") == "1":
            pytest.fail(f"network namespaces are required here (MLOPS_REQUIRE_NETNS=1): {why}")
        pytest.skip(why)
    m = Machines(["server", "worker1"])
    try:
        yield m
    finally:
        m.close()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in left for ns in m.ns.values()), left  # every namespace is gone


def test_a_worker_on_another_machine_trains_against_the_team_server(machines):
    project = Path(tempfile.mkdtemp(prefix="team-net-"))
    project.chmod(0o755)  # PostgreSQL runs as `postgres`, which must reach .team/pg
    (project / "pyproject.toml").touch()
    address, port = machines.address["server"], "5001"
    uri = f"http://{address}:{port}"
    mlflow_cmd = [str(BIN / "mlops-mlflow")]
    try:
        start = machines.run(
            "server", [*mlflow_cmd, "start", "--team", "--root", str(project), "--host", address, "--port", port]
        )
        assert start.returncode == 0, start.stdout + start.stderr
        assert start.stdout.startswith(f"started: team MLflow server at {uri}")
        assert mlflow_version_at(uri) is None  # from the test's own machine, nothing answers there

        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        train = [
            "env",
            f"MLFLOW_TRACKING_URI={uri}",
            str(BIN / "mlops-train"),
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--no-progress",
            "--set",
            "tracking.run_name=from-worker1",
        ]
        trained = machines.run("worker1", train, hostname="worker1", env=env, cwd=str(project))
        assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
        assert "Registered digits-classifier v1" in trained.stdout

        ask = (
            "import mlflow; c = mlflow.MlflowClient(); "
            "r = c.search_runs([e.experiment_id for e in c.search_experiments()], \"attributes.run_name = 'from-worker1'\")[0]; "
            "print(r.info.status, r.data.tags['mlops.host'], c.get_model_version_by_alias('digits-classifier', 'champion').version)"
        )
        seen = machines.run("server", ["env", f"MLFLOW_TRACKING_URI={uri}", sys.executable, "-c", ask], env=env)
        assert seen.stdout.split() == ["FINISHED", "worker1", "1"], seen.stdout + seen.stderr
    finally:
        stop = machines.run("server", [*mlflow_cmd, "stop", "--team", "--root", str(project)])
        shutil.rmtree(project, ignore_errors=True)
    assert stop.stdout.startswith("stopped the team server: MLflow"), stop.stdout + stop.stderr
    assert machines.pids("server") == []  # nothing of the servers is left running in that machine
