"""Exercise 3's pipeline: `mlops-train` exit codes, reproducibility, FAILED runs, registration and the gate."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from paths import ROOT, TINY_CONFIG

import mlops_day28
from mlops_day28 import cli
from mlops_day28.config import load_config
from mlops_day28.pipeline import train_pipeline
from mlops_day28.registry import model_aliases
from mlops_day28.training import TrainingJob

MLOPS_TRAIN = str(Path(sys.executable).parent / "mlops-train")
EXPERIMENT = "tests_pipeline"


def train_cli(*args, env=None, module=False):
    cmd = [sys.executable, "-m", "mlops_day28.cli", "train"] if module else [MLOPS_TRAIN]
    return subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


def all_runs():
    client = MlflowClient()
    return [
        r
        for e in client.search_experiments(view_type=ViewType.ALL)
        for r in client.search_runs([e.experiment_id], run_view_type=ViewType.ALL, max_results=5000)
    ]


def train_here(capsys, *args):
    "`mlops-train` in this process: (exit code, stdout, stderr)."
    code = cli.train([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_image_model_on_tabular_data_is_refused_before_the_run(local_mlflow, tmp_path, capsys):
    (tmp_path / "two.csv").write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    (tmp_path / "bad.yaml").write_text(
        f"model: {{architecture: cnn, num_classes: 2}}\ndata: {{dataset_path: {tmp_path / 'two.csv'}}}"
    )
    before = len(all_runs())
    code, _, err = train_here(capsys, "--config", tmp_path / "bad.yaml", "--no-progress")
    assert code == 2
    assert err.startswith("error: model.architecture 'cnn' needs image-shaped features") and err.count("\n") == 1
    assert len(all_runs()) == before


def test_same_config_twice_gives_identical_test_metrics(local_mlflow):
    cfg = load_config(
        TINY_CONFIG, [f"experiment_name={EXPERIMENT}", "registry.register_challenger=false", "tracking.log_model=false"]
    )
    first = train_pipeline(cfg, run_name="repro_1", progress=False)
    second = train_pipeline(cfg, run_name="repro_2", progress=False)
    assert first["run_id"] != second["run_id"]
    assert first["metrics"] == second["metrics"]
    logged = [MlflowClient().get_run(r["run_id"]).data.metrics["test_accuracy"] for r in (first, second)]
    assert logged[0] == logged[1] == first["metrics"]["test_accuracy"]


def test_run_records_what_reproduces_it(local_mlflow):
    cfg = load_config(
        TINY_CONFIG, [f"experiment_name={EXPERIMENT}", "registry.register_challenger=false", "tracking.log_model=false"]
    )
    result = train_pipeline(cfg, run_name="recorded", progress=False)
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["training.learning_rate"] == str(cfg.training.learning_rate)
    assert p["model.architecture"] == "mlp" and p["data.splits.test"] == "0.15" and p["seed"] == "42"
    assert p["experiment_name"] == EXPERIMENT and p["registry.register_challenger"] == "False"
    assert len(p["dataset_digest"]) == 64
    assert run.data.tags["mlops_day28.version"] == mlops_day28.__version__
    files = [a.path for a in MlflowClient().list_artifacts(result["run_id"], "config")]
    assert files == ["config/tiny.yaml"]
    assert {"train_loss", "val_accuracy", "test_accuracy", "test_loss"} <= set(run.data.metrics)


def test_failure_after_the_run_started_marks_it_failed_and_exits_1(local_mlflow, monkeypatch, capsys):
    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("simulated crash in training")

    monkeypatch.setattr(TrainingJob, "fit", broken_fit)
    code = cli.train(
        [
            "--config",
            str(TINY_CONFIG),
            "--set",
            f"experiment_name={EXPERIMENT}",
            "--run-name",
            "crashes",
            "--no-progress",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "training failed (RuntimeError: simulated crash in training)" in err
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    (run,) = MlflowClient().search_runs([exp.experiment_id], "attributes.run_name = 'crashes'")
    assert run.info.status == "FAILED"
    assert not MlflowClient().search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert mlflow.active_run() is None


@pytest.mark.slow
def test_cli_registers_challenger_and_gate_keeps_an_equal_champion(local_mlflow, capsys):
    name = f"tests-{uuid.uuid4().hex[:8]}"
    args = [
        "--config",
        TINY_CONFIG,
        "--set",
        f"experiment_name={EXPERIMENT}",
        "--set",
        f"registry.model_name={name}",
        "--no-progress",
    ]
    code, out, err = train_here(capsys, *args)  # in this process; the second run is the real command
    first = subprocess.CompletedProcess(args, code, out, err)
    assert first.returncode == 0, first.stderr
    assert "Final test accuracy: 0." in first.stdout
    assert f"Registered {name} v1 as challenger; gate: promoted to champion" in first.stdout
    assert model_aliases(name) == {"champion": "1", "challenger": "1"}
    second = train_cli(*args, module=True)  # python -m mlops_day28.cli train
    assert second.returncode == 0, second.stderr

    def final(r):
        return next(line for line in r.stdout.splitlines() if line.startswith("Final test accuracy"))

    assert final(first) == final(second)
    assert f"Registered {name} v2 as challenger; gate: rejected" in second.stdout
    assert model_aliases(name) == {"champion": "1", "challenger": "2"}
    v2 = MlflowClient().get_model_version(name, "2")
    assert sorted(v2.tags) == ["dataset_digest", "gate.decision", "split_digest", "test_accuracy"]  # at most four
    assert v2.tags["gate.decision"] == "rejected"
    assert v2.description.startswith("**Trained**: mlp by run")
    assert "\n\n**Gate**: rejected at " in v2.description and "vs champion v1" in v2.description
    assert "Current champion: v1" in MlflowClient().get_registered_model(name).description
    assert "**Last challenge**: v2 lost at " in MlflowClient().get_model_version(name, "1").description
    run = MlflowClient().get_run(v2.run_id).data.tags  # the gate's numbers, on the run that trained v2
    assert run["registered_version"] == "2" and run["gate.decision"] == "rejected"
    assert run["gate.compared_with"] == "v1"
    assert run["gate.accuracy"] == run["gate.compared_accuracy"]  # a tie never wins

    # pretrained: starts from that champion; a different architecture is refused before any run
    before = len(all_runs())
    code, _, err = train_here(capsys, *args, "--set", "model.pretrained=true", "--set", "model.architecture=resnet")
    assert code == 2 and "champion v1" in err and "model.architecture='resnet'" in err
    assert len(all_runs()) == before
    code, _, err = train_here(
        capsys,
        *args,
        "--set",
        "model.pretrained=true",
        "--set",
        "training.num_epochs=1",
        "--set",
        "registry.register_challenger=false",
        "--run-name",
        "finetune",
    )
    assert code == 0, err
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    (run,) = MlflowClient().search_runs([exp.experiment_id], "attributes.run_name = 'finetune'")
    assert run.data.tags["pretrained_from"] == f"models:/{name}/1"
    assert run.data.metrics["test_accuracy"] > 0.9


def test_pretrained_without_a_champion_exits_2(local_mlflow, capsys):
    code, _, err = train_here(
        capsys,
        "--config",
        TINY_CONFIG,
        "--set",
        "model.pretrained=true",
        "--set",
        "registry.model_name=never-registered",
    )
    assert code == 2
    assert "model.pretrained: no registered model 'never-registered'" in err
