"""Exercise 5's checks (mlops_day28.workbook.checks_cicd): missing and wrong answers are a ✗ with a hint, right ones a ✓.

The learner's files go to a folder of their own, declared as holding 05_cicd.ipynb. q1 needs the registry's
champion (a server), so here its pieces run on a model trained in the test: `save_test_inputs` and
`run_model_tests`, whose verdicts q1 reports.
"""

import os
import shutil
import uuid
from pathlib import Path

import mlflow  # noqa: F401  first: MLflow's entry point then imports mlops_day28.workbook.tasks whole
import pytest

import mlops_day28.workbook.tasks as ex
from mlops_day28.config import load_config
from mlops_day28.training import prepare_training
from mlops_day28.workbook.checks_cicd import (
    MY_GATE,
    MY_TEST,
    MY_WORKFLOW,
    checklist,
    q1,
    q2,
    q3,
    run_model_tests,
    save_test_inputs,
    step_changes,
)

ROOT = Path(__file__).resolve().parents[1]
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
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["training.num_epochs=2"])
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


@pytest.mark.slow
def test_a_threshold_must_fail_the_ci_gate(folder):
    (folder / MY_GATE).write_text("threshold: 0.5\nwhy: a bar that the CI model clears with room to spare\n")
    assert oks(q2) == [True, True, False, False]
    (folder / MY_GATE).write_text("threshold: 0.9999\nwhy: above what the CI model scores on the test split\n")
    assert oks(q2) == [True, True, True, True]
    (folder / MY_GATE).write_text("threshold: 85\nwhy: short\n")
    assert oks(q2) == [False, False]


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
