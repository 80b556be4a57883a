"""Faults while a run is open: the server dies, the command is stopped or killed, the disk fills.

Each test injects the fault into a real `mlops-train` process and then checks what an
operator would: how long the command took to give up, the one line it printed, and the
run's final state on the server, which must never stay RUNNING. A test whose fault hits
the server (killed, or its store broken) has a server of its own; the others share one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from faultkit import Server, error_lines, wait_for
from mlflow import MlflowClient

pytestmark = [pytest.mark.server, pytest.mark.slow]

LONG = {"num_epochs": 3000}  # a run that lasts long enough to be hit mid-training (about a minute)
NO_GATE = {"register_challenger": False}


def open_run(uri: str, experiment: str):
    "The run of `experiment` once it has logged a few epochs (the fault then hits mid-training)."

    def check():
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "val_accuracy")) >= 3:
            return runs[0]
        return None

    return wait_for(check, 120, "the run logged three epochs")


def test_server_lost_mid_run_stops_within_60s_and_the_run_is_closed_when_it_returns(project, server):
    cfg = project.config(training=LONG, registry=NO_GATE)
    proc = project.start("mlops-train", "--config", str(cfg), "--no-progress")
    run = open_run(server.uri, "week5_project_optimization")
    server.kill()
    killed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - killed
    assert took < 60, f"mlops-train took {took:.0f} s to give up"
    assert proc.returncode == 1
    (line,) = error_lines(err)
    assert "stopped answering" in line and run.info.run_id in line and "journal" in line
    (entry,) = (project.path / ".mlflow" / "journal").glob("*.json")  # the run, to be closed later
    assert run.info.run_id in entry.name

    server.start()  # the next start closes what the journal holds
    out = project.run("mlops-mlflow", "start", "--port", str(server.port), "--root", str(project.path))
    assert out.returncode == 0, out.stderr
    client = MlflowClient(server.uri)
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FAILED"
    assert "stopped answering" in closed.data.tags["mlops.closed_reason"]
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) >= 3  # the metrics so far are kept
    assert not list((project.path / ".mlflow" / "journal").glob("*.json"))


def test_sigterm_ends_the_run_as_killed_with_one_line(project, shared_server):
    server = shared_server
    cfg = project.config(experiment_name="faults_sigterm", training=LONG, registry=NO_GATE)
    proc = project.start("mlops-train", "--config", str(cfg), "--no-progress")
    run = open_run(server.uri, "faults_sigterm")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    (line,) = error_lines(err)
    assert "terminated" in line
    final = MlflowClient(server.uri).get_run(run.info.run_id)
    assert final.info.status == "KILLED"
    assert "interrupted" in final.data.tags["mlops.closed_reason"]


def test_kill_9_leaves_a_run_that_the_next_start_closes(project, shared_server):
    "The next `mlops-mlflow start` (of the server's project: it is running) closes the run that nothing else could."
    server = shared_server
    cfg = project.config(experiment_name="faults_kill_9", training=LONG, registry=NO_GATE)
    proc = project.start("mlops-train", "--config", str(cfg), "--no-progress")
    run = open_run(server.uri, "faults_kill_9")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    client = MlflowClient(server.uri)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nothing could close it
    out = project.run("mlops-mlflow", "start", "--port", str(server.port), "--root", str(server.project.path))
    assert out.returncode == 0, out.stderr
    assert "closed 1 run" in out.stdout
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FAILED"
    assert f"process {proc.pid}" in closed.data.tags["mlops.closed_reason"]


def test_evaluate_names_an_unreachable_server_within_seconds(project):
    from mlops_day28.reliability.processes import free_port

    cfg = project.config()
    project.env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    out = project.run("mlops-evaluate", "--model", "models:/digits-classifier@champion", "--config", str(cfg))
    assert time.monotonic() - start < 30
    assert out.returncode == 1
    (line,) = error_lines(out.stderr)
    assert "does not answer" in line


STORES = {  # mount options of the artifact store -> the server's reason, quoted in the one line
    "full": ("size=96k", "No space left on device"),
    "read-only": ("ro", "Read-only file system"),
}


@pytest.fixture(params=list(STORES))
def broken_store(project, request):
    "A 96 KB tmpfs, or a read-only one, as the server's artifact store (root can mount one; elsewhere: skipped)."
    options, reason = STORES[request.param]
    store = project.path / ".mlflow" / "artifacts"
    store.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(store)], capture_output=True)
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})"
        if os.environ.get("MLOPS_REQUIRE_FAULTS") == "1":
            pytest.fail(f"{why}, but MLOPS_REQUIRE_FAULTS=1 requires the artifact-store tests")
        pytest.skip(why)
    yield reason
    subprocess.run(["umount", "-l", str(store)], check=False)


def test_a_broken_artifact_store_is_named_in_one_line_within_60s(project, broken_store):
    server = Server(project)
    try:
        cfg = project.config(registry=NO_GATE)
        start = time.monotonic()
        out = project.run("mlops-train", "--config", str(cfg), "--no-progress", timeout=180)
        assert time.monotonic() - start < 60 + 30  # 60 s to give up, plus start-up and training
        assert out.returncode == 1
        (line,) = error_lines(out.stderr)
        assert broken_store in line, line
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("week5_project_optimization")
        (run,) = client.search_runs([exp.experiment_id])
        assert run.info.status == "FAILED"
    finally:
        server.stop()
