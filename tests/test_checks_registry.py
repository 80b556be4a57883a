"""Exercise 2's checks (nbs/workbook/03_checks_registry) against a registry in memory: what counts as the learner's, and when each task is done."""

from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

import mlops_day28.workbook.checks_registry as cr
import mlops_day28.workbook.tasks as ex
from mlops_day28.workbook.checks_registry import ALIAS, MY_MODEL, q1, q2, q3, q4, states_accuracy


def run(source, run_id, **metrics):
    "A run of `source`; each trained differently (its own params)."
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id),
        data=SimpleNamespace(tags={"mlflow.source.name": source}, metrics=metrics, params={"trial": run_id}),
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
    assert oks(q3) == [True, True, True, True, True]  # and trained differently from v1


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


# Wrong but plausible answers (issue 26): each gets a ✗ whose hint names the fix.


def crosses(task) -> list[str]:
    return [str(r) for r in task.results() if not r.ok]


def staged(n, run_id, stage):
    return SimpleNamespace(version=str(n), run_id=run_id, description="", current_stage=stage)


def with_params(source, run_id, params, **metrics):
    r = run(source, run_id, **metrics)
    r.data.params = params
    return r


@pytest.fixture
def more_runs(monkeypatch):
    extra = {
        "t": run("learner/01_tracking.ipynb", "t", train_accuracy=0.9912, val_accuracy=0.9611),
        "q1": with_params("learner/02_registry.ipynb", "q1", {"epochs": "2", "lr": "0.003"}, test_accuracy=0.93),
        "q2": with_params("learner/02_registry.ipynb", "q2", {"epochs": "2", "lr": "0.003"}, test_accuracy=0.93),
        "q4": with_params("learner/02_registry.ipynb", "q4", {"epochs": "4", "lr": "0.003"}, test_accuracy=0.96),
    }
    monkeypatch.setitem(RUNS, "t", extra["t"])
    for k, v in extra.items():
        monkeypatch.setitem(RUNS, k, v)


@pytest.mark.parametrize(
    "task, versions, kw, expected",
    [
        # q1: registered under the notebook's name, not MY_MODEL; from the solution edition's run; no version at all
        ("q1", [], {}, "✗ a registered model named 'my-digits-model'"),
        ("q1", [version(1, "s")], {}, "✗ one of its versions holds the model one of your runs logged"),
        # q2: the course's number typed in; the train accuracy; one decimal; another version's accuracy
        ("q2", [version(1, "a", "Achieves 87% accuracy.")], {}, "✗ a description (the version's or the model's)"),
        ("q2", [version(1, "t", "Achieves 99.12% accuracy")], {}, "✗ a description (the version's or the model's)"),
        ("q2", [version(1, "a", "accuracy 0.9")], {}, "✗ a description (the version's or the model's)"),
        (
            "q2",
            [version(1, "a", "v1"), version(2, "b", "97.41%")],
            {},
            "✗ a description (the version's or the model's)",
        ),
        # q3: a stage instead of an alias; another alias name; never moved; the same run twice; the same training twice
        ("q3", [staged(1, "q1", "Production")], {}, "✗ 'my-digits-model' has a 'champion' alias"),
        ("q3", [version(1, "q1"), version(2, "q4")], {"aliases": {"production": "2"}}, "✗ 'my-digits-model' has a"),
        ("q3", [version(1, "q1"), version(2, "q4")], {"aliases": {ALIAS: "1"}}, "✗ 'champion' moved on"),
        ("q3", [version(1, "q1"), version(2, "q1")], {"aliases": {ALIAS: "2"}}, "✗ 'champion' moved on"),
        ("q3", [version(1, "q1"), version(2, "q2")], {"aliases": {ALIAS: "2"}}, "✗ v2 was trained differently"),
    ],
)
def test_wrong_answers_get_a_cross_that_names_the_fix(registry, more_runs, task, versions, kw, expected):
    registry(*versions, **kw)
    found = crosses({"q1": q1, "q2": q2, "q3": q3}[task])
    assert any(line.startswith(expected) for line in found), found
    assert all("hint: " in line for line in found), found


def test_a_stage_is_not_an_alias_and_the_hint_says_so(registry, more_runs):
    registry(staged(1, "q1", "Production"))
    [line] = crosses(q3)
    assert "v1 is in the stage 'Production', the deprecated way" in line and "set_registered_model_alias" in line


def test_the_right_q3_passes(registry, more_runs):
    registry(version(1, "q1"), version(2, "q4"), aliases={ALIAS: "2"})
    assert crosses(q3) == []


@pytest.fixture
def stored(monkeypatch, learner_namespace):
    "The learner's namespace, IPython's record of the cells run (`In`) included."
    ns = learner_namespace(ex, cr)
    monkeypatch.setattr(cr, "has_variable", lambda name, what: ex.Result(name in ns, what))
    return ns


@pytest.mark.parametrize(
    "cell, predicted, expected",
    [
        ('champion_predictions = mlflow.pyfunc.load_model(f"models:/{MY_MODEL}@champion").predict(test.X)', "v2", None),
        ('champion_predictions = mlflow.pyfunc.load_model(f"models:/{MY_MODEL}/1").predict(test.X)', "v1", "they are"),
        ("champion_predictions = second.job.model(torch.from_numpy(test.X)).argmax(1)", "v2", "your code loads"),
        ('champion_predictions = mlflow.pyfunc.load_model(f"models:/{MY_MODEL}/2").predict(test.X)', "v2", "your code"),
    ],
)
def test_q4_wants_the_champion_loaded_by_its_alias(registry, stored, monkeypatch, cell, predicted, expected):
    registry(version(1, "a"), version(2, "b"), aliases={ALIAS: "2"})
    X, y = np.zeros((4, 2), np.float32), np.array([0, 1, 2, 3])
    by_version = {"v1": np.array([0, 1, 2, 2]), "v2": np.array([0, 1, 2, 3])}
    monkeypatch.setattr(cr, "test_split", lambda: SimpleNamespace(X=X, y=y))
    monkeypatch.setattr(cr, "champion_scores", lambda X: by_version["v2"])
    stored[cr.PREDICTIONS] = by_version[predicted]
    stored["In"].append(cell)
    found = crosses(q4)
    if expected is None:
        assert found == []
    else:
        assert any(line.startswith(f"✗ {expected}") for line in found), found
        assert all("hint: " in line for line in found), found


ROUND2 = (
    SimpleNamespace(version="3"),
    {
        "gate.decision": "rejected",
        "gate.accuracy": "0.8185",
        "gate.compared_accuracy": "0.9778",
        "gate.compared_with": "v2",
    },
)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ({"v3_promoted": False}, None),
        ({"v3_promoted": True}, "✗ your prediction is what the gate decided: v3 rejected"),
        ({"v3_promoted": "no"}, "✗ your prediction is True or False"),
        ({}, "✗ `v3_promoted` holds your prediction"),
    ],
)
def test_q5_the_prediction_is_compared_with_the_gates_decision(stored, monkeypatch, answer, expected):
    monkeypatch.setattr(cr, "round2", lambda: ROUND2)
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    stored.update(answer)
    found = crosses(cr.q5)
    assert found == [] if expected is None else any(line.startswith(expected) for line in found), found


@pytest.mark.parametrize(
    "v3, champion, expected",
    [
        (0.819, 0.978, None),
        (0.8185, 0.9778, None),
        (0.978, 0.819, "✗ v3_accuracy is v3's accuracy"),  # swapped
        (81.85, 97.78, "✗ v3_accuracy is v3's accuracy"),  # as percentages
        (0.8185, 0.9630, "✗ champion_accuracy is the accuracy of the champion it lost to (v2)"),  # v1's, from Round 1
    ],
)
def test_q6_reads_the_gates_numbers_off_the_server(stored, monkeypatch, v3, champion, expected):
    monkeypatch.setattr(cr, "round2", lambda: ROUND2)
    stored.update(v3_accuracy=v3, champion_accuracy=champion)
    found = crosses(cr.q6)
    if expected is None:
        assert found == []
    else:
        assert any(line.startswith(expected) for line in found), found
        assert all("Version 3: the Gate paragraph" in line for line in found), found


def test_round2_finds_the_latest_version_the_gate_decided_on_from_the_undertrained_run(monkeypatch):
    name = "digits-classifier"
    tags = {"mlflow.runName": "undertrained", "gate.accuracy": "0.8", "gate.decision": "rejected"}
    runs = {
        "u1": SimpleNamespace(data=SimpleNamespace(tags=tags)),
        "u2": SimpleNamespace(data=SimpleNamespace(tags={**tags, "gate.accuracy": "0.7"})),
        "f": SimpleNamespace(data=SimpleNamespace(tags={"mlflow.runName": "full_model", "gate.accuracy": "0.97"})),
    }

    class Client:
        def get_registered_model(self, n):
            return SimpleNamespace(name=n)

        def search_model_versions(self, f):
            assert f == f"name='{name}'"
            return [version(2, "f"), version(3, "u1"), version(4, "u2"), version(5, None)]

        def get_run(self, run_id):
            return runs[run_id]

    mv, found = cr.round2(Client())
    assert (mv.version, found["gate.accuracy"]) == ("4", "0.7")


@pytest.mark.parametrize(
    "description, hint",
    [
        ("Achieves 87% accuracy.", "it states 87.00%, but your run measured 97.41%"),  # the course's number, typed
        ("accuracy 0.9", "state it to two decimals at least (0.97 or 97%)"),
    ],
)
def test_q2_hints_say_what_the_description_states_instead(registry, description, hint):
    registry(version(1, "a", description))
    [line] = crosses(q2)
    assert hint in line and "client.get_run(run_id).data.metrics" in line, line


def test_q2_a_train_accuracy_is_named_as_such(registry, more_runs):
    registry(version(1, "t", "Achieves 99.12% accuracy"))
    [line] = crosses(q2)
    assert "that is the train accuracy" in line, line
