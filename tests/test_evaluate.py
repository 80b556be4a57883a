"""`mlops-evaluate` (exit 0 pass, 1 below threshold, 2 bad arguments) and `mlops-deploy`."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from paths import ROOT, TINY_CONFIG

from mlops_day28 import cli
from mlops_day28.config import load_config
from mlops_day28.registry import model_aliases, register_run_model
from mlops_day28.tracking import run_tracked_training

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def registered(tracking_uri):
    "A registered model with a champion (tiny config) and a weaker challenger (1 epoch)."
    mlflow.set_experiment("tests_evaluate")
    name = f"tests-eval-{uuid.uuid4().hex[:8]}"
    good = run_tracked_training(load_config(TINY_CONFIG), progress=False)
    weak = run_tracked_training(
        load_config(TINY_CONFIG, ["training.num_epochs=1", "training.learning_rate=0.0001"]), progress=False
    )
    register_run_model(good.run_id, name, alias="champion")
    register_run_model(weak.run_id, name, alias="challenger")
    return name, good, weak


def evaluate_cli(*args):
    "The real `mlops-evaluate` command, in a process of its own, as CI runs it."
    return subprocess.run(
        [str(BIN / "mlops-evaluate"), "--config", str(TINY_CONFIG), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


class Result:
    "What `mlops-evaluate` printed and returned, run in this process (as its console script runs it)."

    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def evaluate(capsys):
    def run(*args):
        code = cli.evaluate(["--config", str(TINY_CONFIG), *map(str, args)])
        return Result(code, *capsys.readouterr())

    return run


@pytest.mark.slow
def test_passing_model_exits_0_and_writes_metrics(registered, tmp_path):
    name, good, _ = registered
    r = evaluate_cli(
        "--model",
        f"models:/{name}@champion",
        "--threshold",
        "0.85",
        "--output",
        tmp_path / "m.json",
        "--markdown",
        tmp_path / "m.md",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["passed"] is True and report["threshold"] == 0.85 and report["n_samples"] == 270
    assert abs(report["accuracy"] - good.test_metrics["test_accuracy"]) < 1e-9
    assert "PASSED: accuracy" in r.stdout
    assert (tmp_path / "m.md").read_text().startswith(f"### Evaluation of models:/{name}@champion")
    assert "| accuracy |" in r.stdout and '"accuracy":' in r.stdout


def test_below_threshold_exits_1_and_says_by_how_much(registered, tmp_path, evaluate):
    name, good, _ = registered
    r = evaluate("--model", f"models:/{name}@champion", "--threshold", "0.999", "--output", tmp_path / "m.json")
    assert r.returncode == 1
    acc = good.test_metrics["test_accuracy"]
    assert f"FAILED: accuracy {acc:.4f} is below the threshold 0.9990 by {0.999 - acc:.4f}" in r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["passed"] is False


def test_worse_than_baseline_exits_1(registered, tmp_path, evaluate):
    name, _good, _weak = registered
    r = evaluate(
        "--model",
        f"models:/{name}@challenger",
        "--threshold",
        "0.05",
        "--baseline",
        f"models:/{name}@champion",
        "--output",
        tmp_path / "m.json",
    )
    assert r.returncode == 1
    assert "below the baseline's" in r.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["baseline_accuracy"] > report["accuracy"]
    same = evaluate(
        "--model",
        f"models:/{name}/1",
        "--threshold",
        "0.5",
        "--baseline",
        f"models:/{name}@champion",
        "--output",
        tmp_path / "same.json",
    )
    assert same.returncode == 0, same.stderr


def test_runs_uri_and_local_folder_work(registered, tmp_path, evaluate):
    name, good, _ = registered
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}@champion", dst_path=str(tmp_path / "model")
    )
    for model in (good.model_uri, local):
        r = evaluate("--model", model, "--threshold", "0.85", "--output", tmp_path / "m.json")
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--model", "models:/{name}@production"],
            "has no alias 'production'; its aliases: challenger -> v2, champion -> v1",
        ),
        (["--model", "models:/no-such-model@champion"], "no registered model 'no-such-model'"),
        (["--model", "models:/{name}/9"], "has no version 9; versions: 1, 2"),
        (["--model", "nowhere/model"], "is neither a model URI"),
        (["--model", "models:/{name}@champion", "--threshold", "85"], "Invalid value for '--threshold'"),
        (["--model", "models:/{name}@champion", "--threshold", "-0.1"], "Invalid value for '--threshold'"),
        (["--model", "models:/{name}@champion", "--baseline", "models:/{name}@gone"], "has no alias 'gone'"),
        (["--threshold", "0.5"], "Missing option '--model'"),
    ],
)
def test_bad_arguments_exit_2_with_the_problem_named(registered, tmp_path, evaluate, args, message):
    name = registered[0]
    r = evaluate(*[a.format(name=name) for a in args], "--output", tmp_path / "m.json")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "m.json").exists()


def test_folder_without_a_model_exits_2(tmp_path, evaluate):
    r = evaluate("--model", tmp_path)
    assert r.returncode == 2 and "not an MLflow model folder (no MLmodel file in it)" in r.stderr


def test_deploy_without_a_target_is_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DEPLOY_MLFLOW_TRACKING_URI", raising=False)
    assert cli.deploy(["--model", str(tmp_path)]) == 0
    assert "::notice title=deploy skipped::" in capsys.readouterr().out


@pytest.mark.slow
def test_deploy_registers_and_gates_the_model(registered, tracking_uri, tmp_path):
    name, _, _ = registered
    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@champion", dst_path=str(tmp_path / "m"))
    target = f"tests-deploy-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DEPLOY_MLFLOW_TRACKING_URI": tracking_uri}
    cfg_copy = tmp_path / "deploy.yaml"  # the tiny config, deploying to a registered model of its own
    cfg_copy.write_text(
        TINY_CONFIG.read_text().replace("model_name: digits-classifier", f"model_name: {target}")
        + f"\ndata:\n  dataset_path: {ROOT / 'data' / 'digits.csv'}\n"
    )
    r = subprocess.run(
        [str(BIN / "mlops-deploy"), "--model", folder, "--config", cfg_copy],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert f"registered {target} v1 at {tracking_uri}: promoted to champion" in r.stdout
    assert model_aliases(target) == {"champion": "1", "challenger": "1"}
    assert MlflowClient().get_model_version(target, "1").tags["gate.decision"] == "promoted"
    bad = subprocess.run([str(BIN / "mlops-deploy"), "--model", tmp_path], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "no MLmodel file" in bad.stderr
