"""Faults in the gate: pipelines that finish at once, models tested on different splits, threads.

Four `mlops-train` at once on an empty registry must end with the best of them as champion,
every promotion in the champion history, and every run in the named experiment. A model
tested on another split is refused before training. The same config trains to the same
numbers from a sweep trial and from the pipeline. And a gate killed mid-way leaves its
version's `gate.decision` marked unfinished, while the next gate says that it took over the lock a dead
process held. None of them harms the server: they share one, each with an experiment and a model of its own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid

import pytest
from faultkit import error_lines, wait_for
from mlflow import MlflowClient

pytestmark = [pytest.mark.server, pytest.mark.slow]


def own(test: str) -> tuple[str, str, dict]:
    "(experiment, registered model, config sections) of the test `test`: on the shared server, nobody else's."
    experiment, name = f"faults_{test}", f"faults-{test.replace('_', '-')}"
    return experiment, name, {"experiment_name": experiment, "registry": {"model_name": name}}


def test_four_concurrent_pipelines_end_with_the_best_as_champion(project, shared_server):
    server, (experiment, name, sections) = shared_server, own("four_pipelines")
    configs = [project.config(f"seed{s}", seed=s, **sections) for s in (1, 2, 3, 4)]  # four models, one split
    procs = [project.start("mlops-train", "--config", str(c), "--no-progress") for c in configs]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    client = MlflowClient(server.uri)
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 4
    accuracy = {v.version: float(client.get_run(v.run_id).data.tags["gate.accuracy"]) for v in versions}
    champion = client.get_registered_model(name).aliases["champion"]
    assert accuracy[champion] == max(accuracy.values()), accuracy
    promoted = [v.version for v in versions if v.tags["gate.decision"] == "promoted"]
    history = [v for v in client.get_registered_model(name).tags.get("champion_history", "").split(",") if v]
    assert sorted([*history, champion], key=int) == sorted(promoted, key=int)  # every promotion recorded
    assert len({v.tags["split_digest"] for v in versions}) == 1
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # none in "Default"
    assert not [m for m in client.search_registered_models() if m.name.startswith("mlops-lock.")]

    other = project.config("other_split", data={"split_seed": 7}, **sections)
    out = project.run("mlops-train", "--config", str(other), "--no-progress")
    assert out.returncode == 2
    (line,) = error_lines(out.stderr)
    assert "was tested on split" in line and "data.split_seed" in line
    assert len(client.search_runs([exp.experiment_id])) == 4  # refused before any run


def test_the_best_sweep_trial_retrained_by_the_pipeline_gives_identical_metrics(tracking_uri):
    from paths import TINY_CONFIG

    from mlops_day28.config import load_config, with_values
    from mlops_day28.pipeline import train_pipeline
    from mlops_day28.sweep import run_grid_sweep

    cfg = load_config(
        TINY_CONFIG,
        [
            "experiment_name=tests_repro",
            f"sweep.name=repro_{uuid.uuid4().hex[:8]}",
            'sweep.grid={"training.learning_rate": [0.003, 0.01], "model.dropout": [0.1]}',
            "registry.register_challenger=false",
            "tracking.log_model=false",
        ],
    )
    sweep = run_grid_sweep(cfg, n_jobs=2, progress=False)  # the trials train in worker processes
    retrained = train_pipeline(with_values(cfg, sweep.best), progress=False)  # the pipeline, in this one
    client = MlflowClient()

    def curve(run_id: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, "val_accuracy"), key=lambda m: m.step)]

    assert len(curve(sweep.best_run_id)) == cfg.training.num_epochs
    assert curve(retrained["run_id"]) == curve(sweep.best_run_id)  # epoch by epoch, not just the end
    assert retrained["metrics"]["best_val_accuracy"] == sweep.best_score


HOLDS_THE_GATE_LOCK = """import sys, time
from mlops_day28.reliability.coordination import server_lock
with server_lock("gate." + sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)"""


def test_a_killed_gate_leaves_its_version_marked_and_the_next_gate_says_it_took_over(project, shared_server):
    server, (experiment, name, sections) = shared_server, own("killed_gate")
    client = MlflowClient(server.uri)
    holder = subprocess.Popen(  # another gate, in the lock; killed below while it holds it
        [sys.executable, "-c", HOLDS_THE_GATE_LOCK, name],
        cwd=project.path,
        env=project.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    project.procs.append(holder)
    assert holder.stdout.readline().strip() == "held"
    cfg = project.config(**sections)
    killed = project.start("mlops-train", "--config", str(cfg), "--no-progress")

    def marked():
        found = [
            v
            for v in client.search_model_versions(f"name='{name}'")
            if v.tags.get("gate.decision", "").startswith("unfinished: ")
        ]
        return found and found[0].version

    version = wait_for(marked, 240, "the gate marked its version")  # then it scores, and waits on the lock
    os.killpg(killed.pid, signal.SIGKILL)  # the gate dies mid-way
    killed.wait(30)
    holder.kill()  # and so does the lock's holder, holding it
    holder.wait(30)

    out = project.run("mlops-train", "--config", str(cfg), "--no-progress")
    assert out.returncode == 0, out.stderr
    (note,) = [line for line in out.stderr.splitlines() if line.startswith("note: ")]
    expected = (
        f"note: took over the lock gate.{name} from pid {holder.pid} on {socket.gethostname()}, "
        r"which ended without releasing it \(locked \d+ s ago\)"
    )
    assert re.fullmatch(expected, note), note
    assert "gate: promoted to champion" in out.stdout

    left = client.get_model_version(name, version)
    mark = left.tags["gate.decision"]  # it never decided
    assert mark.startswith("unfinished: the gate started ") and mark.endswith("the gate did not finish"), mark
    assert f" by pid {killed.pid} on {socket.gethostname()}" in mark
    assert "**Gate**: " not in (left.description or "")
    (after,) = [v for v in client.search_model_versions(f"name='{name}'") if v.version != version]
    assert after.tags["gate.decision"] == "promoted"
    assert client.get_registered_model(name).aliases["champion"] == after.version
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # nothing left RUNNING
    assert not [m for m in client.search_registered_models() if m.name.startswith("mlops-lock.")]
