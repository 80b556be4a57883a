"""Exercise 3's checks (mlops_day28.workbook.checks_pipeline): what counts as a misspelt key, a changed value, and a missing answer."""

import os

import mlflow  # noqa: F401  first: MLflow's entry point then imports mlops_day28.workbook.tasks whole
import pytest

import mlops_day28.workbook.tasks as ex
from mlops_day28.workbook.checks_pipeline import MY_CONFIG, MY_TYPO, config_changes, misspelt_keys, q1, q2, q3


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A project folder declared as holding 03_pipeline.ipynb, with its own configs/config.yaml."
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yaml").write_text("training: {num_epochs: 15, learning_rate: 0.003}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ex, "_NOTEBOOK", None)
    monkeypatch.setenv("IPYNB_FILE", "")
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    ex.this_notebook("03_pipeline.ipynb", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"training": {"batch_sise": 64}}, {"training.batch_sise": "training.batch_size"}),
        ({"modle": {"dropout": 0.1}}, {"modle": "model"}),
        ({"training": {"qqqq": 1}}, {}),  # unknown, but a near miss of nothing
        ({"data": {"train_split": 0.7, "val_split": 0.15, "test_split": 0.15}}, {}),  # the course's keys are known
        ({"training": {"num_epochs": 3}}, {}),
    ],
)
def test_misspelt_keys(data, expected):
    assert misspelt_keys(data) == expected


def test_config_changes_counts_values_that_differ(project):
    (project / MY_CONFIG).write_text("training: {num_epochs: 3}\nmodel: {dropout: 0.5}\n")
    changes = config_changes(project / MY_CONFIG)
    assert changes["training.num_epochs"] == (15, 3)
    assert changes["model.dropout"] == (0.2, 0.5)
    assert "training.learning_rate" in changes  # the file leaves it at the default, 0.001


def test_missing_files_are_a_cross_with_a_hint(project):
    for q in (q1, q2, q3):
        results = q.results()
        assert results and not results[0].ok and results[0].hint, (q.name, results)


def test_a_typo_file_is_recognised_and_a_good_file_is_not(project):
    (project / MY_TYPO).write_text("training:\n  lerning_rate: 0.01\n")
    oks = [r.ok for r in q3.results()]
    assert oks == [True, True, True, False]  # no prediction recorded outside a notebook
    (project / MY_TYPO).write_text("training:\n  learning_rate: 0.01\n")
    assert [r.ok for r in q3.results()] == [True, False, False, False]


def test_an_invalid_config_is_a_cross_naming_the_key(project):
    (project / MY_CONFIG).write_text("training: {batch_size: thirty-two}\n")
    results = q1.results()
    assert [r.ok for r in results] == [True, False]
    assert "training.batch_size" in results[1].hint
    assert os.fspath(project) not in results[1].hint  # the path is not repeated
