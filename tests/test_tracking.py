"""Exercise 1's tracked run, read back from the server; failures never leave a run RUNNING; W&B offline."""

import hashlib
import struct
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from paths import ROOT, TINY_CONFIG

from mlops_day28.config import load_config
from mlops_day28.tracking import MLflowEpochLogger, run_tracked_training, run_wandb_offline


@pytest.fixture(scope="module")
def tiny():
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="module")
def tracked(local_mlflow, tiny):
    mlflow.set_experiment("tests_tracking")
    return run_tracked_training(tiny, progress=False)


def test_run_records_params_metrics_artifacts_data_and_model(tracked, tiny):
    client = MlflowClient()
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "baseline_model"
    p = run.data.params
    assert p["learning_rate"] == str(tiny.training.learning_rate) and p["epochs"] == str(tiny.training.num_epochs)
    assert p["architecture"] == "mlp" and p["seed"] == "42" and p["batch_size"] == "32"
    assert p["dataset_digest"] == tracked.job.dataset.digest
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        hist = client.get_metric_history(tracked.run_id, name)
        assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, tiny.training.num_epochs + 1))
        assert np.allclose([m.value for m in sorted(hist, key=lambda m: m.step)], tracked.history[name])
    assert max(tracked.history["val_accuracy"]) > 0.9
    assert {"training_plot.png", "confusion_matrix.png", "config.yaml"} <= {
        a.path for a in client.list_artifacts(tracked.run_id)
    }
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "digits" and inp.dataset.digest == tracked.job.dataset.digest[:16]
    assert {t.key: t.value for t in inp.tags}["sha256"] == tracked.job.dataset.digest
    commit = run.data.tags.get("mlflow.source.git.commit")
    assert commit is None or len(commit) == 40


def test_logged_model_predicts_like_the_trained_one(tracked):
    model = mlflow.pyfunc.load_model(tracked.model_uri)
    X = tracked.job.splits.test.X
    with torch.no_grad():
        expected = tracked.job.model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.predict(X), expected, rtol=1e-4, atol=1e-4)
    sig = model.metadata.signature.to_dict()
    assert "-1, 64" in sig["inputs"] and "-1, 10" in sig["outputs"]
    reqs = Path(mlflow.pyfunc.get_model_dependencies(tracked.model_uri)).read_text()
    assert "torch==2.13.0" in reqs.split()


def test_failure_inside_the_run_marks_it_failed(local_mlflow, tiny):
    mlflow.set_experiment("tests_tracking")

    def explode(epoch, metrics):
        if epoch == 2:
            raise RuntimeError("boom in epoch 2")

    with pytest.raises(RuntimeError, match="boom in epoch 2"):
        run_tracked_training(tiny, run_name="doomed", callbacks=[explode], progress=False)
    (run,) = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("tests_tracking").experiment_id], "attributes.run_name = 'doomed'"
    )
    assert run.info.status == "FAILED"
    assert mlflow.active_run() is None
    # what was measured before the failure is kept: the logger (called before `explode`) sent both epochs
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "train_loss")] == [1, 2]


def test_epoch_logger_batches_calls_and_keeps_steps(local_mlflow, monkeypatch):
    mlflow.set_experiment("tests_tracking")
    sent = []
    real = MlflowClient.log_batch
    monkeypatch.setattr(
        MlflowClient,
        "log_batch",
        lambda self, run_id, metrics=(), **kw: (
            sent.append([(m.key, m.step) for m in metrics]),
            real(self, run_id, metrics=metrics, **kw),
        )[1],
    )
    with mlflow.start_run() as run:
        every_epoch = MLflowEpochLogger(flush_every=0)
        for epoch in (1, 2):
            every_epoch(epoch, {"a": 1.0 * epoch, "b": 2.0})
        assert sent == [[("a", 1), ("b", 1)], [("a", 2), ("b", 2)]]  # one call per epoch, both metrics in it
        sent.clear()
        with MLflowEpochLogger(flush_every=3600, prefix="x_") as buffered:
            for epoch in (1, 2, 3):
                buffered(epoch, {"a": float(epoch)})
            assert sent == []
    assert sent == [[("x_a", 1), ("x_a", 2), ("x_a", 3)]]  # one call for all three, at the end of the block
    history = MlflowClient().get_metric_history(run.info.run_id, "x_a")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_epoch_logger_without_a_run_says_what_to_do():
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="needs a run"):
        MLflowEpochLogger()


def read_wandb_records(path: Path):
    """The records of a W&B transaction log (`run-*.wandb`): a LevelDB-style log of protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, chunks, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little left in this block for a header: padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(chunks)
            records.append(rec)
            chunks = b""
    return records


def _items(items) -> dict:
    import json

    return {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}


@pytest.mark.slow  # W&B starts a service process of its own
def test_wandb_offline_run_records_the_metrics(tiny, tmp_path):
    wb = run_wandb_offline(tiny, directory=tmp_path, progress=False)
    assert wb.run_dir.parent == tmp_path / "wandb" and wb.run_dir.name.startswith("offline-run-")
    (log,) = wb.run_dir.glob("run-*.wandb")
    records = read_wandb_records(log)
    rows = [_items(r.history.item) for r in records if r.HasField("history")]
    epochs = [r for r in rows if "train_loss" in r]
    assert [r["epoch"] for r in epochs] == list(range(1, tiny.training.num_epochs + 1))
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert np.allclose([r[name] for r in epochs], wb.history[name])
    image = next(r for r in rows if "confusion_matrix._type" in r)
    assert image["confusion_matrix._type"] == "image-file"
    assert (wb.run_dir / "files" / image["confusion_matrix.path"]).is_file()
    config = {}
    for r in records:
        if r.HasField("run"):
            config.update(_items(r.run.config.update))
        if r.HasField("config"):
            config.update(_items(r.config.update))

    def unwrap(v):
        return v["value"] if isinstance(v, dict) and "value" in v else v

    assert unwrap(config["training"])["learning_rate"] == tiny.training.learning_rate
    assert unwrap(config["dataset_digest"]) == hashlib.sha256((ROOT / "data" / "digits.csv").read_bytes()).hexdigest()
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(_items(r.summary.update))
    assert summary["test_accuracy"] == wb.test_metrics["test_accuracy"]
    artifacts = [r.artifact for r in records if r.HasField("artifact")]
    assert [(a.name, a.type) for a in artifacts] == [("digits-mlp", "model")]
    assert [e.path for e in artifacts[0].manifest.contents] == ["model.pt"]


def test_a_modules_own_mlflow_starts_empty_and_keeps_its_artifacts_in_its_folder(local_mlflow, tmp_path):
    "The `local_mlflow` fixture: a copy of one empty store per module, its Default experiment moved to its folder."
    folder = Path(local_mlflow.removeprefix("sqlite:///")).parent
    default = MlflowClient().get_experiment("0")
    assert default.artifact_location == str(folder / "mlruns" / "0")
    (tmp_path / "note.txt").write_text("kept")
    with mlflow.start_run(experiment_id="0") as run:
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    assert (folder / "mlruns" / "0" / run.info.run_id / "artifacts" / "note.txt").read_text() == "kept"
