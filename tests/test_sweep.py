"""Exercise 4's sweep: grid checks, one best, parallel = sequential, resume after Ctrl-C and crashes, TPE workers."""

import json
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from paths import ROOT, TINY_CONFIG

from mlops_day28 import cli, sweep
from mlops_day28.config import load_config
from mlops_day28.sweep import (
    SweepError,
    mark_best,
    results_table,
    run_grid_sweep,
    run_tpe_sweep,
    start_sweep,
    storage_url,
    sweep_children,
)

SMALL_GRID = '{"training.learning_rate": [0.001, 0.01], "training.batch_size": [32, 64]}'
STORAGE = ""  # these tests' own Optuna storage, not the project's .mlflow/optuna.db: set below, not at collection


@pytest.fixture(scope="module", autouse=True)
def _storage(tmp_path_factory):
    global STORAGE
    STORAGE = f"sqlite:///{tmp_path_factory.mktemp('optuna')}/optuna.db"


def small(name=None, epochs=2, **sweep_settings):
    "The tiny config with a 4-point grid, in its own experiment, under a fresh sweep name."
    overrides = [
        "experiment_name=tests_sweep",
        f"training.num_epochs={epochs}",
        f"sweep.grid={SMALL_GRID}",
        f"sweep.name={name or 'sweep_' + uuid.uuid4().hex[:8]}",
        f"sweep.storage={STORAGE}",
    ]
    overrides += [f"sweep.{k}={v}" for k, v in sweep_settings.items()]
    return load_config(TINY_CONFIG, overrides)


def test_parallel_and_sequential_give_the_same_results(local_mlflow):
    seq = run_grid_sweep(small(), n_jobs=1, progress=False)
    par = run_grid_sweep(small(), n_jobs=2, progress=False)

    def rows(r):
        return sorted(
            zip(
                *[results_table(r.parent_run_id)[c] for c in ("run_name", "final_val_accuracy", "final_val_loss")],
                strict=False,
            )
        )

    assert rows(seq) == rows(par) and len(rows(seq)) == 4
    assert seq.best == par.best
    for r in (seq, par):
        table = results_table(r.parent_run_id)
        assert table.is_best.sum() == 1 and table[table.is_best].run_id.item() == r.best_run_id
        tags = MlflowClient().get_run(r.parent_run_id).data.tags
        assert {k: tags[f"best.{k}"] for k in r.best} == {k: str(v) for k, v in r.best.items()}


def test_ctrl_c_mid_sweep_kills_the_trial_and_resume_finishes_the_rest(local_mlflow, monkeypatch):
    cfg = small()
    real = sweep.prepare_training
    calls = []

    def interrupt_third(c):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(c)

    monkeypatch.setattr(sweep, "prepare_training", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_grid_sweep(cfg, n_jobs=1, progress=False)
    parent = sweep.find_sweep(cfg.sweep.name, cfg.experiment_name)
    assert MlflowClient().get_run(parent).info.status == "KILLED"
    children = sweep_children(parent)
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED", "KILLED"]  # never RUNNING
    killed = next(c.info.run_id for c in children if c.info.status == "KILLED")

    monkeypatch.setattr(sweep, "prepare_training", real)
    resumed = run_grid_sweep(cfg, n_jobs=1, progress=False)
    assert resumed.resumed and resumed.parent_run_id == parent
    assert (len(resumed.ran), resumed.skipped) == (2, 2)
    table = results_table(parent)
    assert sorted(table.status) == ["FINISHED"] * 4  # one child per grid point: the killed one was set aside
    gone = MlflowClient().get_run(killed)
    assert (gone.info.lifecycle_stage, gone.data.tags["sweep.state"]) == ("deleted", "abandoned")
    assert (table.state == "complete").sum() == 4 and table.is_best.sum() == 1
    assert MlflowClient().get_run(parent).info.status == "FINISHED"


def test_a_crash_that_left_a_trial_running_is_cleaned_up_on_resume(local_mlflow):
    cfg = small()
    first = run_grid_sweep(cfg, n_jobs=1, limit=1, progress=False)
    client = MlflowClient()
    exp_id = client.get_run(first.parent_run_id).info.experiment_id
    orphan = client.create_run(exp_id, run_name="orphan", tags={"mlflow.parentRunId": first.parent_run_id})
    assert client.get_run(orphan.info.run_id).info.status == "RUNNING"
    rest = run_grid_sweep(cfg, n_jobs=1, progress=False)
    assert (len(rest.ran), rest.skipped) == (3, 1)
    left = client.get_run(orphan.info.run_id)
    assert (left.info.status, left.info.lifecycle_stage) == ("KILLED", "deleted")  # closed, and set aside
    assert len(sweep_children(first.parent_run_id)) == 4


def test_a_failing_trial_is_failed_with_its_error_and_the_sweep_goes_on(local_mlflow):
    cfg = load_config(
        TINY_CONFIG,
        [
            "experiment_name=tests_sweep",
            f"sweep.name=fails_{uuid.uuid4().hex[:8]}",
            'sweep.grid={"model.num_classes": [5, 10], "training.num_epochs": [1]}',
        ],
    )
    result = run_grid_sweep(cfg, n_jobs=2, progress=False)
    assert [r.state for r in result.ran] == ["failed", "complete"]
    failed = MlflowClient().get_run(result.failed[0].run_id)
    assert failed.info.status == "FAILED" and "model.num_classes: 5," in failed.data.tags["error"]
    assert result.best == {"model.num_classes": 10, "training.num_epochs": 1}


def test_resuming_with_another_config_is_refused(local_mlflow):
    name = f"changed_{uuid.uuid4().hex[:8]}"
    run_grid_sweep(small(name), n_jobs=1, limit=1, progress=False)
    with pytest.raises(SweepError, match="with a different config; resuming it would mix results"):
        run_grid_sweep(small(name, epochs=3), n_jobs=1, progress=False)
    run_grid_sweep(small(name), n_jobs=2, limit=1, progress=False)  # more workers is not a different config


def test_best_is_one_child_and_moves_when_a_better_trial_arrives(local_mlflow):
    client = MlflowClient()
    cfg = small()
    parent, exp_id, _ = start_sweep(cfg, "grid")

    def child(acc, loss, lr):
        run = client.create_run(
            exp_id,
            tags={
                "mlflow.parentRunId": parent,
                "sweep.state": "complete",
                "sweep.trial_key": json.dumps({"training.learning_rate": lr}),
            },
        )
        client.log_metric(run.info.run_id, "final_val_accuracy", acc)
        client.log_metric(run.info.run_id, "final_val_loss", loss)
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    a, b, c = child(0.90, 0.3, 0.1), child(0.95, 0.4, 0.2), child(0.95, 0.2, 0.3)  # c wins the tie on loss
    assert mark_best(parent).run_id == c
    d = child(0.97, 0.5, 0.4)
    assert mark_best(parent).run_id == d
    flags = {r: client.get_run(r).data.tags.get("is_best") for r in (a, b, c, d)}
    assert flags == {a: None, b: None, c: None, d: "true"}  # the old best lost its tag
    assert client.get_run(parent).data.tags["best.training.learning_rate"] == "0.4"
    client.set_terminated(parent)  # leave nothing RUNNING


def test_tpe_workers_share_one_study(local_mlflow):
    cfg = small(strategy="tpe")
    result = run_tpe_sweep(cfg, n_trials=4, n_jobs=2)
    study = optuna.load_study(study_name=f"{cfg.experiment_name}/{cfg.sweep.name}", storage=storage_url(cfg))
    assert 4 <= len(study.trials) <= 5  # a worker may start one trial while the other fills the budget
    children = {c.info.run_id: c for c in sweep_children(result.parent_run_id)}
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == set(children)
    assert sum(c.data.tags.get("is_best") == "true" for c in children.values()) == 1
    lr = [t.params["training.learning_rate"] for t in study.trials]
    assert all(0.001 <= v <= 0.01 for v in lr)  # within the grid's range
    again = run_tpe_sweep(cfg, n_trials=4, n_jobs=1)  # resumed: the budget is already spent
    assert again.resumed and again.ran == [] and again.skipped == len(study.trials)


@pytest.mark.slow
def test_tpe_workers_joining_with_worker_run_the_budget_exactly(local_mlflow):
    "Three `mlops-sweep --worker` processes on one TPE sweep: the budget is 5 runs in all, not 5 per worker."
    name = f"tpe_workers_{uuid.uuid4().hex[:8]}"
    cfg = small(name, strategy="tpe")
    cmd = [
        str(Path(sys.executable).parent / "mlops-sweep"),
        "--config",
        str(TINY_CONFIG),
        "--worker",
        "--n-trials",
        "5",
    ]
    cmd += ["--storage", STORAGE, "--no-progress", "--set", "sweep.strategy=tpe", "--set", f"sweep.name={name}"]
    cmd += [
        "--set",
        "experiment_name=tests_sweep",
        "--set",
        "training.num_epochs=2",
        "--set",
        f"sweep.grid={SMALL_GRID}",
    ]
    workers = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)
    ]
    try:
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    parent = sweep.find_sweep(cfg.sweep.name, cfg.experiment_name)
    children = sweep_children(parent)
    assert len(children) == 5 and {c.info.status for c in children} == {"FINISHED"}
    assert sum(c.data.tags.get("is_best") == "true" for c in children) == 1
    assert MlflowClient().get_run(parent).info.status == "FINISHED"
    study = optuna.load_study(study_name=f"{cfg.experiment_name}/{cfg.sweep.name}", storage=STORAGE)
    ran = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.number for t in ran) == [0, 1, 2, 3, 4]  # the first five numbers; any later one was pruned unrun
    assert {t.user_attrs["mlflow_run_id"] for t in ran} == {c.info.run_id for c in children}


def test_how_a_sweep_is_run_is_not_part_of_the_config_it_resumes_with():
    "Workers, storage and heartbeat grace may differ between runs of one sweep (or between its workers); values may not."
    base = sweep._config_digest(small("same"))
    assert sweep._config_digest(small("same", n_jobs=1, worker_grace=3, storage="sqlite:///elsewhere.db")) == base
    assert sweep._config_digest(small("same", epochs=3)) != base


def test_storage_path_is_resolved_in_the_project(tmp_path):
    cfg = load_config(TINY_CONFIG)
    assert cfg.sweep.storage == "sqlite:///.mlflow/optuna.db"
    assert storage_url(cfg) == f"sqlite:///{ROOT}/.mlflow/optuna.db"
    cfg.sweep.storage = f"sqlite:///{tmp_path}/o.db"
    assert storage_url(cfg) == f"sqlite:///{tmp_path}/o.db"


def sweep_cli(*args):
    return subprocess.run(
        [str(Path(sys.executable).parent / "mlops-sweep"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_runs_a_sweep_and_reports_the_best(local_mlflow, capsys):
    name = f"cli_{uuid.uuid4().hex[:8]}"
    args = [
        "--config",
        TINY_CONFIG,
        "--set",
        "experiment_name=tests_sweep",
        "--set",
        f"sweep.name={name}",
        "--set",
        f"sweep.grid={SMALL_GRID}",
        "--set",
        "training.num_epochs=1",
        "--no-progress",
    ]
    r = sweep_cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"sweep '{name}' (grid): 4 trials run, 0 already done, 0 failed" in r.stdout
    assert "best: {" in r.stdout
    assert cli.sweep([*map(str, args), "--n-jobs", "2"]) == 0  # the same command again, in this process
    assert "0 trials run, 4 already done" in capsys.readouterr().out


def test_a_crashed_tpe_worker_is_a_failure_not_bad_input(local_mlflow, monkeypatch, capsys):
    "A worker process that dies ends the sweep with exit code 1 (it was not the input's fault), one line, the parent FAILED."
    import os

    monkeypatch.setattr(sweep, "tpe_worker", lambda *args: os._exit(3))  # forked workers inherit the patch
    name = f"crash_{uuid.uuid4().hex[:8]}"
    args = ["--config", str(TINY_CONFIG), "--strategy", "tpe", "--n-jobs", "2", "--n-trials", "2", "--no-progress"]
    overrides = ["experiment_name=tests_sweep", f"sweep.name={name}", f"sweep.storage={STORAGE}"]
    code = cli.sweep([*args, *[x for o in overrides for x in ("--set", o)]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "a TPE worker exited with code [3, 3]" in err[0] and "finished trials are kept" in err[0]
    parent = sweep.find_sweep(name, "tests_sweep")
    assert MlflowClient().get_run(parent).info.status == "FAILED"


def test_a_one_value_grid_key_is_the_shared_budget_not_a_searched_key(local_mlflow):
    "Names, the parent's params and best_config treat `training.num_epochs: [1]` as every trial's budget."
    grid = '{"training.learning_rate": [0.001, 0.01], "training.batch_size": [32], "training.num_epochs": [1]}'
    cfg = load_config(
        TINY_CONFIG, ["experiment_name=tests_sweep", f"sweep.name=budget_{uuid.uuid4().hex[:8]}", f"sweep.grid={grid}"]
    )
    first = run_grid_sweep(cfg, n_jobs=1, limit=1, progress=False)
    artifacts = {a.path for a in MlflowClient().list_artifacts(first.parent_run_id)}
    assert "results.csv" in artifacts and "parallel_coordinates.png" not in artifacts  # plots once all are in
    result = run_grid_sweep(cfg, n_jobs=1, progress=False)
    assert sorted(results_table(result.parent_run_id).run_name) == ["lr1e-2", "lr1e-3"]
    params = MlflowClient().get_run(result.parent_run_id).data.params
    assert params["training.learning_rate"] == "0.001, 0.01" and params["training.num_epochs"] == "1"
    assert "model.hidden_size" not in params  # the base config is an artifact, not the parent's params
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.parent_run_id)}
    assert {"base_config.yaml", "parallel_coordinates.png"} <= artifacts
    assert "heatmap.png" not in artifacts  # one searched key: nothing to lay out on two axes
    best = sweep.best_config(cfg, result)
    assert best.training.num_epochs == cfg.training.num_epochs  # the budget stays the base config's
    assert best.training.learning_rate == result.best["training.learning_rate"]


@pytest.mark.slow
def test_a_trial_whose_worker_died_before_its_first_heartbeat_runs_again(local_mlflow):
    "Optuna never calls a trial stale that never beat: a worker gives it a first heartbeat, then it is retried."
    from mlops_day28.team.workers import join_sweep

    name = f"silent_{uuid.uuid4().hex[:8]}"
    sets = [f"sweep.name={name}", "experiment_name=tests_sweep", "training.num_epochs=1", f"sweep.grid={SMALL_GRID}"]
    sets += ["sweep.worker_grace=2", f"sweep.storage={STORAGE}"]
    _, _, study = join_sweep(load_config(TINY_CONFIG, sets))
    with warnings.catch_warnings():  # "heartbeat ... supposed to be used with Study.optimize": here, on purpose
        warnings.simplefilter("ignore", UserWarning)
        claimed = study.ask()  # as a worker killed right after claiming a grid point: RUNNING, no heartbeat, no run
    cmd = [str(Path(sys.executable).parent / "mlops-sweep"), "--config", str(TINY_CONFIG), "--worker", "--no-progress"]
    cmd += [a for s in sets for a in ("--set", s)]
    worker = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-3000:]
    parent = sweep.find_sweep(name, "tests_sweep")
    children = [c for c in sweep_children(parent) if c.info.status == "FINISHED"]
    keys = sorted(c.data.tags["sweep.trial_key"] for c in children)
    assert len(keys) == 4 and len(set(keys)) == 4  # every point of the 2x2 grid once, the claimed one included
    assert sum(c.data.tags.get("is_best") == "true" for c in children) == 1
    states = {t.number: t.state for t in optuna.load_study(study_name=study.study_name, storage=STORAGE).trials}
    assert states[claimed.number] == optuna.trial.TrialState.FAIL  # failed as stale, and a copy of it ran
