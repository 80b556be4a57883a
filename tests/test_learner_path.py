"""The shape of the exercise notebooks that have tasks (the learner's path; issue 11).

Read from the committed notebooks, no kernel: tasks with a solution between nbgrader's markers
and a check after each; the library's own calls before the first exported helper; the
course's reflection prompts as questions, each with a cell for the learner's answer.
"""

import re
from pathlib import Path

import nbformat
import pytest

NBS = Path(__file__).resolve().parents[1] / "nbs" / "exercises"

# the plain calls the course teaches, which each notebook shows before any helper of ours
PLAIN = {
    "01_tracking": [
        "mlflow.start_run(run_name=",
        "mlflow.log_param(",
        "mlflow.log_metric(",
        "step=epoch",
        "mlflow.pytorch.log_model(",
        "mlflow.log_artifact(",
    ],
    "02_registry": ["mlflow.register_model(", "set_registered_model_alias(", "mlflow.pyfunc.load_model("],
    "03_pipeline": ["yaml.safe_load(", "mlflow.start_run(", "mlflow.log_params(", "mlflow.log_metrics("],
    "04_sweep": [
        "mlflow.start_run(run_name=",
        "nested=True",
        "mlflow.log_params(",
        "mlflow.log_metric(",
        "mlflow.search_runs(",
    ],
    "05_cicd": [
        "def test_model_forward_pass",
        "def test_model_accuracy_threshold",
        "def test_prediction_time",
        "runs-on:",
        "mlops-evaluate",
    ],
    "06_monitoring": [
        "CollectorRegistry(",
        "Counter(",
        "Histogram(",
        "Gauge(",
        ".labels(",
        "Instrumentator(",
        ".instrument(app).expose(app)",
        "start_http_server(",
        "class InputData(BaseModel)",
    ],
}
TASK = re.compile(r"^#\s*(q\d+)\s*:")


def cells(name: str) -> list:
    return nbformat.read(NBS / f"{name}.ipynb", as_version=4).cells


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_tasks_have_solutions_and_checks(name):
    nb = cells(name)
    tasks = [
        (i, TASK.match(c.source).group(1)) for i, c in enumerate(nb) if c.cell_type == "code" and TASK.match(c.source)
    ]
    assert len(tasks) >= 2, f"{name}: {len(tasks)} task(s)"
    for i, q in tasks:
        src = nb[i].source
        assert "### BEGIN SOLUTION" in src and src.rstrip().endswith("### END SOLUTION"), f"{name} {q}: markers"
        assert any(re.search(rf"^{q}\.check\(\)", c.source, re.M) for c in nb[i + 1 :] if c.cell_type == "code"), (
            f"{name}: no {q}.check() after its task"
        )
        assert nb[i - 1].cell_type == "markdown", f"{name} {q}: the task is stated in a markdown cell before it"


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_calls_come_before_the_first_helper(name):
    nb = cells(name)
    helper = next(i for i, c in enumerate(nb) if c.cell_type == "markdown" and re.match(r"## Our helper", c.source))
    before = "\n".join(c.source for c in nb[:helper] if c.cell_type == "code")
    missing = [call for call in PLAIN[name] if call not in before]
    assert not missing, f"{name}: not before '## Our helper': {missing}"


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_reflection_follows_our_helper(name):
    "The package's code lives in its reference notebook: between 'Our helper' and 'Reflection' no other section starts."
    nb = cells(name)
    sections = [
        line[3:].strip()
        for c in nb
        if c.cell_type == "markdown"
        for line in c.source.splitlines()
        if line.startswith("## ")
    ]
    helper = next(i for i, s in enumerate(sections) if s.startswith("Our helper"))
    assert sections[helper + 1] == "Reflection", (
        f"{name}: sections after {sections[helper]!r}: {sections[helper + 1 :]}"
    )


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_reflection_asks_and_leaves_room_to_answer(name):
    nb = cells(name)
    start = next(i for i, c in enumerate(nb) if c.cell_type == "markdown" and "## Reflection" in c.source)
    rest = nb[start:]
    questions = [i for i, c in enumerate(rest) if c.cell_type == "markdown" and re.search(r"\*\*[^*]+\?\*\*", c.source)]
    assert questions, f"{name}: no question in the reflection"
    for i in questions:
        answer = rest[i + 1] if i + 1 < len(rest) else None
        assert answer is not None and answer.cell_type == "markdown" and "Your answer" in answer.source, (
            f"{name}: question {rest[i].source[:60]!r} has no answer cell after it"
        )
    assert any("<details>" in c.source for c in rest), f"{name}: our answers are not folded"


@pytest.mark.parametrize("first", ["mlops_day28.workbook.tasks", "mlflow"])
def test_runs_record_their_notebook_whichever_is_imported_first(first):
    "The entry point must load while mlflow itself is importing: no circular import, no skipped provider."
    import subprocess
    import sys

    code = (
        f"import {first}\nimport mlflow\nimport mlops_day28.workbook.tasks as ex\n"
        "from mlflow.tracking.context.registry import resolve_tags\n"
        "ex._NOTEBOOK = 'learner/01_tracking.ipynb'\n"
        "t = resolve_tags()\nprint(t['mlflow.source.name'], t['mlflow.source.type'])"
    )
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["learner/01_tracking.ipynb", "NOTEBOOK"], r.stdout + r.stderr[-1000:]


COURSE_SITES = ("youtube.com/watch", "mlflow.org/docs", "docs.wandb.ai")


@pytest.mark.parametrize("name", ["03_pipeline", "04_sweep"])
def test_the_learner_is_told_the_time_the_links_and_a_short_set_up(name):
    "Issue 26: the learner's time (reading and tasks), the course's videos and docs, set-up cells of 5 lines or fewer."
    nb = cells(name)
    intro = "\n".join(c.source for c in nb[:3] if c.cell_type == "markdown")
    assert re.search(r"\*\*How long:?\*\*:? about \d+ minutes of yours", intro), f"{name}: the learner's time"
    assert all(link in intro for link in COURSE_SITES[:2]), f"{name}: the course's video and docs"
    start = next(i for i, c in enumerate(nb) if c.cell_type == "markdown" and c.source.startswith("## Set-up"))
    end = next(i for i, c in enumerate(nb) if i > start and c.cell_type == "markdown")
    for c in nb[start + 1 : end]:
        code = [line for line in c.source.splitlines() if not line.startswith("# NBVAL")]
        assert len(code) <= 5, f"{name}: a set-up cell of {len(code)} lines"
    reflection = next(i for i, c in enumerate(nb) if c.cell_type == "markdown" and "## Reflection" in c.source)
    prompts = [m for c in nb[reflection:] for m in re.findall(r"\*\*([^*]+\?)\*\*", c.source)]
    assert prompts and "What would you add to your ML pipeline?" not in prompts, prompts


def test_the_typo_prediction_is_answered_only_after_its_check():
    nb = cells("03_pipeline")
    check = next(i for i, c in enumerate(nb) if c.cell_type == "code" and c.source.startswith("q3.check()"))
    before = "\n".join(c.source for c in nb[:check] if c.cell_type == "markdown")
    assert "refused by name" not in before and "validates every key" not in before
    assert "refused by name" in nb[check + 1].source


# Issue 26: the first screen is the learner's, and each exercise says the learner's time and links the course.
FIRST_SCREEN_DONE = ["01_tracking", "02_registry", "03_pipeline", "04_sweep", "05_cicd", "06_monitoring"]
COURSE_LINKS = {
    "01_tracking": ["youtube.com/watch?v=859OxXrt_TI", "youtube.com/watch?v=gnD8BFuyVUA", "docs.wandb.ai/quickstart"],
    "02_registry": ["youtube.com/watch?v=859OxXrt_TI", "mlflow.org/docs/latest"],
}


@pytest.mark.parametrize("name", FIRST_SCREEN_DONE)
def test_set_up_cells_show_five_lines_or_fewer_with_our_helpers_behind_one_import(name):
    nb = cells(name)
    plain = next(i for i, c in enumerate(nb) if c.cell_type == "markdown" and c.source.startswith("## The plain way"))
    setup = [c for c in nb[:plain] if c.cell_type == "code"]
    assert setup, name
    for c in setup:
        shown = [line for line in c.source.splitlines() if line.strip() and not line.startswith("# NBVAL_")]
        assert len(shown) <= 5, f"{name}: a set-up cell shows {len(shown)} lines:\n{c.source}"
    ours = [
        line for c in setup for line in c.source.splitlines() if line.startswith(("from mlops_day28", "import mlops"))
    ]
    assert len(ours) == 1, ours


@pytest.mark.parametrize("name", FIRST_SCREEN_DONE)
def test_the_exercise_says_the_learners_time_and_links_the_course(name):
    text = "\n".join(c.source for c in cells(name) if c.cell_type == "markdown")
    assert re.search(r"\*\*How long\*\*: about \d+ minutes", text), name
    missing = [url for url in COURSE_LINKS.get(name, COURSE_SITES[:2]) if url not in text]
    assert not missing, f"{name}: {missing}"
