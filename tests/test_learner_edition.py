"""The learner edition, executed: every check shows ✗ with its hint, and no check raises.

`make learner` turns each solution into `raise NotImplementedError()`. Executed headless with
errors allowed (as a learner who runs every cell before writing anything), each `qN.check()`
must answer with a ✗ and a hint: this shows every check able to fail, and that a missing
answer is never a traceback. The copies run in a folder of their own inside the project, so
their runs are told apart from the solution edition's on the same server.

Two ways, two learners: one who runs the set-up, then each task's cell and its check (the stubs
that nbgrader's markers left), a kernel's start-up and seconds a notebook (`make test`); one who
runs every cell in order, training and helpers included (costly, conftest.py: `make test-all`
runs both). Each asserts that the set-up raises nothing and that every check fails gently.
"""

import importlib.util
import re
import shutil
import uuid
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from paths import ROOT

_spec = importlib.util.spec_from_file_location("learner", ROOT / "tools" / "learner.py")
learner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learner)

pytestmark = [pytest.mark.server]

WITH_TASKS = ["01_tracking", "02_registry", "03_pipeline", "04_sweep", "05_cicd", "06_monitoring"]
CHECK = re.compile(r"^(q\d+)\.check\(\)", re.M)
STUB = "raise NotImplementedError()"  # what nbgrader's ClearSolutions puts between the solution markers
HEADING = re.compile(r"^## (.+)", re.M)


@pytest.fixture(scope="module")
def folder():
    d = ROOT / ".workbook" / f"learner-test-{uuid.uuid4().hex[:8]}"  # git-ignored, inside the project
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def setup_cells(nb) -> list:
    "The code cells a learner runs first: from the top to the end of the `## Set-up` section (the next `## ` heading)."
    cells, in_setup = [], False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (heading := HEADING.search(cell.source)):
            if in_setup:
                return cells
            in_setup = heading.group(1).startswith("Set-up")
        elif cell.cell_type == "code":
            cells.append(cell)
    return []  # no set-up section


def execute_learner_edition(name: str, folder: Path, quick: bool):
    "The learner edition of exercise `name`, executed with errors allowed (`quick`: set-up, stubs and checks only)."
    nb, cleared = learner.learner_edition(ROOT / "nbs" / "exercises" / f"{name}.ipynb")
    checks = [c for c in nb.cells if c.cell_type == "code" and CHECK.search(c.source)]
    assert cleared >= 2 and len(checks) >= cleared, (cleared, len(checks))
    nbformat.write(nb, folder / f"{name}.ipynb")
    setup = setup_cells(nb)
    if quick:
        assert setup, f"{name}: no `## Set-up` section"
        chosen = {id(c) for c in setup}
        nb.cells = [c for c in nb.cells if id(c) in chosen or STUB in c.source or CHECK.search(c.source)]
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        allow_errors=True,
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(folder)}},
    ).execute()
    return nb, setup, checks


def assert_checks_fail_gently(name: str, nb, checks: list) -> None:
    "Every stub raised; every check answered ✗ with a hint, and none raised."
    stubs = [c for c in nb.cells if STUB in c.source]
    assert stubs, f"{name}: no stub"
    assert all(any(o.output_type == "error" for o in c.outputs) for c in stubs), "a stub ran without raising"
    for cell in checks:
        q = CHECK.search(cell.source).group(1)
        errors = [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{name} {q}.check() raised: {errors}"
        text = _text(cell)
        assert "✗" in text and "hint:" in text, f"{name} {q}.check() did not fail with a hint:\n{text}"
        assert "Not yet" in text, text


def check_the_learner_edition(name, folder, quick: bool) -> None:
    "Run the learner's copy of exercise `name` (quick: set-up, stubs and checks only); the set-up raises nothing, every check fails gently."
    nb, setup, checks = execute_learner_edition(name, folder, quick=quick)
    for cell in setup:
        errors = [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{name}: the set-up raised {errors}"
    assert_checks_fail_gently(name, nb, checks)


@pytest.mark.parametrize("name", WITH_TASKS)
def test_every_check_fails_gently_from_set_up_stubs_and_checks(name, folder, tracking_uri, monkeypatch):
    "What a learner sees who runs the set-up, then each task's cell and its check, before writing anything."
    monkeypatch.delenv("MLOPS_STRICT_CHECKS", raising=False)  # the learner's setting: a ✗ is printed, not raised
    check_the_learner_edition(name, folder, quick=True)


@pytest.mark.slow  # costly (conftest.py): each exercise trained and served again
@pytest.mark.parametrize("name", WITH_TASKS)
def test_every_check_fails_gently_in_the_learner_edition(name, folder, tracking_uri, monkeypatch):
    "What a learner sees who runs every cell, in order, before writing anything."
    monkeypatch.delenv("MLOPS_STRICT_CHECKS", raising=False)  # the learner's setting: a ✗ is printed, not raised
    check_the_learner_edition(name, folder, quick=False)
