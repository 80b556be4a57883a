"""Exercise 4's checks (mlops_day28.workbook.checks_sweep) and its checklist item, on runs made without training."""

import itertools
import uuid

import mlflow  # first: MLflow's entry point then imports mlops_day28.workbook.tasks whole
import pytest
from mlflow import MlflowClient

import mlops_day28.workbook.tasks as ex
from mlops_day28.workbook.checks_sweep import PARAM_GRID, PARENT_NAME, checklist, q1, q2, q3, q4, q5


@pytest.fixture(autouse=True)
def _no_run_links(monkeypatch):
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _declare(tmp_path, monkeypatch, experiment: str) -> None:
    "Declare `tmp_path` as a learner's folder holding 04_sweep.ipynb, logging to a new experiment named after `experiment`."
    (tmp_path / "pyproject.toml").touch()
    monkeypatch.setattr(ex, "_NOTEBOOK", None)
    monkeypatch.setenv("IPYNB_FILE", "")
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    ex.this_notebook("04_sweep.ipynb", tmp_path / f"learner_{uuid.uuid4().hex[:6]}")
    mlflow.set_experiment(f"{experiment}_{uuid.uuid4().hex[:6]}")


@pytest.fixture
def declared(tmp_path, monkeypatch, tracking_uri):
    "A fresh folder declared as holding 04_sweep.ipynb (so no run is 'yours' yet), in an experiment of its own."
    _declare(tmp_path, monkeypatch, "tests_checks_sweep")
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


@pytest.mark.server
def test_nothing_yet_is_a_cross_with_a_hint_everywhere(declared):
    for results in (q1.results(), q2.results(), q3.results(), list(checklist())):
        assert results and not results[0].ok and results[0].hint, results


@pytest.mark.server
def test_the_solution_passes_and_the_checklist_agrees(declared, monkeypatch):
    ids = grid_runs()
    assert all(oks(q1.results())) and all(oks(q2.results())), q1.results() + q2.results()
    assert all(oks(checklist())), list(checklist())
    answers = {"best_run_id": ids[17], "find_best_child": query_best}  # as the learner stores them
    monkeypatch.setattr(ex, "learner_variable", answers.get)
    assert all(oks(q3.results())), q3.results()
    answers["best_run_id"] = ids[3]
    assert oks(q3.results()) == [True, True, False, True, True]  # a child of my_grid, but not the best


@pytest.mark.server
def test_the_courses_marks_and_names_are_crosses(declared):
    grid_runs(name_with_dropout=False, mark=("best", "first"))
    q1_results = q1.results()
    assert oks(q1_results) == [True, True, True, True, False]  # two children share each name
    assert "distinct name" in q1_results[-1].what
    q2_results = q2.results()
    assert oks(q2_results) == [True, False] and "exactly one" in q2_results[1].what
    assert not all(oks(checklist()))


@pytest.mark.server
def test_one_mark_on_the_wrong_child_is_a_cross(declared):
    grid_runs(mark=("first",))
    assert oks(q2.results()) == [True, True, False]


# Wrong but plausible answers, each a ✗ whose hint names the fix (issue 26). In-process MLflow, no server.


@pytest.fixture
def mine(tmp_path, monkeypatch, local_mlflow):
    "A declared 04_sweep notebook with its my_grid on the module's own MLflow; `answer(**values)` sets its variables."
    _declare(tmp_path, monkeypatch, "tests_wrong_sweep")
    ids = grid_runs()
    values = {}

    def learner_variable(name):
        if name not in values:
            raise NameError(name)
        return values[name]

    monkeypatch.setattr(ex, "learner_variable", learner_variable)
    yield ids, values.update
    mlflow.set_experiment("Default")


def query_best():
    "The solution's method: the newest my_grid of this notebook, then its children, best first."
    parents = mlflow.search_runs(
        filter_string=f"attributes.run_name = '{PARENT_NAME}' AND tags.`mlflow.source.name` = '{ex.current_notebook()}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    best = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parents.iloc[0]['run_id']}'",
        order_by=["metrics.val_accuracy DESC"],
        max_results=1,
    )
    return best.iloc[0]["run_id"]


def newest_child():
    "A query with no order: the newest child first."
    parent = mlflow.search_runs(filter_string=f"attributes.run_name = '{PARENT_NAME}'", max_results=1)
    return mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.iloc[0]['run_id']}'").iloc[0]["run_id"]


def last(results):
    return results[-1]


def test_q3_the_query_passes_and_leaves_the_grid_as_it_was(mine):
    ids, answer = mine
    answer(best_run_id=query_best(), find_best_child=query_best)
    results = q3.results()
    assert all(oks(results)), results
    assert "the better one" in last(results).what
    assert all(oks(q1.results())) and all(oks(q2.results()))  # the two added children are gone, the mark is back
    assert MlflowClient().get_run(ids[17]).data.tags["is_best"] == "true"


@pytest.mark.parametrize(
    "wrong, expected",
    [
        ("scores", "not a dict or a run id kept in the notebook"),  # max(scores, key=scores.get), wrapped
        ("copied", "not a dict or a run id kept in the notebook"),  # the run id, pasted from the UI
        ("newest", 'order_by=["metrics.val_accuracy DESC"]'),  # a query, unordered
        ("raises", "must ask the server"),
    ],
)
def test_q3_a_method_that_does_not_ask_the_server_is_a_cross(mine, wrong, expected):
    ids, answer = mine
    scores = {ids[i]: 0.5 + i / 100 for i in ids}

    def raises():
        raise KeyError("run_id")

    find = {
        "scores": lambda: max(scores, key=scores.get),
        "copied": lambda: ids[17],
        "newest": newest_child,
        "raises": raises,
    }[wrong]
    answer(best_run_id=ids[17], find_best_child=find)
    result = last(q3.results())
    assert not result.ok and expected in result.hint, result
    assert len(MlflowClient().search_runs([MlflowClient().get_run(ids[0]).info.experiment_id])) == 19  # cleaned up


def test_q3_the_issues_answer_without_a_function_is_a_cross(mine):
    ids, answer = mine
    scores = {ids[i]: 0.5 + i / 100 for i in ids}
    answer(best_run_id=max(scores, key=scores.get))  # the issue's: right id, no query
    result = last(q3.results())
    assert not result.ok and "def find_best_child()" in result.hint, result


@pytest.mark.parametrize(
    "value, ok, hint",
    [(0.67, True, ""), ("0.67", True, ""), (67.0, False, "not a percentage"), (0.5, False, "sort its children")],
)
def test_q4_the_best_accuracy_read_off_the_server(mine, value, ok, hint):
    _, answer = mine
    answer(my_best_accuracy=value)
    result = last(q4.results())
    assert result.ok is ok and hint in result.hint, result


def test_q4_no_answer_is_a_cross(mine):
    result = last(q4.results())
    assert not result.ok and "my_best_accuracy = " in result.hint


@pytest.mark.parametrize("guess, ok", [(2, True), ("2", True), (4, False), (0, False), ("two", False)])
def test_q5_the_prediction_is_compared_with_the_second_call(mine, guess, ok):
    from types import SimpleNamespace

    _, answer = mine
    answer(second_call_prediction=guess, rest=SimpleNamespace(ran=[1, 2], skipped=2))
    result = last(q5.results())
    assert result.ok is ok and (ok or result.hint), result


def test_q5_without_the_demo_is_a_cross_naming_it(mine):
    _, answer = mine
    answer(second_call_prediction=2)
    result = last(q5.results())
    assert not result.ok and "demo" in result.hint
