"""`mlops-check`: the course's summary checklist from the learner's state (nbs/workbook/08_checklist).

Unit tests with stand-in checks modules; the notebook itself runs the command against a real
server (an empty folder: ☐ for all six).
"""

import types

import pytest

from mlops_day28.workbook import checklist
from mlops_day28.workbook.tasks import Result


def _fake(ok: bool):
    def items():
        yield Result(ok, "the thing exists", "make the thing")

    return types.SimpleNamespace(checklist=items)


@pytest.fixture
def answering(monkeypatch):
    "A tracking server that answers (the command only needs its URI)."
    monkeypatch.setattr(checklist, "tracking_uri", lambda: "http://127.0.0.1:5000")


def test_all_done_is_six_ticks_and_exit_0(answering, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(checklist, "_module", lambda exercise: _fake(True))
    assert checklist.check(["--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("☑") == 6 and "☐" not in out and "6 of 6 done." in out


def test_each_open_item_gets_its_hint_and_exit_1(answering, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(checklist, "_module", lambda exercise: _fake(exercise != 3))
    assert checklist.check(["--folder", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.count("☑") == 5 and "☐ Automated training pipeline" in out and "hint: make the thing" in out


@pytest.mark.parametrize("exercise", range(1, 7))
def test_every_item_finds_its_checks_module(exercise):
    "The fallback below is for a workbook without the module, never for a module the package moved."
    mod = checklist._module(exercise)
    assert mod is not None and hasattr(mod, "checklist"), checklist.ITEMS[exercise - 1]


def test_a_missing_checks_module_is_an_open_item_not_a_crash(answering, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(checklist, "_module", lambda exercise: None)
    assert checklist.check(["--folder", str(tmp_path)]) == 1
    assert capsys.readouterr().out.count("has no checks yet") == 6


def test_a_server_that_does_not_answer_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert checklist.check(["--folder", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not answer" in err[0], err


@pytest.mark.parametrize("argv", [["0"], ["7"], ["two"], ["--folder"]])
def test_bad_arguments_exit_2(argv, capsys):
    assert checklist.check(argv) == 2


def test_help_imports_nothing_heavy():
    "`mlops-check --help` answers before torch, MLflow and the rest are imported, like every mlops-* command."
    import subprocess
    import sys

    code = (
        "import sys\nfrom mlops_day28.workbook import checklist\nassert checklist.check(['--help']) == 0\n"
        "heavy = [m for m in ('torch', 'mlflow', 'sklearn', 'pandas', 'optuna', 'fastapi') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-1500:]


def test_the_callers_mlflow_settings_are_left_as_they_were(answering, monkeypatch, tmp_path):
    "mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI: a check in a test process must not change either."
    import os

    import mlops_day28.workbook.tasks as ex

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1234")
    monkeypatch.setattr(checklist, "_module", lambda exercise: _fake(True))
    before = ex._NOTEBOOK
    checklist.check(["--folder", str(tmp_path)])
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1234"
    assert before == ex._NOTEBOOK
