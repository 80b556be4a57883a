"""The warm runner of the reference notebooks (conftest.py): what fails a notebook, and what it leaves behind.

Tiny notebooks written to a temporary folder, run by a warm parent that imports only what they need (the session's
parent imports torch, MLflow and the package too; a notebook here uses none of them), with nbval's cell numbers.
"""

import importlib.util
import os
import sys
from pathlib import Path

import nbformat
import psutil
import pytest

_spec = importlib.util.spec_from_file_location("project_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)  # the project's root conftest.py: the runner lives there
_spec.loader.exec_module(conftest)

# A test that starts a warm parent and runs notebooks in it (real processes, 0.5 to 2 s each) is in the slow tier: `make
# test` and `make test-all` run it, `make test-fast` (the edit loop on the package) does not.
RUNS_NOTEBOOKS = pytest.mark.slow

LIGHT = ("IPython", "execnb.shell", "fastcore.nbio", "matplotlib.pyplot", "psutil", "mlops_day28.reliability.processes")


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    "A warm parent of this module's own; stopped (by process id) at its end."
    warm = conftest.WarmParent(tmp_path_factory.mktemp("root"), imports=LIGHT)
    yield warm
    warm.stop()
    assert not warm.alive()


def notebook(folder: Path, *cells: str) -> Path:
    path = folder / "a_notebook.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)
    return path


def run(parent, path: Path, cell_timeout: float = 60) -> list[str]:
    return parent.execute(conftest.notebook_request(path), cell_timeout)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@RUNS_NOTEBOOKS
def test_a_good_notebook_passes_run_as_a_kernel_runs_it(parent, tmp_path):
    path = notebook(
        tmp_path,
        "import os, sys, threading\n"
        f"assert os.getcwd() == {str(tmp_path)!r}  # the notebook's folder\n"
        "assert threading.current_thread() is threading.main_thread()  # signal handlers work\n"
        "assert 'ipykernel' in sys.modules and sys.argv[0].endswith('ipykernel_launcher.py')\n"
        "assert os.environ['MLOPS_STRICT_CHECKS'] == '1' and os.environ['MPLBACKEND'].endswith('backend_inline')",
        "async def three():\n    return 3\n\nassert await three() == 3  # top-level await, on a running loop",
        "import matplotlib.pyplot as plt\n\nfig, ax = plt.subplots()\nax.plot([1, 2])\nfig  # shown as a PNG",
        "# NBVAL_SKIP\nraise AssertionError('a skipped cell is not run')",
        "# NBVAL_RAISES_EXCEPTION\nraise ValueError('this one may raise')",
        "x = 1",
    )
    assert run(parent, path) == []


@RUNS_NOTEBOOKS
def test_a_cell_that_raises_fails_the_notebook_naming_the_cell_with_its_traceback(parent, tmp_path):
    path = notebook(
        tmp_path,
        "x = 1",
        "def ratio(a):\n    return a / 0\n\nratio(x)",
        "open('after', 'w').write('the cells after the error ran')",
    )
    (problem,) = run(parent, path)
    assert problem.startswith("Cell 1 (id ") and " raised an exception." in problem
    assert "Input:\ndef ratio(a):" in problem  # the cell's source
    assert "ZeroDivisionError" in problem and "----> 4 ratio(x)" in problem and "----> 2     return a / 0" in problem
    assert not (tmp_path / "after").exists()


@RUNS_NOTEBOOKS
def test_a_figure_shown_as_text_fails_the_notebook(parent, tmp_path):
    "As in Jupyter: matplotlib's Figure, shown before pyplot has set the inline backend up, prints as text."
    path = notebook(tmp_path, "x = 1", "from matplotlib.figure import Figure\n\nfig = Figure()\nfig.subplots()\nfig")
    assert run(parent, path) == [
        f"Cell 1 (id {nbformat.read(path, 4).cells[1].id}): "
        "a plot shows as text, not as an image: <Figure size 640x480 with 1 Axes>"
    ]


@RUNS_NOTEBOOKS
def test_notebooks_share_nothing_but_the_imports(parent, tmp_path):
    first = notebook(tmp_path, "import os\nos.environ['LEAK'] = '1'\nSHARED = 1\nimport json")
    assert run(parent, first) == []
    second = notebook(tmp_path, "import os\nassert 'LEAK' not in os.environ\nassert 'SHARED' not in globals()")
    assert run(parent, second) == []


@RUNS_NOTEBOOKS
def test_a_process_orphaned_in_a_notebook_is_reaped_when_it_ends_as_init_would(parent, tmp_path):
    "The parent adopts what a notebook's processes orphan (to stop it if it outlives the notebook): dead, it is gone."
    path = notebook(
        tmp_path,
        "import subprocess, time\n"
        "import psutil\n"
        "shell = subprocess.Popen(['bash', '-c', 'sleep 60 & wait'], start_new_session=True)\n"
        "time.sleep(0.3)\n"
        "(sleep,) = psutil.Process(shell.pid).children()\n"
        "shell.kill()\n"
        "shell.wait(5)  # the sleep is an orphan now\n"
        "sleep.terminate()\n"
        "_, alive = psutil.wait_procs([sleep], timeout=10)  # a zombie nobody reaps would still be here\n"
        "assert not alive, alive",
    )
    assert run(parent, path) == []


@RUNS_NOTEBOOKS
def test_what_a_notebook_leaves_running_is_stopped_and_fails_it(parent, tmp_path):
    path = notebook(
        tmp_path,
        "import subprocess, sys\n"
        "server = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        "open('pid', 'w').write(str(server.pid))",
    )
    (problem,) = run(parent, path)
    pid = int((tmp_path / "pid").read_text())
    assert problem.startswith("a_notebook.ipynb left processes running after it ended: ")
    assert f"pid {pid} (" in problem and "time.sleep(600)" in problem
    assert gone(pid)


@RUNS_NOTEBOOKS
def test_a_cell_past_its_timeout_is_stopped_with_what_the_notebook_started(parent, tmp_path):
    path = notebook(
        tmp_path,
        "import subprocess, sys\n"
        "server = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        "open('pid', 'w').write(str(server.pid))",
        "import os, time\nopen('kernel', 'w').write(str(os.getpid()))\ntime.sleep(600)",
    )
    problems = run(parent, path, cell_timeout=1)
    server, kernel = (int((tmp_path / name).read_text()) for name in ("pid", "kernel"))
    assert problems[0].startswith("Cell 1 ran longer than 1 s (--nbval-cell-timeout): stopped.")
    assert problems[1].startswith("a_notebook.ipynb left processes running") and f"pid {server} (" in problems[1]
    assert gone(kernel) and gone(server)
    assert run(parent, notebook(tmp_path, "x = 1")) == []  # the parent goes on


@RUNS_NOTEBOOKS
def test_a_process_that_does_not_end_after_its_last_cell_is_stopped_saying_where_it_was(parent, tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "_END", 1.0)
    path = notebook(
        tmp_path,
        "import os, threading, time\n"
        "open('kernel', 'w').write(str(os.getpid()))\n"
        "def never_ends():\n    while True:\n        time.sleep(1)\n\n"
        "threading.Thread(target=never_ends, name='not-a-daemon').start()  # the process waits for it at its end",
    )
    (problem,) = run(parent, path)
    kernel = int((tmp_path / "kernel").read_text())
    first, rest = problem.split("\n", 1)
    assert first.startswith(
        "after its last cell, the notebook's process did not end within 1 s (its non-daemon threads, its atexit"
    ), first
    assert f"the notebook's process {kernel} when stopped; its threads: " in rest, rest
    assert "in never_ends" in rest and "in _end" in rest, rest  # the thread it waited for, and where it waited
    assert gone(kernel)
    assert run(parent, notebook(tmp_path, "x = 1")) == []  # the parent goes on


@RUNS_NOTEBOOKS
def test_a_thread_pool_left_open_ends_with_the_notebook_as_in_a_kernel(parent, tmp_path, monkeypatch):
    "Python's exit wakes the idle workers of a pool nobody shut down (MLflow keeps some), then joins them: so does `_end`."
    monkeypatch.setattr(conftest, "_END", 20.0)
    path = notebook(
        tmp_path,
        "from concurrent.futures import ThreadPoolExecutor\n"
        "pool = ThreadPoolExecutor(4)\n"
        "assert [f.result() for f in [pool.submit(pow, 2, n) for n in range(8)]] == [2**n for n in range(8)]",
        "import atexit\n"
        "atexit.register(lambda: open('ended', 'w').write('atexit ran'))  # after the threads, as Python does",
    )
    assert run(parent, path) == []
    assert (tmp_path / "ended").read_text() == "atexit ran"


@pytest.mark.slow  # collects every notebook (3 s)
def test_the_session_runs_the_exercises_on_nbval_and_the_other_notebooks_warm():
    "Collected only: the notebooks' items, as `pytest nbs` makes them."
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # collected, never run: no server started
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider", "nbs"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ids = [line for line in r.stdout.splitlines() if ".ipynb::" in line]
    exercises = [i for i in ids if i.startswith("nbs/exercises/")]
    reference = sorted(i for i in ids if not i.startswith("nbs/exercises/"))
    assert "nbs/exercises/01_tracking.ipynb::Cell 0" in exercises  # nbval: an item per cell
    assert {i.split("::")[0] for i in exercises} == {
        str(p.relative_to(root)) for p in root.glob("nbs/exercises/*.ipynb")
    }
    notebooks = sorted(p for p in root.glob("nbs/**/*.ipynb") if "exercises" not in p.parts)
    assert reference == [f"{p.relative_to(root)}::cells" for p in notebooks]  # the warm runner: one item each


@RUNS_NOTEBOOKS
def test_a_warm_parent_that_cannot_import_says_why(tmp_path):
    with pytest.raises(
        conftest.NotebookFailed, match=r"(?s)did not start \(it ended\).*No module named 'no_such_module_here'"
    ):
        conftest.WarmParent(tmp_path, imports=("no_such_module_here",))


@RUNS_NOTEBOOKS
def test_a_warm_parent_with_a_thread_besides_its_main_one_refuses_to_fork(tmp_path, monkeypatch):
    "A lock that thread held at the fork would stay held in the child forever (conftest.SINGLE_THREADED)."
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(
        conftest.NotebookFailed, match=r"(?s)did not start \(it ended\).*threads besides its main one \(\d+ "
    ):
        conftest.WarmParent(tmp_path, imports=("starts_a_thread",))


@RUNS_NOTEBOOKS
def test_the_session_warm_parent_has_one_thread(tmp_path):
    "What the session's warm parent imports starts no thread, given SINGLE_THREADED (pyarrow's jemalloc would)."
    warm = conftest.WarmParent(tmp_path, imports=("pyarrow", "torch"))
    try:
        assert warm.alive()
    finally:
        warm.stop()


class FakeConfig:
    "What conftest.py's nbval defaults read: the options nbval parsed, the command line, the ini's addopts."

    def __init__(self, *args, addopts=()):
        import types

        self.invocation_params = types.SimpleNamespace(args=args)
        self.option = types.SimpleNamespace(nbval="--nbval" in args, nbval_lax="--nbval-lax" in args)
        self.option.nbval_current_env, self.option.nbval_cell_timeout = False, 2000  # nbval's own defaults
        self.addopts = list(addopts)

    def getini(self, name):
        return self.addopts


@pytest.mark.parametrize(
    "args, addopts, env, expected",
    [
        ((), (), "", (True, True, 600)),  # pytest nbs: the project's defaults
        (("--nbval-cell-timeout=30",), (), "", (True, True, "given")),
        ((), ("--nbval-cell-timeout", "30"), "", (True, True, "given")),
        ((), (), "--nbval-cell-timeout=30", (True, True, "given")),
        (("--nbval",), (), "", (False, True, 600)),  # every output compared: the user's choice, not made lax
    ],
)
def test_nbval_runs_with_the_projects_options_unless_told_otherwise(monkeypatch, args, addopts, env, expected):
    monkeypatch.setenv("PYTEST_ADDOPTS", env)
    config = FakeConfig(*args, addopts=addopts)
    config.option.nbval_cell_timeout = "given" if expected[2] == "given" else 2000
    conftest._nbval_defaults(config)
    o = config.option
    assert (o.nbval_lax, o.nbval_current_env, o.nbval_cell_timeout) == expected
