"""Exercise 2's checks (nbs/workbook/03_checks_registry) against a registry in memory: what counts as the learner's, and when each task is done."""

from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

import mlops_day28.workbook.checks_registry as cr
import mlops_day28.workbook.tasks as ex
from mlops_day28.workbook.checks_registry import ALIAS, MY_MODEL, q1, q2, q3, q4, states_accuracy


def run(source, run_id, **metrics):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(tags={"mlflow.source.name": source}, metrics=metrics)
    )


def version(n, run_id, description=""):
    return SimpleNamespace(version=str(n), run_id=run_id, description=description)


RUNS = {
    "a": run("learner/02_registry.ipynb", "a", test_accuracy=0.9741, test_loss=0.1),
    "b": run("learner/01_tracking.ipynb", "b", val_accuracy=0.96),
    "s": run("nbs/02_registry.ipynb", "s", test_accuracy=0.99),
    "n": run("learner/02_registry.ipynb", "n", test_loss=0.2),  # no accuracy logged
}


class Registry:
    "Just what the checks call: one registered model (MY_MODEL) or none."

    def __init__(self, versions=(), aliases=None, description=""):
        self.versions, self.aliases, self.description = list(versions), dict(aliases or {}), description

    def get_registered_model(self, name):
        if name != MY_MODEL or not self.versions:
            raise MlflowException(f"Registered Model with name={name} not found", error_code="RESOURCE_DOES_NOT_EXIST")
        return SimpleNamespace(name=name, aliases=self.aliases, description=self.description)

    def search_model_versions(self, filter_string):
        assert filter_string == f"name='{MY_MODEL}'"
        return list(self.versions)

    def get_run(self, run_id):
        if run_id not in RUNS:
            raise MlflowException(f"Run '{run_id}' not found", error_code="RESOURCE_DOES_NOT_EXIST")
        return RUNS[run_id]


@pytest.fixture
def registry(monkeypatch):
    "Point the checks at a Registry, as seen from learner/02_registry.ipynb; returns a setter."
    monkeypatch.setattr(ex, "_NOTEBOOK", "learner/02_registry.ipynb")
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)

    def use(*versions, **kw):
        reg = Registry(versions, **kw)
        monkeypatch.setattr(cr, "_client", lambda: reg)
        return reg

    return use


def oks(task):
    return [r.ok for r in task.results()]


def test_a_number_states_an_accuracy_to_two_decimals_rounded_or_cut():
    assert states_accuracy("Achieves 97% accuracy", 0.9741)
    assert states_accuracy("Achieves 97% accuracy", 0.9768)
    assert states_accuracy("test accuracy 0.9741", 0.97412)
    assert states_accuracy("97.41 %", 0.97412)
    assert not states_accuracy("Achieves 87% accuracy", 0.9741)
    assert not states_accuracy("about 0.9", 0.93)
    assert not states_accuracy("0.9741", 0.9761)
    assert not states_accuracy("v2 of run 1234abcd, sha256 ...", 0.97)


def test_q1_counts_only_versions_from_your_runs(registry):
    registry()
    assert oks(q1) == [False]
    registry(version(1, "s"))  # the solution edition's version: not the learner's
    assert oks(q1) == [True, False]
    registry(version(1, "s"), version(2, "gone"))  # a version whose run was deleted
    assert oks(q1) == [True, False]
    registry(version(1, "s"), version(2, "b"))  # a run of 01_tracking in the learner's folder
    assert oks(q1) == [True, True]


def test_q2_wants_the_runs_accuracy_in_a_description(registry):
    registry(version(1, "n", "95% accurate"))
    assert oks(q2) == [True, False]
    registry(version(1, "a", "an MLP"))
    assert oks(q2) == [True, True, False]
    registry(version(1, "a", "achieves 95%"))
    assert oks(q2) == [True, True, False]
    registry(version(1, "a", "achieves 97.41% test accuracy"))
    assert oks(q2) == [True, True, True]
    registry(version(1, "b"), description="val accuracy 0.96")  # on the registered model
    assert oks(q2) == [True, True, True]
    registry(version(1, "s", "achieves 99%"))  # not the learner's
    assert oks(q2) == [False]


def test_q3_wants_champion_moved_to_a_later_version_from_another_run(registry):
    registry(version(1, "a"))
    assert oks(q3) == [True, False]
    registry(version(1, "a"), version(2, "s"), aliases={ALIAS: "2"})
    assert oks(q3) == [True, True, False]
    registry(version(1, "a"), version(2, "a"), aliases={ALIAS: "2"})  # the same run twice: not moved
    assert oks(q3) == [True, True, True, False]
    registry(version(1, "a"), version(2, "b"), aliases={ALIAS: "1"})  # never moved on
    assert oks(q3) == [True, True, True, False]
    registry(version(1, "a"), version(2, "s"), version(3, "b"), aliases={ALIAS: "3"})
    assert oks(q3) == [True, True, True, True]


def test_q4_compares_the_learners_predictions_with_the_champions(registry, monkeypatch):
    registry(version(1, "a"), aliases={ALIAS: "1"})
    X, y = np.zeros((4, 2), np.float32), np.array([0, 1, 2, 3])
    scores = np.eye(4)[[3, 1, 2, 0]]
    monkeypatch.setattr(cr, "test_split", lambda: SimpleNamespace(X=X, y=y))
    monkeypatch.setattr(cr, "champion_scores", lambda X: scores)
    assert oks(q4) == [False]  # nothing stored (no notebook here)

    stored = {}
    monkeypatch.setattr(cr, "has_variable", lambda name, what: ex.Result(name in stored, what))
    monkeypatch.setattr(cr, "learner_variable", lambda name: stored[name])
    for value, expected in [
        ([3, 1, 2], [True, True, True, False]),  # one short
        ([3, 1, 2, 1], [True, True, True, True, False]),
        ([3, 1, 2, 0], [True, True, True, True, True]),  # the digits
        (scores * 5, [True, True, True, True, True]),  # or the scores per class
    ]:
        stored[cr.PREDICTIONS] = value
        assert oks(q4) == expected, (value, [str(r) for r in q4.results()])
    registry(version(1, "a"))  # no champion
    assert oks(q4) == [True, True, False]


def test_a_check_never_raises_for_the_learner(registry, monkeypatch, capsys):
    def down():
        raise MlflowException("API request to http://127.0.0.1:5000/api/2.0 failed: Connection refused")

    monkeypatch.setattr(cr, "_client", down)
    for task in (q1, q2, q3):
        task.check()
        assert "the tracking server answers" in capsys.readouterr().out
    monkeypatch.setattr(ex, "_NOTEBOOK", None)
    registry(version(1, "a"))
    monkeypatch.setattr(ex, "_NOTEBOOK", None)
    q1.check()
    assert "run the set-up cell" in capsys.readouterr().out


def test_the_solutions_are_in_the_solution_edition():
    for task in (q1, q2, q3, q4):
        code = ex.solution_code(task.notebook, task.name)
        assert not code.startswith("#"), code
    assert "register_model" in ex.solution_code("02_registry", "q1")
    assert f"@{ALIAS}" in ex.solution_code("02_registry", "q4")
