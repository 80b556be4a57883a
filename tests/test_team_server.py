"""The team server (nbs/team/02_server): MLflow on a PostgreSQL of the project's own, with proxied artifacts.

Needs Debian's postgresql package. Without it these tests skip with that reason, except
where MLOPS_REQUIRE_POSTGRES=1 (set by .ci/run): there they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from paths import TINY_CONFIG

from mlops_day28.reliability.processes import free_port
from mlops_day28.team.postgres import postgres_program
from mlops_day28.team.server import start_team_server, stop_team_server, team_status

pytestmark = [pytest.mark.server, pytest.mark.slow]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    "A team server in a throwaway project folder, stopped by process id afterwards (also when a test fails)."
    if postgres_program("initdb") is None:
        if os.environ.get("MLOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required here (MLOPS_REQUIRE_POSTGRES=1) but not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="team-project-"))  # not under pytest's folder, which only root may enter
    root.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must reach .team/pg
    (root / "pyproject.toml").touch()  # a project root of its own
    try:
        server = start_team_server(root, free_port())
        try:
            yield root, server
        finally:
            stop_team_server(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for pid in (server.mlflow_pid, server.pg_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def mlops(cmd: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / cmd), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_it_runs_on_postgresql_and_says_so_when_started_again(team):
    root, server = team
    assert server.started == ["postgres", "mlflow"] and server.backend.startswith("postgresql://")
    assert psutil.Process(server.pg_pid).username() == (
        "postgres" if os.geteuid() == 0 else psutil.Process().username()
    )
    again = mlops("mlops-mlflow", "start", "--team", "--root", str(root), "--port", server.uri.rsplit(":", 1)[1])
    assert again.returncode == 0 and again.stdout.startswith("already running: team MLflow server at "), again
    status = mlops("mlops-mlflow", "status", "--team", "--root", str(root))
    assert status.returncode == 0 and f"pid {server.pg_pid}" in status.stdout
    assert team_status(root)[0]


def test_a_taken_port_or_a_server_already_elsewhere_is_one_line(team, tmp_path):
    root, server = team
    elsewhere = mlops("mlops-mlflow", "start", "--team", "--root", str(root), "--port", str(free_port()))
    assert elsewhere.returncode != 0 and elsewhere.stderr.strip().count("\n") == 0
    assert f"the team server already runs at {server.uri}" in elsewhere.stderr
    (tmp_path / "pyproject.toml").touch()  # another project, whose port is taken by the first one's PostgreSQL
    taken = mlops("mlops-mlflow", "start", "--team", "--root", str(tmp_path), "--port", str(server.pg_port))
    assert taken.returncode != 0 and taken.stderr.strip().count("\n") == 0
    assert f"port {server.pg_port} on 127.0.0.1 is in use by something else" in taken.stderr
    assert not (tmp_path / ".team" / "pg").exists()  # refused before anything was made


def test_training_the_registry_and_the_gate_work_on_it_with_artifacts_on_the_server(team, tmp_path):
    root, server = team
    env = {"MLFLOW_TRACKING_URI": server.uri}
    run = mlops("mlops-train", "--config", str(TINY_CONFIG), "--no-progress", env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "gate: promoted to champion" in run.stdout
    import mlflow
    import psycopg

    client = mlflow.MlflowClient(server.uri)
    champion = client.get_model_version_by_alias("digits-classifier", "champion")
    source = client.get_model_version_download_uri("digits-classifier", champion.version)
    assert source.startswith("mlflow-artifacts:/"), source  # proxied: the server holds the files
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=server.uri, dst_path=str(tmp_path))
    assert (Path(local) / "MLmodel").is_file()  # through the server: the client needs no shared disk
    stored = list((root / ".team" / "artifacts").rglob("MLmodel"))
    assert stored, "the server stores the artifacts under .team/artifacts"
    with psycopg.connect(host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="mlflow") as c:
        runs = c.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]
    assert runs >= 1  # in PostgreSQL, not in a sqlite file
    assert not list(root.rglob("*.db"))


def test_a_database_of_your_own_is_used_as_named_and_left_running(team, tmp_path, monkeypatch):
    import psycopg

    _, server = team
    with psycopg.connect(host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="postgres", autocommit=True) as c:
        c.execute('DROP DATABASE IF EXISTS "theirs"')
        c.execute('CREATE DATABASE "theirs"')
    (tmp_path / "pyproject.toml").touch()
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", f"postgresql://mlflow:secret@127.0.0.1:{server.pg_port}/theirs")
    theirs = start_team_server(tmp_path, free_port())
    try:
        assert theirs.started == ["mlflow"] and theirs.pg_pid is None and theirs.optuna is None
        assert "secret" not in theirs.backend and "secret" not in (tmp_path / ".team" / "server.json").read_text()
        assert not (tmp_path / ".team" / "pg").exists()  # no cluster of its own
        import mlflow

        exp = mlflow.MlflowClient(theirs.uri).create_experiment("named-database")
        with psycopg.connect(host="127.0.0.1", port=server.pg_port, user="mlflow", dbname="theirs") as c:
            assert (
                c.execute("SELECT count(*) FROM experiments WHERE experiment_id = %s", (int(exp),)).fetchone()[0] == 1
            )
    finally:
        assert stop_team_server(tmp_path) == f"stopped the team server: MLflow (pid {theirs.mlflow_pid})"
    assert psutil.pid_exists(server.pg_pid)  # the database it was given still runs
