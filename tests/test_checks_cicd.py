"""Exercise 5's checks (mlops_day28.workbook.checks_cicd): missing and wrong answers are a ✗ with a hint, right ones a ✓.

The learner's files go to a folder of their own, declared as holding 05_cicd.ipynb. q1 needs the registry's
champion (a server), so here its pieces run on a model trained in the test: `save_test_inputs` and
`run_model_tests`, whose verdicts q1 reports.
"""

import os
import shutil
import uuid

import mlflow  # noqa: F401  first: MLflow's entry point then imports mlops_day28.workbook.tasks whole
import pytest
from paths import ROOT, TINY_CONFIG

import mlops_day28.workbook.checks_cicd as cc
import mlops_day28.workbook.tasks as ex
from mlops_day28.config import load_config
from mlops_day28.training import prepare_training
from mlops_day28.workbook.checks_cicd import (
    BROKEN_DIGIT,
    GATE_MARGIN,
    MY_GATE,
    MY_TEST,
    MY_WORKFLOW,
    checklist,
    q1,
    q2,
    q3,
    q4,
    quotes_number,
    run_model_tests,
    save_test_inputs,
    step_changes,
)

WORKFLOW = ROOT / ".github" / "workflows" / "ml_pipeline.yml"
STEP_ANCHOR = "      - name: Metrics table to the job summary\n"


@pytest.fixture
def folder(monkeypatch):
    "A folder of the project (git-ignored) declared as holding 05_cicd.ipynb, as learner/ would be."
    d = ROOT / ".workbook" / f"test-checks-cicd-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(ex, "_NOTEBOOK", None)
    monkeypatch.setenv("IPYNB_FILE", "")
    monkeypatch.delenv(ex.STRICT_ENV, raising=False)
    ex.this_notebook("05_cicd.ipynb", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def oks(task):
    return [r.ok for r in task.results()]


def test_missing_files_are_a_cross_with_a_hint(folder):
    for q in (q1, q2, q3):
        results = q.results()
        assert len(results) == 1 and not results[0].ok and results[0].hint, (q.name, results)
    results = list(checklist())
    assert [r.ok for r in results] == [False] * 3 and all(r.hint for r in results)
    assert [r.what.split(":")[0] for r in results] == ["q1", "q2", "q3"]


def test_a_file_without_tests_or_not_python(folder):
    (folder / MY_TEST).write_text("def helper():\n    return 1\n")
    assert oks(q1) == [False]
    (folder / MY_TEST).write_text("def test_x(:\n")
    results = q1.results()
    assert [r.ok for r in results] == [False] and "is Python" in results[0].what


@pytest.mark.slow
def test_the_model_tests_pass_on_a_trained_model_and_fail_on_an_untrained_one(tmp_path):
    cfg = load_config(TINY_CONFIG, ["training.num_epochs=2"])
    job = prepare_training(cfg)
    job.fit(progress=False)
    files = save_test_inputs(cfg, tmp_path, job.model.state_dict())
    test = tmp_path / "my_test.py"
    test.write_text(
        "import os, numpy as np, torch\n"
        "def test_accuracy():\n"
        "    m, d = torch.load(os.environ['MODEL_PATH'], weights_only=False), np.load(os.environ['TEST_DATA'])\n"
        "    assert (m(torch.from_numpy(d['X'])).argmax(1).numpy() == d['y']).mean() > 0.8\n"
        "def test_shape():\n"
        "    m = torch.load(os.environ['MODEL_PATH'], weights_only=False)\n"
        "    assert m(torch.zeros(1, 64)).shape == (1, 10)\n"
    )
    runs = run_model_tests(test, {k: files[k] for k in ("trained", "untrained")}, files["data"])
    assert runs["trained"][0] == 0, runs["trained"][1]
    assert runs["untrained"][0] == 1 and "1 failed, 1 passed" in runs["untrained"][1]
    assert not list(tmp_path.glob("**/.pytest_cache")) and not list(tmp_path.glob("**/__pycache__"))


def test_step_changes_names_added_and_changed_steps():
    import yaml

    original = yaml.safe_load(WORKFLOW.read_text())
    mine = yaml.safe_load(WORKFLOW.read_text())
    assert step_changes(original, mine) == []
    mine["jobs"]["deploy"]["steps"].append({"name": "Smoke test", "run": "curl -f http://localhost:8000/health"})
    mine["jobs"]["train"]["steps"][3]["run"] = "make ci-train CONFIG=configs/tiny.yaml"
    assert step_changes(original, mine) == ["changed train: make ci-train", "added deploy: Smoke test"]


@pytest.mark.slow  # check-jsonschema loads GitHub's schema: seconds a run
def test_a_workflow_copy_needs_a_new_step_and_clean_linters(folder):
    text = WORKFLOW.read_text()
    (folder / MY_WORKFLOW).write_text(text)
    results = q3.results()
    assert [r.ok for r in results][:2] == [True, False] and all(r.ok for r in results[2:]), results
    step = "      - name: Show the report\n        run: cat ci-artifacts/metrics.json\n"
    (folder / MY_WORKFLOW).write_text(text.replace(STEP_ANCHOR, step + STEP_ANCHOR))
    assert all(oks(q3)), q3.results()
    unpinned = "      - uses: actions/upload-artifact@v4\n        with:\n          name: x\n          path: x\n"
    (folder / MY_WORKFLOW).write_text(text.replace(STEP_ANCHOR, unpinned + STEP_ANCHOR))
    results = {r.what: r for r in q3.results()}
    zizmor = results["zizmor --offline finds nothing"]
    assert not zizmor.ok and "unpinned" in zizmor.hint, zizmor
    (folder / MY_WORKFLOW).write_text("on: push\njobs: [1, 2]\n")
    assert oks(q3) == [False]


def test_the_checks_leave_nothing_in_the_folder(folder):
    list(checklist())
    assert os.listdir(folder) == []


ACCURACY_TEST = (  # the course's accuracy test, copied from the plain way: the first wrong answer the issue lists
    "import os, numpy as np, torch\n"
    "def test_model_accuracy_threshold():\n"
    "    model = torch.load(os.environ['MODEL_PATH'], weights_only=False)\n"
    "    d = np.load(os.environ['TEST_DATA'])\n"
    "    with torch.no_grad():\n"
    "        accuracy = (model(torch.from_numpy(d['X'])).argmax(1).numpy() == d['y']).mean()\n"
    "    assert accuracy > 0.80, f'Model accuracy {accuracy} below threshold'\n"
)
RECALL_TEST = ACCURACY_TEST.replace("def test_model_accuracy_threshold", "def test_every_digit").replace(
    "        accuracy = (model(torch.from_numpy(d['X'])).argmax(1).numpy() == d['y']).mean()\n"
    "    assert accuracy > 0.80, f'Model accuracy {accuracy} below threshold'\n",
    "        pred = model(torch.from_numpy(d['X'])).argmax(1).numpy()\n"
    "    recall = {c: (pred[d['y'] == c] == c).mean() for c in range(10)}\n"
    "    assert min(recall.values()) >= 0.7, recall\n",
)
SHAPE_TEST = (
    "import os, torch\n"
    "def test_forward_pass():\n"
    "    assert torch.load(os.environ['MODEL_PATH'], weights_only=False)(torch.randn(1, 64)).shape == (1, 10)\n"
)


@pytest.fixture(scope="module")
def tiny_champion():
    "The tiny config, trained: the weights the checks read as the champion's (no registry needed)."
    cfg = load_config(TINY_CONFIG)
    job = prepare_training(cfg)
    job.fit(progress=False)
    return job.model.state_dict()


@pytest.fixture
def champion(monkeypatch, tiny_champion):
    "q1 and q4 read the tiny config and its trained weights as the workbook's config and the registry's champion."
    monkeypatch.setattr(cc, "workbook_config_path", lambda: TINY_CONFIG)
    monkeypatch.setattr(cc, "_champion_weights", lambda cfg: ("7", tiny_champion))
    return tiny_champion


def _undefined(name):
    raise NameError(name)


@pytest.mark.slow
def test_q1_refuses_the_course_accuracy_test_and_a_shape_test_and_accepts_a_recall_test(folder, champion):
    (folder / MY_TEST).write_text(ACCURACY_TEST)
    results = q1.results()
    assert [r.ok for r in results] == [True, True, True, False], results  # passes on the one-digit-broken model
    broken = results[-1]
    assert f"never predicts a {BROKEN_DIGIT}" in broken.what and "recall of 3 0.00" in broken.what, broken
    assert "each digit's recall" in broken.hint and "passes on this model" in broken.hint, broken
    (folder / MY_TEST).write_text(SHAPE_TEST)
    assert [r.ok for r in q1.results()] == [True, True, False, False]  # passes on the untrained model too
    (folder / MY_TEST).write_text(RECALL_TEST)
    assert all(r.ok for r in q1.results()), q1.results()


@pytest.fixture(scope="module")
def ci_gate_model(tmp_path_factory):
    "CI's model, trained once for the module's gate tests: (config, folder), as `ci_model` returns it."
    return cc.ci_model(tmp_path_factory.mktemp("ci"))


def gate(folder, threshold, why) -> list:
    import yaml

    (folder / MY_GATE).write_text(yaml.safe_dump({"threshold": threshold, "why": why}))
    return q2.results()


@pytest.mark.slow
def test_q2_wants_a_threshold_just_above_the_accuracy_and_a_why_that_quotes_it(folder, monkeypatch, ci_gate_model):
    monkeypatch.setattr(cc, "ci_model", lambda d: ci_gate_model)
    acc = cc.run_gate(*ci_gate_model, 0.5, folder / "m.json")[1]["accuracy"]
    (folder / "m.json").unlink()
    good = round(acc + GATE_MARGIN / 2, 4)
    why = f"CI's model scores {acc:.4f}, so {good} fails it; too tight for CI"
    assert [r.ok for r in gate(folder, good, why)] == [True, True, True, True]
    assert [r.ok for r in gate(folder, 0.5, why)] == [True, False, False, True]  # the gate passes
    results = gate(folder, 1.0, why.replace(str(good), "1.0"))  # fails every model: no reason
    assert [r.ok for r in results] == [True, True, False, True] and "fails every model" in results[2].hint
    results = gate(folder, good, "a bar that my model should not clear")  # any five words
    assert [r.ok for r in results] == [True, True, True, False] and f"scores {acc:.4f}" in results[3].hint
    results = gate(folder, good, f"{good} is above what the model scores")  # the threshold, not the accuracy
    assert [r.ok for r in results] == [True, True, True, False]
    results = gate(folder, 85, why)  # a percentage
    assert [r.ok for r in results] == [False] and "accuracy is 0-1" in results[0].hint


def test_quotes_number_reads_fractions_and_percentages():
    assert quotes_number("it scores 0.9370", 0.937) and quotes_number("93.7% right", 0.937)
    assert not quotes_number("0.94 fails it", 0.937, other=0.94) and not quotes_number("no number here", 0.9)


@pytest.mark.slow
def test_q4_wants_the_worst_digit_and_its_recall(folder, champion, monkeypatch):
    recall = cc.recall_by_digit(load_config(TINY_CONFIG), champion)
    worst = min(recall, key=recall.get)
    best = max(recall, key=recall.get)
    answers = {}
    monkeypatch.setattr(cc, "learner_variable", lambda name: answers[name] if name in answers else _undefined(name))
    results = q4.results()
    assert [r.ok for r in results] == [False] and "worst_digit" in results[0].hint
    for answer, expected in [
        ((worst, recall[worst]), [True, True, True]),
        ((worst, round(recall[worst], 2)), [True, True, True]),
        ((best, recall[best]), [True, False, False]),  # the best digit, not the worst
        ((worst, 1 - recall[worst]), [True, True, False]),  # the error rate, not the recall
        (worst, [False]),  # not a pair
    ]:
        answers["worst_digit"] = answer
        results = q4.results()
        assert [r.ok for r in results] == expected, (answer, results)
        assert all(r.hint for r in results if not r.ok)


@pytest.mark.slow  # check-jsonschema loads GitHub's schema: seconds a run
def test_a_workflow_rewritten_by_yaml_safe_dump_is_refused(folder):
    import yaml

    mine = yaml.safe_load(WORKFLOW.read_text())
    mine["jobs"]["train"]["steps"].append({"name": "Show the report", "run": "cat ci-artifacts/metrics.json"})
    (folder / MY_WORKFLOW).write_text(yaml.safe_dump(mine))  # `on:` becomes `true:`
    results = {r.what: r for r in q3.results()}
    schema = results["GitHub's schema finds nothing"]
    assert not schema.ok and schema.hint, schema
