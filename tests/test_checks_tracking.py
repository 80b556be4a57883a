"""Exercise 1's checks (nbs/workbook/02_checks_tracking) against real runs in an in-process MLflow: the right
answer passes, and each wrong-but-plausible answer gets a ✗ whose hint names the fix."""

import functools
import io
import math

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import mlops_day28.workbook.checks_tracking as ct
import mlops_day28.workbook.tasks as ex
from mlops_day28.tracking import plot_confusion_matrix

HERE = "learner/01_tracking.ipynb"
SCRATCH = {  # a model trained from scratch: what the right answer logs, per epoch
    "train_loss": [0.66, 0.26, 0.13, 0.09, 0.089],
    "train_accuracy": [0.80, 0.92, 0.96, 0.98, 0.98],
    "val_loss": [0.70, 0.35, 0.2, 0.15, 0.14],
    "val_accuracy": [0.796, 0.896, 0.944, 0.962, 0.959],
}


@pytest.fixture
def learner(local_mlflow, monkeypatch, tmp_path, learner_namespace):
    "The learner's notebook and namespace: runs started here are learner/01_tracking.ipynb's; returns the namespace."
    monkeypatch.setattr(ex, "_NOTEBOOK", HERE)
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    ns = learner_namespace(ex, ct)
    client = MlflowClient()
    for exp in client.search_experiments():  # what earlier tests logged is gone: each test starts on an empty server
        for run in client.search_runs([exp.experiment_id]):
            client.delete_run(run.info.run_id)
    ns["experiment"] = f"tracking-checks-{tmp_path.name}"
    mlflow.set_experiment(ns["experiment"])
    return ns


def crosses(task) -> list[str]:
    "The ✗ lines of a task's results, with their hints."
    return [str(r) for r in task.results() if not r.ok]


@functools.cache
def _drawn(kind: str, epochs: tuple = ()) -> bytes:
    "A figure's PNG, drawn once per test process (a draw costs about 0.3 s; the tests log many copies)."
    out = io.BytesIO()
    if kind == "curves":
        plt.plot(epochs, [1 / e for e in epochs], label="train")
        plt.plot(epochs, [1.2 / e for e in epochs], label="val")
        plt.legend(), plt.xlabel("epoch")
        plt.savefig(out, format="png"), plt.close()
    else:
        y = np.arange(50) % 10
        fig = plot_confusion_matrix(y, (y + (np.arange(50) % 7 == 0)) % 10)
        fig.savefig(out, format="png"), plt.close(fig)
    return out.getvalue()


def png(tmp_path, name, epochs=(1, 2, 3, 4, 5)) -> str:
    "A training-curves figure over `epochs`, saved as `name`."
    (tmp_path / name).write_bytes(_drawn("curves", tuple(epochs)))
    return str(tmp_path / name)


def confusion(tmp_path, name="confusion_matrix.png") -> str:
    (tmp_path / name).write_bytes(_drawn("confusion"))
    return str(tmp_path / name)


def log_my_run(tmp_path, metrics=SCRATCH, pngs=None, steps=True, model=True, name="my_run", source=HERE) -> str:
    "A run as Task 1 asks (or as a wrong answer makes it); returns its id."
    from sklearn.dummy import DummyClassifier

    with mlflow.start_run(run_name=name, tags={"mlflow.source.name": source}) as run:
        mlflow.log_params({"learning_rate": 0.003, "batch_size": 32, "architecture": "mlp"})
        for key, values in metrics.items():
            for epoch, value in enumerate(values, 1):
                mlflow.log_metric(key, value, step=epoch if steps else 0)
        if model:
            fitted = DummyClassifier().fit(np.zeros((4, 2)), [0, 1, 0, 1])
            mlflow.sklearn.log_model(fitted, name="model", pip_requirements=["scikit-learn"])
        for path in pngs if pngs is not None else [png(tmp_path, "training_plot.png"), confusion(tmp_path)]:
            mlflow.log_artifact(path)
    return run.info.run_id


# q1: a complete run


def test_q1_passes_the_right_answer(learner, tmp_path):
    log_my_run(tmp_path)
    assert crosses(ct.q1) == []


@pytest.mark.parametrize(
    "wrong, expected",
    [
        ("constant metrics", "✗ train_loss falls over the epochs (0.100 at the first, 0.100 at the last)"),
        ("the plain way's model, trained on", "✗ a model trained from scratch in this run"),
        ("a one-point curves PNG", "✗ a PNG of training curves, a point per epoch (none crosses the epochs)"),
        ("the confusion matrix twice", "✗ a PNG of training curves, a point per epoch (none crosses the epochs)"),
        ("no step", "✗ val_accuracy once per epoch, with its step (5 values)"),
    ],
)
def test_q1_wrong_answers_get_a_cross_that_names_the_fix(learner, tmp_path, wrong, expected):
    kwargs = {  # made only for this test's wrong answer
        "constant metrics": lambda: {"metrics": {k: [0.1] * 5 for k in SCRATCH}},
        "the plain way's model, trained on": lambda: {
            "metrics": {**SCRATCH, "train_loss": [0.047, 0.04, 0.036, 0.023, 0.024], "val_accuracy": [0.97] * 5}
        },
        "a one-point curves PNG": lambda: {
            "pngs": [png(tmp_path, "training_plot.png", epochs=[5]), confusion(tmp_path)]
        },
        "the confusion matrix twice": lambda: {"pngs": [confusion(tmp_path), confusion(tmp_path, "cm2.png")]},
        "no step": lambda: {"steps": False},
    }[wrong]()
    log_my_run(tmp_path, **kwargs)
    found = crosses(ct.q1)
    assert any(line.startswith(expected) for line in found), found
    assert all("hint: " in line for line in found), found


def test_q1_hints_name_the_fix(learner, tmp_path):
    log_my_run(tmp_path, metrics={**SCRATCH, "train_loss": [0.1] * 5, "val_accuracy": [0.97] * 5}, model=False)
    hints = "\n".join(crosses(ct.q1))
    assert "evaluate(model, job.train_loader)['loss']" in hints
    assert "job = prepare_training(cfg)" in hints
    assert "mlflow.pytorch.log_model" in hints


def test_a_curve_spans_the_figure_and_a_point_or_a_heatmap_does_not(tmp_path):
    assert ct.curve_span(png(tmp_path, "c.png")) > 0.5
    assert ct.curve_span(png(tmp_path, "two.png", epochs=[1, 2])) > 0.5
    assert ct.curve_span(png(tmp_path, "one.png", epochs=[5])) < 1 / 3
    assert ct.curve_span(confusion(tmp_path)) == 0.0


# q2: the best run, by a query, on a server that holds a colleague's better runs


QUERY = """runs = mlflow.search_runs(
    search_all_experiments=True,
    filter_string=f"tags.`mlflow.source.name` = '{current_notebook()}'",
    order_by=["metrics.val_accuracy DESC"],
    max_results=1,
)
best_run_id = runs.iloc[0]["run_id"]"""
WRONG_QUERIES = {
    "no filter_string": (
        QUERY.replace("    filter_string=f\"tags.`mlflow.source.name` = '{current_notebook()}'\",\n", ""),
        "✗ it is a run of this notebook with a val_accuracy (it is 'colleagues_best' from colleague/01_tracking.ipynb)",
    ),
    "this experiment, no filter_string": (
        'runs = mlflow.search_runs(experiment_names=[EXPERIMENT], order_by=["metrics.val_accuracy DESC"])\n'
        'best_run_id = runs.iloc[0]["run_id"]',
        "✗ it is a run of this notebook with a val_accuracy (it is 'colleagues_best' from colleague/01_tracking.ipynb)",
    ),
    "a loose LIKE on the notebook's name": (
        QUERY.replace("= '{current_notebook()}'", "LIKE '%01_tracking.ipynb'"),
        "✗ it is a run of this notebook with a val_accuracy (it is 'colleagues_best' from colleague/01_tracking.ipynb)",
    ),
    "no order_by": (
        QUERY.replace('    order_by=["metrics.val_accuracy DESC"],\n', ""),
        "✗ your query puts the highest val_accuracy first",
    ),
    "ASC": (QUERY.replace("DESC", "ASC"), "✗ it has this notebook's highest val_accuracy (0.9500; the best is 0.9700)"),
    "the row, not its run_id": (QUERY.replace('runs.iloc[0]["run_id"]', "runs.iloc[0]"), "✗ `best_run_id` is a run id"),
}


def run_query(ns, src):
    "Run the learner's cell as IPython would, and record it in `In`."
    scope = {"mlflow": mlflow, "current_notebook": ex.current_notebook, "EXPERIMENT": ns["experiment"]}
    exec(src, scope)
    ns["best_run_id"] = scope["best_run_id"]
    ns["In"].append(src)


@pytest.fixture
def notebook_runs(learner, tmp_path):
    "This notebook's runs (the best is not the newest), a colleague's better ones, and one of the solution edition's."
    best = log_my_run(tmp_path, metrics={"val_accuracy": [0.9, 0.97]}, model=False, pngs=[], name="plain_baseline")
    log_my_run(tmp_path, metrics={"val_accuracy": [0.9, 0.95]}, model=False, pngs=[])
    log_my_run(
        tmp_path, metrics={"val_accuracy": [0.99]}, model=False, pngs=[], source="nbs/exercises/01_tracking.ipynb"
    )
    others = ct.others_runs(learner["experiment"])
    assert [r.data.metrics["val_accuracy"] for r in others] == [ct.OTHERS_ACCURACY] * 2
    return best


def test_q2_passes_the_right_answer(learner, notebook_runs):
    run_query(learner, QUERY)
    assert learner["best_run_id"] == notebook_runs
    assert crosses(ct.q2) == []


@pytest.mark.parametrize("wrong", sorted(WRONG_QUERIES))
def test_q2_wrong_queries_get_a_cross_that_names_the_fix(learner, notebook_runs, wrong):
    src, expected = WRONG_QUERIES[wrong]
    run_query(learner, src)
    found = crosses(ct.q2)
    assert any(line.startswith(expected) for line in found), found
    assert all("hint: " in line for line in found), found


def test_a_colleagues_runs_are_logged_once(learner, notebook_runs):
    first = [r.info.run_id for r in ct.others_runs(learner["experiment"])]
    assert [r.info.run_id for r in ct.others_runs(learner["experiment"])] == first
    assert {r.data.tags["mlflow.source.name"] for r in ct.others_runs(learner["experiment"])} == {ct.OTHERS_NOTEBOOK}


# q4: read it off your server


@pytest.mark.parametrize(
    "answer, expected",
    [
        ((4, 0.962), None),  # the right answer
        ((5, 0.959), "✗ best_val_accuracy is your latest my_run's highest val_accuracy"),  # the last epoch's
        ((3, 0.962), "✗ best_epoch is the epoch (the step you logged) where it reached it"),  # counted from 0
        ((4, 96.2), "✗ best_val_accuracy is your latest my_run's highest val_accuracy"),  # as a percentage
        ((2, 0.97), "✗ best_val_accuracy is your latest my_run's highest val_accuracy"),  # another run's
    ],
)
def test_q4_reads_the_best_epoch_of_your_my_run(learner, tmp_path, answer, expected):
    log_my_run(tmp_path, metrics={"val_accuracy": [0.9, 0.97]}, model=False, pngs=[], name="plain_baseline")
    log_my_run(tmp_path, model=False, pngs=[])
    learner["best_epoch"], learner["best_val_accuracy"] = answer
    found = crosses(ct.q4)
    if expected is None:
        assert found == []
    else:
        assert any(line.startswith(expected) for line in found), found
        assert all("hint: " in line for line in found), found


def test_q4_without_an_answer_says_what_to_type(learner):
    assert crosses(ct.q4) == [
        "✗ `best_epoch` is defined\n    hint: read it in the UI, then type it: best_epoch = ...; best_val_accuracy = ..."
    ]


# q3: the same training in W&B, offline (a run file on disk each: a few seconds)


def wandb_run(tmp_path, per_epoch=True, image=True):
    import wandb

    run = wandb.init(
        project="checks-test",
        mode="offline",
        dir=str(tmp_path),
        config={"learning_rate": 0.003, "batch_size": 32},
        settings=wandb.Settings(silent=True, console="off"),
    )
    for epoch in (1, 2, 3) if per_epoch else (3,):
        run.log({"epoch": epoch, "train_loss": 1 / epoch, "val_acc": 1 - 1 / (epoch + 2)})
    cm = confusion(tmp_path)
    run.log({"confusion_matrix": wandb.Image(cm) if image else cm})
    run.finish()
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "wrong, expected",
    [
        (None, None),
        ("logged once, after training", "✗ losses and accuracies logged per epoch (1 rows)"),
        ("the confusion matrix's path, not a wandb.Image", "✗ the confusion matrix as a wandb.Image"),
    ],
)
def test_q3_wrong_answers_get_a_cross(learner, tmp_path, wrong, expected):
    learner["wandb_run"] = wandb_run(
        tmp_path,
        per_epoch=wrong != "logged once, after training",
        image=wrong != "the confusion matrix's path, not a wandb.Image",
    )
    found = crosses(ct.q3)
    if expected is None:
        assert found == []
    else:
        assert any(line.startswith(expected) for line in found), found


def test_checks_never_raise_and_the_solutions_are_in_the_solution_edition(learner, capsys):
    for task in (ct.q1, ct.q2, ct.q3, ct.q4):
        task.check()
        assert "✗" in capsys.readouterr().out
        code = ex.solution_code(task.notebook, task.name)
        assert "holds a solution" not in code and "which is not here" not in code, code
    assert math.isclose(ct.OTHERS_ACCURACY, 0.999)
