"""The runner behind `make workbook`: executes the exercises in order, stops at a failure, says where to look; one at a time."""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from paths import ROOT

RUNNER = ROOT / "tools" / "run_workbook.py"
if "run_workbook" not in sys.modules:  # its worker processes find run_notebook by this name
    spec = importlib.util.spec_from_file_location("run_workbook", RUNNER)
    sys.modules["run_workbook"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["run_workbook"])
run_workbook = sys.modules["run_workbook"]


@pytest.fixture
def run(monkeypatch, capsys, tmp_path):
    "The runner's `main`, in this process (it starts a kernel per notebook, as from the shell), in a project: tmp_path."
    (tmp_path / "pyproject.toml").write_text("")  # so its workbook lock is tmp_path's, not this checkout's

    def go(*args, tracking_uri):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        monkeypatch.setenv("MLOPS_CONFIG", "configs/tiny.yaml")
        code = run_workbook.main([str(a) for a in args])
        return subprocess.CompletedProcess(args, code, *capsys.readouterr())

    return go


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def test_runs_exercises_in_order_and_stops_at_the_first_failure(tmp_path, tracking_uri, run):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    notebook(nbs / "00_helpers.ipynb", "raise RuntimeError('library notebooks are not exercises')")
    notebook(nbs / "01_first.ipynb", "from pathlib import Path", "Path('first.txt').write_text('ran')")
    notebook(nbs / "02_broken.ipynb", "1 / 0")
    notebook(nbs / "03_never.ipynb", "from pathlib import Path", "Path('never.txt').write_text('ran')")
    r = run("--nbs", nbs, "--out", tmp_path / "out", "--jobs", 1, tracking_uri=tracking_uri)
    assert r.returncode == 1
    assert "01_first.ipynb ... ok" in r.stdout and "02_broken.ipynb ... FAILED" in r.stdout
    assert "03_never" not in r.stdout and not (nbs / "never.txt").exists()
    assert (nbs / "first.txt").read_text() == "ran"  # run with the notebook's folder as working directory
    assert "1 of 3 notebooks ran" in r.stdout
    assert "02_broken.ipynb failed" in r.stderr and "ZeroDivisionError" in r.stderr
    executed = nbformat.read(tmp_path / "out" / "02_broken.ipynb", as_version=4)
    assert executed.cells[0].outputs[0].ename == "ZeroDivisionError"


def test_two_at_a_time_in_the_order_the_registry_needs(tmp_path, tracking_uri, run):
    "02_registry rebuilds the registered model: 03 waits for it, 01 runs beside it; nothing starts after a failure."
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    stamp = "import time; from pathlib import Path; Path('{}').write_text(str(time.time()))"
    notebook(nbs / "01_side.ipynb", stamp.format("01.start"), "import time; time.sleep(1)")
    notebook(nbs / "02_registry.ipynb", stamp.format("02.start"), "import time; time.sleep(3)", stamp.format("02.end"))
    notebook(nbs / "03_pipeline.ipynb", stamp.format("03.start"))
    r = run("--nbs", nbs, "--out", tmp_path / "out", "--jobs", 2, tracking_uri=tracking_uri)
    assert r.returncode == 0, r.stderr
    assert "3 notebooks, 2 at a time" in r.stdout and "3 of 3 notebooks ran" in r.stdout
    t = {name: float((nbs / name).read_text()) for name in ("01.start", "02.start", "02.end", "03.start")}
    assert t["01.start"] < t["02.end"]  # side by side
    assert t["03.start"] > t["02.end"]  # after the notebook it waits for

    (nbs / "01_side.ipynb").unlink()
    notebook(nbs / "00_fails.ipynb", "1 / 0")  # not an exercise: ignored
    notebook(nbs / "01_fails.ipynb", "1 / 0")
    # 02 ends only once 01 has failed (its executed copy saved, then 2 s for the runner to hear of it), however long
    # 01's kernel takes to start (a port taken meanwhile starts it again): else 03 may rightly start after 02
    failed_copy = tmp_path / "out" / "01_fails.ipynb"
    notebook(
        nbs / "02_registry.ipynb",
        "import time; from pathlib import Path\ndeadline = time.monotonic() + 120\n"
        f"while not Path({str(failed_copy)!r}).exists() and time.monotonic() < deadline:\n    time.sleep(0.1)\n"
        "time.sleep(2)",
    )
    (nbs / "03.start").unlink()
    r = run("--nbs", nbs, "--out", tmp_path / "out", "--jobs", 2, tracking_uri=tracking_uri)
    assert r.returncode == 1
    assert "01_fails.ipynb ... FAILED" in r.stdout and "02_registry.ipynb ... ok" in r.stdout
    assert "03_pipeline" not in r.stdout and not (nbs / "03.start").exists()  # waited for 02, then a failure
    assert "1 of 3 notebooks ran" in r.stdout and "01_fails.ipynb failed" in r.stderr


def test_summary_names_the_server_and_what_it_holds(tmp_path, tracking_uri, run):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    notebook(
        nbs / "01_log.ipynb",
        "import mlflow, os\nmlflow.set_tracking_uri(os.environ['MLFLOW_TRACKING_URI'])\n"
        "mlflow.set_experiment('tests_workbook_runner')\nwith mlflow.start_run(): mlflow.log_metric('x', 1)",
    )
    r = run("--nbs", nbs, "--out", tmp_path / "out", tracking_uri=tracking_uri)
    assert r.returncode == 0, r.stderr
    assert f"MLflow server: using {tracking_uri}" in r.stdout
    assert "experiment 'tests_workbook_runner': 1 run\n" in r.stdout
    assert f"Open the MLflow UI: {tracking_uri}" in r.stdout
    assert "(the server at MLFLOW_TRACKING_URI is not this project's to stop)" in r.stdout  # the session's server


URI = "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    "team, local, named, hint",
    [
        (URI, None, True, "stop it with: make team-stop"),  # make team, then MLFLOW_TRACKING_URI=... make workbook
        (None, URI, False, "stop the server with: make stop"),  # started (or found) by make workbook itself
        (None, URI, True, "stop the server with: make stop"),  # MLFLOW_TRACKING_URI names the local server
        (None, None, False, "stop the server with: make stop"),  # found on the port, not recorded (an older record)
        (None, "http://127.0.0.1:5002", True, "the server at MLFLOW_TRACKING_URI is not this project's to stop"),
        (None, None, True, "the server at MLFLOW_TRACKING_URI is not this project's to stop"),
    ],
)
def test_the_last_line_names_the_command_that_stops_that_server(monkeypatch, team, local, named, hint):
    from mlops_day28.reliability import local_server as tracking_server
    from mlops_day28.team import server as team_server

    monkeypatch.setattr(team_server, "recorded_team_server", lambda root: team and SimpleNamespace(uri=team))
    monkeypatch.setattr(tracking_server, "recorded_server", lambda root: local and SimpleNamespace(uri=local))
    assert run_workbook.stop_hint(URI, named) == hint


def test_the_course_six_run_and_a_going_further_notebook_only_when_named(tmp_path, tracking_uri, run):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    stamp = "from pathlib import Path; Path('{}').write_text('ran')"
    notebook(nbs / "06_last.ipynb", stamp.format("06.ran"))
    notebook(nbs / "07_team.ipynb", stamp.format("07.ran"))
    r = run("--nbs", nbs, "--out", tmp_path / "out", tracking_uri=tracking_uri)
    assert r.returncode == 0, r.stderr
    assert (nbs / "06.ran").exists() and not (nbs / "07.ran").exists()
    assert "1 of 1 notebooks ran" in r.stdout
    assert "Going further: 07_team.ipynb, not run here" in r.stdout
    r = run("--nbs", nbs, "--out", tmp_path / "out", "07", tracking_uri=tracking_uri)
    assert r.returncode == 0, r.stderr
    assert (nbs / "07.ran").exists() and "07_team.ipynb ... ok" in r.stdout and "Going further" not in r.stdout


def test_no_matching_notebooks_is_an_error(tmp_path, tracking_uri, run):
    r = run("--nbs", tmp_path, tracking_uri=tracking_uri)
    assert r.returncode == 2 and "no exercise notebooks matched" in r.stderr


def test_jobs_must_be_positive(tmp_path, run, capsys):
    with pytest.raises(SystemExit) as e:
        run("--nbs", tmp_path, "--jobs", 0, tracking_uri="http://127.0.0.1:9")
    assert e.value.code == 2 and "--jobs must be 1 or more, not 0" in capsys.readouterr().err


def test_a_run_is_refused_while_another_executes_the_projects_notebooks(tmp_path, run):
    from mlops_day28.reliability.coordination import ProjectLock

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    notebook(nbs / "01_never.ipynb", "from pathlib import Path", "Path('never.txt').write_text('ran')")
    with ProjectLock(tmp_path, "make workbook"):  # another run, as this process
        r = run("--nbs", nbs, "--out", tmp_path / "out", tracking_uri="http://127.0.0.1:9")  # never reached
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: another run is executing this project's notebooks: pid ")
    assert len(r.stderr.splitlines()) == 1 and "(make workbook, since " in r.stderr
    assert not (nbs / "never.txt").exists() and not (tmp_path / "out").exists()


def test_a_kernel_that_dies_before_it_answers_is_started_again(tmp_path, monkeypatch):
    "Another process took one of the kernel's ports: no cell ran, so the notebook starts again; a cell's error does not."
    path = notebook(tmp_path / "01_x.ipynb", "1 + 1")
    starts = []

    class Client:
        def __init__(self, nb, **kwargs):
            self.nb = nb

        def execute(self):
            starts.append(1)
            if len(starts) == 1:
                raise RuntimeError("Kernel died before replying to kernel_info")
            self.nb.cells[0].execution_count = 1

    monkeypatch.setattr(run_workbook, "NotebookClient", Client)
    ok, _, error = run_workbook.run_notebook(path, tmp_path / "out", timeout=60)
    assert (ok, error, len(starts)) == (True, "", 2)

    class Dies(Client):
        def execute(self):
            starts.append(1)
            self.nb.cells[0].execution_count = 1  # a cell ran: starting again would run it twice
            raise RuntimeError("Kernel died before replying to kernel_info")

    starts.clear()
    monkeypatch.setattr(run_workbook, "NotebookClient", Dies)
    ok, _, error = run_workbook.run_notebook(path, tmp_path / "out", timeout=60)
    assert (ok, len(starts)) == (False, 1) and "Kernel died" in error
