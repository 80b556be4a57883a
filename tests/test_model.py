"""Model tests: the course's three (shape, accuracy, latency) and four more (overfit, determinism, invariance, data).

The trained model comes from a fixture that trains the tiny config once per session,
never from a file that may not exist. The bars come from the config's `model_tests`.
"""

import numpy as np
import pytest
import torch
from paths import TINY_CONFIG

from mlops_day28.config import load_config
from mlops_day28.evaluate import data_problems, overfit_one_batch, prediction_flip_rate, single_sample_latency
from mlops_day28.models import ARCHITECTURES, build_model
from mlops_day28.training import prepare_training


@pytest.fixture(scope="session")
def cfg():
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def trained(cfg):
    "The tiny config's model, trained once for the whole session."
    job = prepare_training(cfg)
    job.fit(progress=False)
    job.model.eval()
    return job


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_forward_pass_gives_one_score_per_class(cfg, trained, architecture):
    model = build_model(
        cfg.model.model_copy(update={"architecture": architecture}), trained.splits.train.X, trained.dataset.image_shape
    ).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(trained.splits.test.X[:1]))
    assert out.shape == (1, cfg.model.num_classes)
    assert torch.isfinite(out).all()


def test_trained_model_beats_the_accuracy_bar(cfg, trained):
    assert trained.test_metrics()["test_accuracy"] >= cfg.model_tests.min_accuracy


def test_single_sample_inference_is_within_budget(cfg, trained):
    lat = single_sample_latency(trained.model, trained.splits.test.X, n=200, warmup=20)
    assert lat["mean_ms"] < cfg.model_tests.latency_budget_ms, lat
    assert lat["p95_ms"] < cfg.model_tests.latency_p95_budget_ms, lat


def test_training_loop_can_overfit_one_batch(cfg):
    losses = overfit_one_batch(cfg, n=32, steps=200)
    assert losses[-1] < 0.01 and losses[-1] < losses[0] / 100


def test_same_seed_same_weights_same_outputs(cfg, trained):
    again = prepare_training(cfg)
    again.fit(progress=False)
    for (name, a), b in zip(trained.model.state_dict().items(), again.model.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    X = torch.from_numpy(trained.splits.test.X)
    with torch.no_grad():
        assert torch.equal(trained.model(X), again.model.eval()(X))


def test_tiny_pixel_noise_rarely_changes_predictions(cfg, trained):
    rate = prediction_flip_rate(trained.model, trained.splits.test.X, cfg.model_tests.noise)
    assert rate <= cfg.model_tests.max_flip_rate


def test_flip_rate_detects_a_brittle_model(trained):
    """The invariance check can fail: noise as large as the signal flips many predictions."""
    assert prediction_flip_rate(trained.model, trained.splits.test.X, noise=16) > 0.3


def test_data_schema_completeness_labels_and_classes(cfg, trained):
    ds = trained.dataset
    assert ds.feature_names == [f"pixel_{i}" for i in range(64)] and ds.image_shape == (1, 8, 8)
    assert not np.isnan(ds.X).any() and ds.X.min() == 0 and ds.X.max() == 16
    assert set(ds.y.tolist()) == set(range(cfg.model.num_classes))
    assert data_problems(ds, trained.splits, cfg.model.num_classes) == []


def test_data_checks_name_what_is_wrong(cfg, trained):
    ds = trained.dataset
    broken = type(ds)(**{**ds.__dict__, "X": np.where(np.arange(ds.X.size).reshape(ds.X.shape) == 5, np.nan, ds.X)})
    assert data_problems(broken, trained.splits, 10) == ["1 missing feature values"]
    splits = type(trained.splits)(
        trained.splits.train,
        trained.splits.val,
        type(trained.splits.test)(
            trained.splits.test.X[trained.splits.test.y != 3],
            trained.splits.test.y[trained.splits.test.y != 3],
            trained.splits.test.index[trained.splits.test.y != 3],
        ),
    )
    assert data_problems(ds, splits, 10) == ["test split has no examples of classes [3]"]
