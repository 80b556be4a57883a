"""Exercise 4's checks (mlops_day28.workbook.checks_sweep) and its checklist item, on runs made without training."""

import itertools
import uuid

import mlflow  # first: MLflow's entry point then imports mlops_day28.workbook.tasks whole
import pytest
from mlflow import MlflowClient

import mlops_day28.workbook.tasks as ex
from mlops_day28.workbook.checks_sweep import PARAM_GRID, PARENT_NAME, checklist, q1, q2, q3

pytestmark = pytest.mark.server


@pytest.fixture(autouse=True)
def _no_run_links(monkeypatch):
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@pytest.fixture
def declared(tmp_path, monkeypatch, tracking_uri):
    "A fresh folder declared as holding 04_sweep.ipynb (so no run is 'yours' yet), in an experiment of its own."
    (tmp_path / "pyproject.toml").touch()
    monkeypatch.setattr(ex, "_NOTEBOOK", None)
    monkeypatch.setenv("IPYNB_FILE", "")
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    ex.this_notebook("04_sweep.ipynb", tmp_path / f"learner_{uuid.uuid4().hex[:6]}")
    mlflow.set_experiment(f"tests_checks_sweep_{uuid.uuid4().hex[:6]}")
    yield tmp_path
    mlflow.set_experiment("Default")


def grid_runs(name_with_dropout=True, mark=("best",)):
    "A parent and 18 nested children, scored without training; `mark`: which children get is_best ('best', 'first')."
    combos = [dict(zip(PARAM_GRID, v, strict=True)) for v in itertools.product(*PARAM_GRID.values())]
    ids = {}
    with mlflow.start_run(run_name=PARENT_NAME):
        for i, params in enumerate(combos):
            name = f"lr{params['learning_rate']}_bs{params['batch_size']}" + (
                f"_do{params['dropout']}" if name_with_dropout else ""
            )
            with mlflow.start_run(run_name=name, nested=True) as child:
                mlflow.log_params(params)
                mlflow.log_metric("val_accuracy", 0.5 + i / 100)
                ids[i] = child.info.run_id
    client = MlflowClient()
    if "best" in mark:
        client.set_tag(ids[len(combos) - 1], "is_best", "true")
    if "first" in mark:
        client.set_tag(ids[0], "is_best", "true")
    return ids


def oks(results):
    return [r.ok for r in results]


def test_nothing_yet_is_a_cross_with_a_hint_everywhere(declared):
    for results in (q1.results(), q2.results(), q3.results(), list(checklist())):
        assert results and not results[0].ok and results[0].hint, results


def test_the_solution_passes_and_the_checklist_agrees(declared, monkeypatch):
    ids = grid_runs()
    assert all(oks(q1.results())) and all(oks(q2.results())), q1.results() + q2.results()
    assert all(oks(checklist())), list(checklist())
    monkeypatch.setattr(ex, "learner_variable", lambda name: ids[17])  # best_run_id, as the learner stores it
    assert all(oks(q3.results())), q3.results()
    monkeypatch.setattr(ex, "learner_variable", lambda name: ids[3])
    assert oks(q3.results()) == [True, True, False]  # a child of my_grid, but not the best


def test_the_courses_marks_and_names_are_crosses(declared):
    grid_runs(name_with_dropout=False, mark=("best", "first"))
    q1_results = q1.results()
    assert oks(q1_results) == [True, True, True, True, False]  # two children share each name
    assert "distinct name" in q1_results[-1].what
    q2_results = q2.results()
    assert oks(q2_results) == [True, False] and "exactly one" in q2_results[1].what
    assert not all(oks(checklist()))


def test_one_mark_on_the_wrong_child_is_a_cross(declared):
    grid_runs(mark=("first",))
    assert oks(q2.results()) == [True, True, False]
