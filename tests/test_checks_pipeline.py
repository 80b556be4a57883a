"""Exercise 3's checks (mlops_day28.workbook.checks_pipeline): what counts as a misspelt key, a changed value, and a missing answer."""

import os

import mlflow  # first: MLflow's entry point then imports mlops_day28.workbook.tasks whole
import pytest

import mlops_day28.workbook.tasks as ex
from mlops_day28.workbook.checks_pipeline import (
    MY_CONFIG,
    MY_DATA,
    MY_SCRIPT,
    MY_TYPO,
    config_changes,
    misspelt_keys,
    q1,
    q2,
    q3,
    q4,
    q5,
    q6,
)


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


# Wrong but plausible answers, each a ✗ whose hint names the fix (issue 26). Runs are logged as the pipeline and
# the learner's script log them, without training, on the module's own MLflow (no server).

OTHER = ("another-host", "4242")  # (host, pid) of a process that is not this one


@pytest.fixture
def runs(project, local_mlflow):
    "`log(path, owner=..., metrics=..., params=...)`: a FINISHED run of the config file at `path`, as mlops-train logs it."
    from mlops_day28.config import flatten_config, load_config
    from mlops_day28.pipeline import CONFIG_PATH_TAG
    from mlops_day28.reliability.coordination import HOST_TAG, PID_TAG

    def log(path, owner=OTHER, metrics=None, params=None):
        cfg = load_config(path)
        mlflow.set_experiment(cfg.experiment_name)
        tags = {CONFIG_PATH_TAG: str(cfg.source), HOST_TAG: owner[0], PID_TAG: owner[1]}
        with mlflow.start_run(tags=tags) as run:
            mlflow.log_params({k: v for k, v in flatten_config(cfg).items() if k != "device"} | (params or {}))
            mlflow.log_metrics(metrics or {"test_accuracy": 0.9, "test_loss": 0.3})
        return run.info.run_id

    return log


def last(results):
    return results[-1]


def crosses(results):
    return [r for r in results if not r.ok]


GOOD = "training: {num_epochs: 3, learning_rate: 0.01}\nregistry: {register_challenger: false}\n"


def test_q1_the_command_passes(runs, project):
    (project / MY_CONFIG).write_text(GOOD)
    runs(project / MY_CONFIG)
    assert all(r.ok for r in q1.results()), q1.results()


@pytest.mark.parametrize(
    "text, trained, expected",
    [
        # register_challenger set "too" is not one of the two changes
        (
            "training: {num_epochs: 3, learning_rate: 0.003}\nregistry: {register_challenger: false}\n",
            "command",
            "training.num_epochs: 3 and one more",
        ),
        ("training: {num_epochs: 3, learning_rate: 0.01}\nregistry: {register_challenger: true}\n", "command", "false"),
        (GOOD, "none", "mlops-train --config my_config.yaml"),  # written, never trained
        (GOOD, "kernel", "runs in the kernel"),  # train_pipeline(load_config(...)) in the notebook
    ],
)
def test_q1_wrong_answers(runs, project, text, trained, expected):
    from mlops_day28.workbook.checks_pipeline import this_process

    (project / MY_CONFIG).write_text(text)
    if trained != "none":
        runs(project / MY_CONFIG, owner=this_process() if trained == "kernel" else OTHER)
    wrong = crosses(q1.results())
    assert len(wrong) == 1 and expected in wrong[0].hint, wrong


def test_q2_two_fresh_processes_pass(runs, project):
    (project / MY_CONFIG).write_text(GOOD)
    runs(project / MY_CONFIG, owner=("h", "1"))
    runs(project / MY_CONFIG, owner=("h", "2"))
    assert all(r.ok for r in q2.results()), q2.results()


@pytest.mark.parametrize("how", ["second in the kernel", "both in the kernel", "same process twice"])
def test_q2_a_second_training_in_the_same_process_is_a_cross(runs, project, how):
    from mlops_day28.workbook.checks_pipeline import this_process

    (project / MY_CONFIG).write_text(GOOD)
    first, second = {
        "second in the kernel": (OTHER, this_process()),
        "both in the kernel": (this_process(), this_process()),
        "same process twice": (OTHER, OTHER),
    }[how]
    runs(project / MY_CONFIG, owner=first)
    runs(project / MY_CONFIG, owner=second)
    wrong = crosses(q2.results())
    assert len(wrong) == 1 and "fresh processes" in wrong[0].what and "mlops-train" in wrong[0].hint, wrong


def test_q2_an_edit_between_the_runs_and_other_numbers_are_crosses(runs, project):
    (project / MY_CONFIG).write_text(GOOD)
    runs(project / MY_CONFIG, owner=("h", "1"))
    (project / MY_CONFIG).write_text(GOOD.replace("0.01", "0.02"))
    runs(project / MY_CONFIG, owner=("h", "2"))
    assert [r.ok for r in q2.results()] == [False] and "again" in q2.results()[0].hint  # the old contents' run
    runs(project / MY_CONFIG, owner=("h", "3"), metrics={"test_accuracy": 0.8, "test_loss": 0.3})
    wrong = crosses(q2.results())
    assert [w.what.split(" (")[0] for w in wrong] == ["the two newest have the same test_accuracy"], wrong


@pytest.mark.parametrize(
    "typo, guess, what, hint",
    [
        ("training:\n  batch_sise: 64\n", "a", "your prediction ('a')", "mlops-check-config"),
        ("training:\n  batch_sise: 64\n", "c)", "your prediction ('c')", "mlops-check-config"),
        ("training:\n  qqqq: 64\n", "b", "a near miss of a real one: training.qqqq (close to no key)", "by a letter"),
        ("training:\n  batch_size: thirty-two\n", "b", "a near miss of a real one", "by a letter"),
        ("training:\n  batch_size: 64\n", "b", "a near miss of a real one", "by a letter"),
    ],
)
def test_q3_wrong_answers(project, monkeypatch, typo, guess, what, hint):
    import mlops_day28.workbook.checks_pipeline as cp

    monkeypatch.setattr(cp, "learner_variable", lambda name: guess)
    (project / MY_TYPO).write_text(typo)
    wrong = crosses(q3.results())
    assert wrong and what in wrong[0].what and hint in wrong[0].hint, wrong


def test_q3_a_key_that_is_no_near_miss_is_still_refused_by_name(project):
    (project / MY_TYPO).write_text("training:\n  qqqq: 64\n")
    results = q3.results()
    assert results[2].ok and results[2].what == "load_config refuses it, naming training.qqqq", results
    (project / MY_TYPO).write_text("training:\n  batch_size: thirty-two\n")
    results = q3.results()
    assert not results[2].ok and "for the misspelt key (it said:" in results[2].what, results
    (project / MY_TYPO).write_text("training:\n  batch_size: 64\n")
    assert q3.results()[2].what.startswith("load_config refuses it (it loaded the file"), q3.results()


SCRIPT = """\
import argparse

import mlflow
import yaml

parser = argparse.ArgumentParser()
parser.add_argument("--config")
args = parser.parse_args()
with open(args.config) as f:
    config = yaml.safe_load(f)
with mlflow.start_run(tags={"script": __file__}):
    mlflow.log_params(config["training"])
"""


@pytest.fixture
def script_runs(project, local_mlflow):
    "`log(n, ...)`: n FINISHED runs tagged as my_train_pipeline.py tags them (a model logged unless model=False)."
    import torch

    def log(n=2, model=True, params=None, accuracies=(0.9, 0.9)):
        for i in range(n):
            with mlflow.start_run(tags={"script": str((project / MY_SCRIPT).resolve())}):
                mlflow.log_params(params or {"a": 1, "b": 2, "c": 3})
                mlflow.log_metric("test_accuracy", accuracies[i])
                if model:
                    mlflow.pytorch.log_model(
                        torch.nn.Linear(2, 2),
                        name="model",
                        input_example=torch.zeros(1, 2).numpy(),
                        pip_requirements=["torch"],
                    )

    return log


def test_q4_the_script_passes(project, script_runs):
    (project / MY_SCRIPT).write_text(SCRIPT)
    script_runs()
    assert all(r.ok for r in q4.results()), q4.results()


@pytest.mark.parametrize(
    "source, expected",
    [
        (SCRIPT.replace('parser.add_argument("--config")', 'parser.add_argument("config")'), "add_argument"),
        (SCRIPT.replace("yaml.safe_load(f)", "yaml.load(f, Loader=yaml.Loader)"), "yaml.safe_load"),
        ("import sys, yaml\nconfig = yaml.safe_load(open(sys.argv[1]))\n", "ArgumentParser"),
        (SCRIPT.replace("with mlflow", "wiht mlflow"), "fix that line"),
    ],
)
def test_q4_wrong_scripts(project, script_runs, source, expected):
    (project / MY_SCRIPT).write_text(source)
    script_runs()
    wrong = crosses(q4.results())
    assert wrong and expected in wrong[0].hint, wrong


@pytest.mark.parametrize(
    "runs_made, expected",
    [
        ({"n": 0}, 'tags={"script": __file__}'),  # a run without the tag is not found
        ({"n": 1}, "run it twice"),
        ({"model": False}, "mlflow.pytorch.log_model"),
        ({"accuracies": (0.9, 0.8)}, "prepare_training"),
    ],
)
def test_q4_wrong_runs(project, script_runs, runs_made, expected):
    (project / MY_SCRIPT).write_text(SCRIPT)
    script_runs(**runs_made)
    wrong = crosses(q4.results())
    assert len(wrong) == 1 and expected in wrong[0].hint, wrong


def wine(path, rows=None):
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    (frame if rows is None else frame.head(rows)).to_csv(path, index=False)
    return path


def own_data(project, data_path, classes=3):
    (project / MY_DATA).write_text(
        f"data: {{dataset_path: {data_path}}}\nmodel: {{architecture: mlp, num_classes: {classes}}}\n"
    )
    return project / MY_DATA


def test_q5_and_q6_wine_passes(runs, project, monkeypatch):
    import mlops_day28.workbook.checks_pipeline as cp
    from mlops_day28.data import load_csv_dataset

    data = wine(project / "my_wine.csv")
    runs(own_data(project, data), params={"dataset_digest": load_csv_dataset(data).digest})
    assert all(r.ok for r in q5.results()), q5.results()
    monkeypatch.setattr(cp, "learner_variable", lambda name: 0.9)
    assert all(r.ok for r in q6.results()), q6.results()


def test_q5_wrong_answers(runs, project):
    from mlops_day28.data import load_csv_dataset

    digits_like = project / "digits_copy.csv"
    digits_like.write_text("a,b,label\n" + "".join(f"{i},{i + 1},{i % 10}\n" for i in range(100)))
    path = own_data(project, digits_like, classes=10)
    wrong = crosses(q5.results())  # a data set with the digits' number of classes, never trained
    assert "another data set than the digits" in wrong[0].what and "load_wine" in wrong[0].hint, wrong
    assert "mlops-train --config my_data.yaml" in wrong[1].hint, wrong

    data = wine(project / "my_wine.csv")
    own_data(project, data, classes=10)  # num_classes left at the digits'
    wrong = crosses(q5.results())
    assert len(wrong) == 1 and "num_classes" in wrong[0].hint, wrong

    path = own_data(project, data)
    runs(path, params={"dataset_digest": load_csv_dataset(data).digest})
    wine(data, rows=150)  # the data changed after the run
    wrong = crosses(q5.results())
    assert len(wrong) == 1 and "train it again" in wrong[0].hint, wrong


@pytest.mark.parametrize("answer, hint", [(90.0, "not a percentage"), (0.97, "Metrics"), (None, "Metrics")])
def test_q6_wrong_answers(runs, project, monkeypatch, answer, hint):
    import mlops_day28.workbook.checks_pipeline as cp
    from mlops_day28.data import load_csv_dataset

    data = wine(project / "my_wine.csv")
    runs(own_data(project, data), params={"dataset_digest": load_csv_dataset(data).digest})
    monkeypatch.setattr(cp, "learner_variable", lambda name: answer)
    result = last(q6.results())
    assert not result.ok and hint in result.hint, result


def test_q6_without_an_answer_is_a_cross(runs, project):
    assert "do task 5 first" in last(q6.results()).hint
