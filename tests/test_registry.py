"""Registry helpers: errors that name what exists, and a failed promotion that changes nothing."""

import uuid

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from paths import TINY_CONFIG

from mlops_day28 import registry
from mlops_day28.config import load_config
from mlops_day28.registry import (
    ModelLoadError,
    RegistryError,
    load_model,
    model_aliases,
    promote_if_better,
    register_run_model,
    resolve_model_uri,
    rollback,
)
from mlops_day28.tracking import run_tracked_training


@pytest.fixture(scope="module")
def two_versions(local_mlflow):
    mlflow.set_experiment("tests_registry")
    cfg = load_config(TINY_CONFIG, ["tracking.run_name=registry_test", "training.num_epochs=2"])
    name = f"tests-registry-{uuid.uuid4().hex[:8]}"
    run = run_tracked_training(cfg, progress=False)
    register_run_model(run.run_id, name, alias="champion")
    register_run_model(run.run_id, name, alias="challenger")
    return name, run


def test_unknown_alias_names_the_existing_ones(two_versions):
    name, _ = two_versions
    with pytest.raises(
        ModelLoadError, match=r"has no alias 'production'; its aliases: challenger -> v2, champion -> v1"
    ):
        load_model(f"models:/{name}@production")


def test_unknown_model_and_run_are_named(two_versions):
    name, _ = two_versions
    with pytest.raises(ModelLoadError, match=rf"no registered model 'nope-{name}'.*registered: .*{name}"):
        load_model(f"models:/nope-{name}@champion")
    with pytest.raises(RegistryError, match="run 'deadbeef' does not exist"):
        register_run_model("deadbeef", name)


def test_failed_promotion_leaves_aliases_and_tags_as_they_were(two_versions, monkeypatch):
    name, run = two_versions
    before = model_aliases(name)
    tags_before = MlflowClient().get_model_version(name, "2").tags

    def unloadable(*args, **kwargs):
        raise OSError("model files unreadable")

    monkeypatch.setattr(registry, "evaluate_version", unloadable)
    X, y = run.job.splits.test.X, run.job.splits.test.y
    with pytest.raises(OSError):
        promote_if_better(name, X, y)
    with pytest.raises(RegistryError, match="has no version 7; versions: 1, 2"):
        promote_if_better(name, X, y, version=7)
    assert model_aliases(name) == before
    assert MlflowClient().get_model_version(name, "2").tags == tags_before


def test_same_version_is_not_promoted_over_itself(two_versions):
    name, run = two_versions
    d = promote_if_better(name, run.job.splits.test.X, run.job.splits.test.y, version=1)
    assert not d.promoted and d.reason == "already the champion"


def test_tie_is_rejected_and_rollback_needs_history(two_versions):
    name, run = two_versions
    d = promote_if_better(name, run.job.splits.test.X, run.job.splits.test.y)  # v2 is the same model as v1
    assert not d.promoted and d.challenger_accuracy == d.champion_accuracy
    assert model_aliases(name) == {"champion": "1", "challenger": "2"}
    with pytest.raises(RegistryError, match="no previous champion to roll back to"):
        rollback(name)


def test_first_champion_needs_the_minimum_accuracy(two_versions):
    _, run = two_versions
    name = f"tests-registry-{uuid.uuid4().hex[:8]}"
    register_run_model(run.run_id, name, alias="challenger")
    d = promote_if_better(name, run.job.splits.test.X, run.job.splits.test.y, min_accuracy=0.999)
    assert not d.promoted and "< the minimum 0.9990" in d.reason
    assert model_aliases(name) == {"challenger": "1"}
    assert np.isclose(d.challenger_accuracy, run.test_metrics["test_accuracy"])


def test_an_alias_resolves_to_the_version_it_points_at_now(two_versions):
    name, run = two_versions
    ref = resolve_model_uri(f"models:/{name}@champion")
    assert (ref.name, ref.version, ref.load_uri) == (name, "1", f"models:/{name}/1")
    assert resolve_model_uri(f"models:/{name}/2").version == "2"
    assert resolve_model_uri(f"runs:/{run.run_id}/model").version == run.run_id
    with pytest.raises(ModelLoadError, match="has no version 9; versions: 1, 2"):
        resolve_model_uri(f"models:/{name}/9")


def test_loading_a_registered_model_leaves_nothing_in_the_temp_folder(two_versions, tmp_path, monkeypatch):
    "MLflow downloads a registry's model into a temporary folder it never removes; load_model removes it."
    import tempfile

    name, _ = two_versions
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where tempfile and MLflow put folders now
    model = load_model(f"models:/{name}@champion")
    assert model.predict(np.zeros((1, 64), dtype=np.float32)).shape == (1, 10)  # loaded, and usable after
    assert list((tmp_path / "tmp").iterdir()) == []
