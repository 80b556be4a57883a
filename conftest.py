"""Test-session set-up shared by tests/ and the notebooks executed as tests.

Tiers. Every test is marked by what it needs, so `make test-fast` can leave the slow ones out:
- `notebook`: a notebook executed as a test (marked here, by file type): a cell of an exercise, or a whole
  reference notebook (below);
- `server`: uses the session's MLflow server (tests/conftest.py's `tracking_uri` fixture; marked here), or
  starts servers of its own (marked in its file);
- `slow`: runs a real command end to end, or trains for more than a few seconds (marked in its file);
- `costly`: a slow test that `make test` leaves to `make test-all` for what it costs, and only for
  that (marked here, from `_COSTLY`): the injected faults, the team and scale tests, the learner
  edition executed whole. `.ci/run` runs `make test-all`: every test passes in CI.

Scheduling (`pytest -n 3 --dist loadgroup --no-loadscope-reorder`): pytest-xdist's public
grouping. Every test gets one `xdist_group` mark (`pytest_collection_modifyitems`, from `_group`):
its file, so each file is one unit of work sent whole to one process (a notebook's cells stay in
one kernel); the six exercise notebooks share one group, run in order on one server as
`make workbook` runs them, followed by tests/test_workbook_ticks.py, which asks `mlops-check`
about what they left there. Units are queued in collection order (`--no-loadscope-reorder`),
sorted here longest first (`_FIRST`, `_cost_rank`). xdist gives a test its group by rewriting
its id (`item._nodeid`), which pytest 9.2 no longer reads: the lock (requirements/dev.txt) pins pytest 9.1.1,
and `pytest_configure` stops a loadgroup session (one line) where the rewrite would be lost.

One MLflow server serves each test process: it is started on a free port in a temporary
folder before the first notebook kernel or server test runs, exported as MLFLOW_TRACKING_URI
(so kernels inherit it), and stopped by process id at the end. With `pytest -n 2` each
worker has its own. A SIGTERM to a pytest process (CI's time limit, `kill PID`) ends its session as Ctrl-C
does (`_interrupt`; xdist's controller passes it on to its workers first), so `pytest_sessionfinish` still
stops these servers and removes their folders
(tests/test_session_cleanup.py). Set MLFLOW_TRACKING_URI yourself to run the tests against a server you
already have. `07_team` starts a team server (PostgreSQL and MLflow) of its own: in a
temporary folder (MLOPS_TEAM_ROOT) on a free port (MLFLOW_TEAM_PORT), stopped at the end.

A session that executes notebooks holds the project's workbook lock (`.workbook/lock`, shared:
`reliability/03_coordination`) from its start to its end, so it never runs beside `make workbook` in the
same project: whichever comes second says who runs, in one line, and exits with code 2.

Notebooks. The seven exercises run under nbval, a fresh Jupyter kernel each and a test per cell. Every other
notebook in nbs/ (the reference notebooks) is one test, run by the warm runner at the end of this file: a child
process forked, for each notebook, from a warm parent that has imported torch, MLflow, FastAPI and the package once
(a fresh kernel and those imports cost each notebook about 2 CPU-seconds). The child runs the cells as a kernel
does (in order, in the notebook's folder, on IPython's shell, in the main thread; matplotlib's inline backend),
follows nbval's markers (NBVAL_SKIP, NBVAL_RAISES_EXCEPTION; NBVAL_CHECK_OUTPUT is refused: no reference notebook
has one), and stops at the first exception, which fails the test naming the notebook and the cell, with the cell's
source and traceback. A cell longer than --nbval-cell-timeout is stopped (the child's process group killed), and
whatever processes a notebook leaves running when it ends, or is stopped, are stopped by process id and fail it. A
notebook's process stopped for its time says where it was: its threads and their Python stacks, in the failure. The
parent forks only while it has one thread (`SINGLE_THREADED`): a lock held by another thread at a fork stays held.
Both kinds are checked after each cell for what a learner would see wrong (`shown_wrong`).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# Before any kernel starts: every notebook runs with the tiny config, quietly.
os.environ.setdefault("MLOPS_CONFIG", "configs/tiny.yaml")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# The solution edition (nbs/): a task check that fails is a bug, so q.check() raises (workbook/01_tasks).
os.environ.setdefault("MLOPS_STRICT_CHECKS", "1")
# One thread per torch process: the tests run in three processes on two cores, each starting
# kernels and commands of its own; with torch's default (a thread per core each) they fight
# over the cores and everything gets several times slower. Results do not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_SERVER_FIXTURE = "tracking_uri"


def _needs_server(item) -> bool:
    return item.path.suffix == ".ipynb" or _SERVER_FIXTURE in getattr(item, "fixturenames", ())


EXERCISES = "exercises"  # one unit of work: the exercise notebooks, then the test that reads what they left
_TICKS = "test_workbook_ticks"


def _group(path: str) -> str:
    "The unit of work of the test at `path` (relative to the project): the exercises, or its own file."
    exercise = re.fullmatch(r"nbs/exercises/0[1-6]_[^/]*\.ipynb", path) or path == f"tests/{_TICKS}.py"
    return EXERCISES if exercise else path


def loadgroup_works() -> bool:
    "Whether xdist's `--dist loadgroup` can give a test its group: it sets `item._nodeid`, which `nodeid` must read."

    class Probe(pytest.Item):
        def runtest(self): ...

    probe = object.__new__(Probe)  # not collected: only the attribute that xdist writes, and the one it reads
    probe._nodeid = "tests/test_probe.py::test@group"
    try:
        return probe.nodeid == probe._nodeid
    except AttributeError:  # pytest 9.2: `nodeid` reads a structured id that xdist 3.8 does not set
        return False


_XDIST_CONTROLLER = {"is": False}  # set in pytest_configure: this process runs tests in xdist workers


def _interrupt(signum, frame):
    "SIGTERM ends the session as Ctrl-C does: pytest_sessionfinish still stops its servers and removes their folders."
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if _XDIST_CONTROLLER["is"]:  # the workers own the servers: each ends its session too, before xdist stops it
        import psutil

        for worker in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                worker.send_signal(signum)
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}: the test session stops, its servers with it")


# nbval's options for this project, unless given: --nbval-lax (only NBVAL_CHECK_OUTPUT cells are compared; any
# exception fails), the test process's own environment, 600 s a cell. Set here, not in pyproject.toml's addopts,
# so that `make test-fast`, which runs no notebook, can leave nbval out (-p no:nbval): importing it costs each test
# process about a second (nbformat, jsonschema and its format checkers).
NBVAL_DEFAULTS = {"nbval_current_env": True, "nbval_cell_timeout": 600}


def _nbval_defaults(config) -> None:
    import shlex

    args = [
        *config.invocation_params.args,
        *config.getini("addopts"),
        *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
    ]
    given = {a.split("=")[0] for a in args if a.startswith("--nbval")}
    if not config.option.nbval:  # --nbval (compare every output) is the user's own choice
        config.option.nbval_lax = True
    for name, value in NBVAL_DEFAULTS.items():
        if "--" + name.replace("_", "-") not in given:
            setattr(config.option, name, value)


def pytest_configure(config):
    if config.pluginmanager.has_plugin("nbval"):
        _nbval_defaults(config)
    if config.getoption("dist", None) == "loadgroup" and not loadgroup_works():  # None: without xdist (-p no:xdist)
        raise pytest.UsageError(
            f"--dist loadgroup cannot group tests under pytest {pytest.__version__} (xdist's group is lost, so a"
            " notebook's cells would be spread over processes): install the locked pytest (make install)"
        )
    # In every pytest process (xdist's controller and its workers), unless something else already handles SIGTERM.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
        config._mlops_sigterm = True
        _XDIST_CONTROLLER["is"] = not hasattr(config, "workerinput") and bool(config.getoption("numprocesses", None))


def pytest_unconfigure(config):
    if getattr(config, "_mlops_sigterm", False) and signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# Slow tests that `make test` leaves to `make test-all`, for their cost alone (see the docstring).
_COSTLY = (
    "tests/faults/",  # each fault on a server of its own, real commands killed mid-run
    "tests/test_team_network.py",  # three network-namespace machines, PostgreSQL and MLflow
    "tests/test_team_server.py",  # PostgreSQL and the team server, started and killed
    "tests/test_service_scale.py",  # workers, replicas and reloads of the model service
    "tests/test_learner_edition.py",  # the six exercises executed again, as a learner's copy
)


# The longest files first, so that `pytest -n` does not end waiting on one of them (measured with
# --durations: the exercises that train the most, then the tests, then the reference notebooks).
_FIRST = [
    EXERCISES,
    "test_learner_edition",
    "test_sweep",
    "test_evaluate",
    "test_serving",
    "test_pipeline",
    "test_tracking_server",
    "02_local_server",
    "07_team",
]


def _cost_rank(item) -> tuple[int, int, str]:
    "Where `item`'s file goes in the queue: the known long ones, the tests, then the notebooks."
    group, stem = _group(item.nodeid.split("::", 1)[0]), item.path.stem
    if group == EXERCISES:  # in the workbook's order, then the test that reads what they left
        return 0, 0, "~" if stem == _TICKS else stem
    if stem in _FIRST:
        return 0, _FIRST.index(stem), ""
    return (1, 0, "") if item.path.suffix == ".py" else (2, 0, "")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks, and before xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(_group(path)))  # `--dist loadgroup`: one unit of work per group
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
        if _needs_server(item):
            item.add_marker(pytest.mark.server)
        if path.startswith(_COSTLY) and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.costly)
    items.sort(key=_cost_rank)  # stable: a file's tests, and a notebook's cells, stay in order


_FIGURE_AS_TEXT = re.compile(r"<\w*Figure size \d+x\d+ with \d+ Axes>")
_EXERCISE_NOTEBOOK = re.compile(r"0[1-7]_[a-z]+\.ipynb")  # in nbs/exercises/
_WARNING_LINE = re.compile(r"^.*\bWARNING\b.*$", re.MULTILINE)


def shown_wrong(outputs: list, exercise: bool) -> list[str]:
    "What a learner would see wrong in a cell's `outputs`: a plot printed as text; in an exercise, a WARNING on stderr."
    problems = []
    for out in outputs:
        data = out.get("data") or {}
        text = data.get("text/plain", "")
        if _FIGURE_AS_TEXT.search(text) and "image/png" not in data:
            problems.append(f"a plot shows as text, not as an image: {_FIGURE_AS_TEXT.search(text).group()}")
        if exercise and out.get("name") == "stderr":
            problems += [f"a WARNING on stderr: {m.group()[:200]}" for m in _WARNING_LINE.finditer(out.get("text", ""))]
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    "After nbval runs a cell: fail it if what it shows would look broken to a learner (see `shown_wrong`)."
    result = yield
    outputs = getattr(item, "test_outputs", None)  # nbval's outputs of the cell it just ran
    if outputs:
        exercise = item.path.parent.name == "exercises" and bool(_EXERCISE_NOTEBOOK.fullmatch(item.path.name))
        problems = shown_wrong(outputs, exercise=exercise)
        if problems:
            pytest.fail(f"{item.path.name}, {item.name}: " + "; ".join(problems), pytrace=False)
    return result


def _holds_notebooks(folder: str) -> bool:
    "Whether `folder` (or a folder in it, hidden ones left out) holds a notebook."
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "__pycache__")]
        if any(f.endswith(".ipynb") for f in files):
            return True
    return False


def runs_notebooks(config) -> bool:
    "Whether this session may execute notebooks: a path it collects holds one, and `-m` keeps the `notebook` tier."
    expr = config.getoption("markexpr", "")
    if expr:
        from _pytest.mark.expression import Expression  # the parser `-m` itself uses

        if not Expression.compile(expr).evaluate(lambda name, **kw: name in ("notebook", "server")):
            return False
    here = config.invocation_params.dir
    for arg in config.args:
        path = here / arg.split("::", 1)[0]
        if path.suffix == ".ipynb" or (path.is_dir() and _holds_notebooks(path)):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    "A session that executes this project's notebooks holds its workbook lock (shared): not while `make workbook` runs."
    if hasattr(session.config, "workerinput") or not runs_notebooks(session.config):
        return  # an xdist worker (the controller holds it for the session), or no notebook to run
    from mlops_day28.reliability.coordination import ProjectBusy, ProjectLock

    try:
        lock = ProjectLock(session.config.rootpath, "pytest, executing the notebooks", shared=True).acquire()
    except ProjectBusy as e:
        pytest.exit(str(e), returncode=e.exit_code)  # one line, before any worker, server or kernel starts
    session.config._mlops_workbook_lock = lock  # released in pytest_sessionfinish, or when this process ends


TEAM_NOTEBOOK = "07_team.ipynb"


def _team_root(session) -> None:
    "07_team starts a team server: in a folder of this session's, on a free port; stopped in pytest_sessionfinish."
    if os.environ.get("MLOPS_TEAM_ROOT") or not any(i.path.name == TEAM_NOTEBOOK for i in session.items):
        return
    from mlops_day28.reliability.processes import free_port

    root = tempfile.mkdtemp(prefix="mlops-day28-team-")  # not under pytest's folder, which only root may enter
    os.chmod(root, 0o755)  # as root, PostgreSQL runs as `postgres`, which must reach .team/pg
    session.config._mlops_team_root = root
    os.environ["MLOPS_TEAM_ROOT"] = root  # kernels inherit both
    os.environ.setdefault("MLFLOW_TEAM_PORT", str(free_port()))


def pytest_collection_finish(session):
    _team_root(session)
    if os.environ.get("MLFLOW_TRACKING_URI") or not any(_needs_server(i) for i in session.items):
        return
    from mlops_day28.reliability.local_server import start_tracking_server
    from mlops_day28.reliability.processes import free_port

    root = tempfile.mkdtemp(prefix="mlops-day28-tests-")
    server = start_tracking_server(port=free_port(), root=root)
    session.config._mlops_server = (server, root)
    os.environ["MLFLOW_TRACKING_URI"] = server.uri


def pytest_sessionfinish(session, exitstatus):
    lock = getattr(session.config, "_mlops_workbook_lock", None)
    if lock:  # every notebook has run (with xdist, this is the controller, after its workers)
        lock.release()
    team_root = getattr(session.config, "_mlops_team_root", None)
    if team_root:
        from mlops_day28.team.server import stop_team_server

        stop_team_server(team_root)  # by the process ids recorded when it started, if it did
        os.environ.pop("MLOPS_TEAM_ROOT", None)
        shutil.rmtree(team_root, ignore_errors=True)
    started = getattr(session.config, "_mlops_server", None)
    if not started:
        return
    from mlops_day28.reliability.local_server import stop_tracking_server

    _server, root = started
    stop_tracking_server(root)  # by the process id recorded when it started
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# The reference notebooks, executed warm.
#
# Every notebook in nbs/ but the exercises is one pytest item (`WarmNotebook`), executed in a child process forked from
# a warm parent: a process of this pytest process's own (`WarmParent`) that has imported torch, MLflow, FastAPI, IPython
# and every module of the package once. A fork per notebook, not a pool of processes that run notebook after notebook
# as nbdev-test's does: each notebook still starts from a process of its own, with nothing another notebook defined,
# registered (prometheus_client's default registry), set (MLflow's tracking URI, the working directory) or started.
# The child runs the cells as a Jupyter kernel does (IPython's shell, from execnb's CaptureShell, on an asyncio loop in
# the main thread; matplotlib's inline backend; `ipykernel` imported): see `_execute`.

# What the warm parent imports once (with every module of the package), so that no notebook imports them again.
WARM_IMPORTS = (
    "torch",
    "mlflow",
    "fastapi",
    "uvicorn",
    "httpx",
    "pandas",
    "sklearn",
    "optuna",
    "prometheus_client",
    "matplotlib.pyplot",  # not its inline backend: that sets itself up on a notebook's first plot, as in a kernel
    "ipykernel",  # as in a kernel: the package asks whether it is imported (cli, training's progress bar)
    "execnb.shell",
    "fastcore.nbio",
    "psutil",
    "mlops_day28.*",  # every module of the package
)
# The warm parent forks its children with one thread, its main one: a fork copies only the thread that calls it, and
# a lock another thread held then stays held in the child forever. Two libraries start threads on import unless told:
SINGLE_THREADED = {
    "OMP_NUM_THREADS": "1",  # torch's and NumPy's thread pools (set for the whole session above)
    "JE_ARROW_MALLOC_CONF": "background_thread:false",  # the jemalloc that pyarrow (imported by MLflow) carries
}
_INLINE = "module://matplotlib_inline.backend_inline"  # matplotlib's backend in a kernel (ipykernel sets MPLBACKEND)
_STARTUP = 120.0  # seconds for the warm parent to import all that, or for a child to say it started
_EXIT = 60.0  # seconds for a child to say its next cell started, or to die once killed
_END = 90.0  # seconds for a child to end after its last cell (its threads, atexit), and its leftovers to be stopped


def runs_warm(path, root) -> bool:
    "Whether the notebook at `path` is executed by the warm runner: every notebook but the exercises, which nbval runs."
    return path.suffix == ".ipynb" and not path.resolve().is_relative_to(root / "nbs" / EXERCISES)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    "The warm runner takes the notebooks nbval would run (`--nbval-lax`), but for the exercises (see `runs_warm`)."
    collected = yield
    if not runs_warm(file_path, parent.config.rootpath):
        return collected
    from nbval.plugin import IPyNbFile

    if not any(isinstance(c, IPyNbFile) for c in collected):
        return collected  # nbval is not asked to run notebooks in this session: neither is the warm runner
    kept = [c for c in collected if not isinstance(c, IPyNbFile)]
    return [*kept, WarmNotebookFile.from_parent(parent, path=file_path)]


def notebook_request(path: Path) -> dict:
    "What the warm parent is sent to run the notebook at `path`: its code cells as nbval sees them, and a kernel's env."
    import nbformat
    from nbval.plugin import find_comment_markers, find_metadata_tags

    cells = []
    for cell in (c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"):
        options = {**dict(find_metadata_tags(cell.metadata)), **dict(find_comment_markers(cell.source))}
        n = len(cells)  # nbval's number for it ("Cell 3"): code cells, from 0
        if options.get("check"):  # NBVAL_CHECK_OUTPUT: no reference notebook has one, and the runner compares none
            raise NotebookFailed(
                f"{path.name}: Cell {n} asks for its outputs to be compared (NBVAL_CHECK_OUTPUT), which the warm "
                "runner does not do: assert on the value in the cell instead"
            )
        cells.append(  # NBVAL_SKIP: not run; NBVAL_RAISES_EXCEPTION: may raise (nbval's markers, read by nbval)
            {"n": n, "id": cell.get("id", ""), "source": cell.source}
            | {"skip": bool(options.get("skip")), "raises": bool(options.get("check_exception"))}
        )
    exercise = path.parent.name == "exercises" and bool(_EXERCISE_NOTEBOOK.fullmatch(path.name))
    return {"path": str(path), "cells": cells, "env": {"MPLBACKEND": _INLINE, **os.environ}, "exercise": exercise}


class NotebookFailed(Exception):
    "A reference notebook that failed: the message names the notebook and the cell, and says what went wrong."


class WarmNotebookFile(pytest.File):
    def collect(self):
        yield WarmNotebook.from_parent(self, name="cells")


class WarmNotebook(pytest.Item):
    "A notebook, every code cell in order, executed by the warm runner (see the section's comment)."

    def runtest(self):
        if self.config.option.nbval:
            raise NotebookFailed("the warm runner compares no outputs: run with --nbval-lax (conftest.py's default)")
        parent = getattr(self.config, "_mlops_warm_parent", None)
        if parent is None or not parent.alive():  # the first notebook of this process, or its parent was stopped
            parent = self.config._mlops_warm_parent = WarmParent(self.config.rootpath)
            self.config.add_cleanup(parent.stop)
        cell_timeout = float(self.config.getoption("nbval_cell_timeout", 600))  # pyproject.toml's, for nbval's cells
        problems = parent.execute(notebook_request(self.path), cell_timeout)
        if problems:
            raise NotebookFailed(f"{self.nodeid.split('::')[0]}: " + "\n\n".join(problems))

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, NotebookFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}: every code cell, in a warm process"


class _Lines:
    "JSON objects, one a line, read from the file descriptor `fd`; every wait bounded unless told otherwise."

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def next(self, timeout: float | None) -> dict | None:
        "The next object; None at the end of the stream; TimeoutError after `timeout` seconds (None: no limit)."
        import select
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def _send(fd: int, message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('warm_parent', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module.warm_parent())\n"
)


class WarmParent:
    "The warm parent of this pytest process (started on its first notebook, stopped by process id at its end)."

    def __init__(self, root, imports: tuple[str, ...] = WARM_IMPORTS):
        import subprocess

        log, self.log = tempfile.mkstemp(prefix="mlops-day28-warm-parent-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _BOOT, __file__, *imports],  # -P: imports from where a kernel's come
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=root,
            env={"MPLBACKEND": _INLINE, **SINGLE_THREADED, **os.environ},  # matplotlib reads it once, on import
            start_new_session=True,  # Ctrl-C reaches pytest, which stops the notebook and the parent itself
        )
        os.close(log)
        self.events, self.count = _Lines(self.proc.stdout.fileno()), 0  # count: the notebooks sent
        self.last_log, self.last_start = b"", 0  # the end of its log once it is stopped (and the log removed)
        try:
            ready, why = self.events.next(_STARTUP), "it ended"
        except TimeoutError:
            ready, why = None, f"not within {_STARTUP:.0f} s"
        if not ready:
            log = self.tail(0)
            self.stop()
            raise NotebookFailed(f"the warm parent did not start ({why}); its log ends: {log}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, start: int, size: int = 3000) -> str:
        "The end of what the parent and its notebooks' processes wrote outside the cells since byte `start`."
        try:
            with open(self.log, "rb") as f:
                f.seek(max(start, os.path.getsize(self.log) - size))
                text = f.read()
        except FileNotFoundError:  # the parent was stopped: what its log held then
            text = self.last_log[max(0, start - self.last_start) :][-size:]
        return text.decode(errors="replace").strip() or "(nothing)"

    def execute(self, request: dict, cell_timeout: float) -> list[str]:
        "Run the notebook `request` names in a child; what went wrong, one paragraph each (none: it passed)."
        name, start = Path(request["path"]).name, os.path.getsize(self.log)
        self.count += 1
        request = {**request, "id": self.count}  # events of an earlier notebook (a late one) are told apart by it
        _send(self.proc.stdin.fileno(), request)
        problems, cells = [], {c["n"]: c for c in request["cells"]}
        running, limit, why = None, _STARTUP, None
        waiting = f"the notebook's process did not start within {_STARTUP:.0f} s"  # what a timeout would mean now
        try:
            while True:
                try:
                    event = self.events.next(limit)
                except TimeoutError:
                    event = None
                    why = waiting
                if event is None:
                    why = why or "the warm parent ended"
                    break
                if event.get("id") != self.count:
                    continue
                if "exit" in event:
                    if running is not None:
                        problems.append(f"Cell {running}: the notebook's process ended ({event['exit']}) while it ran")
                    break
                if "cell" in event and "error" not in event:  # a cell starts
                    running, limit = event["cell"], cell_timeout
                    waiting = f"Cell {running} ran longer than {limit:.0f} s (--nbval-cell-timeout)"
                elif "cell" in event:  # a cell ends
                    running, limit = None, _EXIT
                    waiting = f"after Cell {event['cell']}, the next did not start within {limit:.0f} s"
                    cell = cells[event["cell"]]
                    where = f"Cell {cell['n']} (id {cell['id']})"
                    problems += [f"{where}: {p}" for p in event["problems"]]
                    if event["error"]:
                        problems.append(f"{where} raised an exception.\n\nInput:\n{cell['source']}\n\n{event['error']}")
                elif "done" in event:  # the process ends (its threads, atexit), then the parent stops its leftovers
                    limit = _END
                    waiting = (
                        f"after its last cell, the notebook's process did not end within {limit:.0f} s"
                        " (its non-daemon threads, its atexit functions; then the processes it left were stopped)"
                    )
                elif "broken" in event:
                    problems.append(f"the warm runner failed:\n{event['broken']}")
        except BaseException as e:  # pytest-timeout, Ctrl-C: stop the notebook before anything else happens
            self.kill_notebook(self.count)
            e.add_note(f"{name}: stopped " + (f"in Cell {running}" if running is not None else "between cells"))
            raise
        if why:  # stopped first: the parent writes where its process was (its threads' stacks) to the log
            event = self.kill_notebook(self.count)
            problems.append(f"{why}: stopped.\nIts processes wrote, outside the cells: {self.tail(start)}")
        left = (event or {}).get("left") or []
        if left:  # stopped now, each with its children and process group
            problems.append(f"{name} left processes running after it ended: {'; '.join(left)}")
        elif event and event["exit"] not in (0, None) and not problems:
            problems.append(f"its process ended with {event['exit']}: {self.tail(start)}")
        return problems

    def kill_notebook(self, count: int) -> dict | None:
        "Have the parent kill notebook `count`'s process group, and stop what it started; its report, if it gives one."
        try:
            _send(self.proc.stdin.fileno(), {"kill": count})
            while (event := self.events.next(_END)) is not None:
                if "exit" in event and event.get("id") == count:
                    return event
        except (OSError, TimeoutError):
            pass
        self.stop()  # a parent that does not answer goes too (its notebook with it: PR_SET_PDEATHSIG)
        return None

    def stop(self) -> None:
        "Stop the parent: it ends at the end of its input; by SIGKILL, with its process group, if it does not."
        import signal
        import subprocess

        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(_EXIT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            with open(self.log, "rb") as f:  # its end, for a failure still to be told (tail)
                self.last_start = max(0, os.path.getsize(self.log) - (1 << 16))
                f.seek(self.last_start)
                self.last_log = f.read()
            os.unlink(self.log)


def _prctl(option: int, value: int) -> None:
    "Linux's prctl(2), by ctypes; nothing elsewhere (no subreaper: leftovers are not found; no parent-death signal)."
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
_WHERE = signal.SIGUSR2  # to a notebook's process before it is stopped: its stacks to the log (_where)


def warm_parent() -> int:
    "The warm parent (its own process, `WarmParent` starts it): import once, then fork a child per notebook it is sent."
    import gc
    import importlib
    import pkgutil

    events = os.dup(1)  # the events go to pytest; fd 1 (print, subprocesses) to the log, as fd 2 does
    os.dup2(2, 1)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # what a notebook leaves running comes back to this process: see _leftovers
    for name in sys.argv[2:]:
        package = importlib.import_module(name.removesuffix(".*"))
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}.") if name.endswith(".*") else ():
            # a module that does not import fails in its notebook, as it would in a kernel
            with contextlib.suppress(Exception):
                importlib.import_module(module.name)
    gc.freeze()  # what is imported stays out of the children's collections: their pages stay shared, not copied
    if others := _other_threads():  # refused: see SINGLE_THREADED
        why = "a child forked now would hold the locks they hold, with no thread to release them"
        print(f"the warm parent has threads besides its main one ({'; '.join(others)}): {why}.", file=sys.stderr)
        return 1
    _send(events, {"ready": os.getpid()})
    requests = _Lines(0)
    while (request := requests.next(None)) is not None:  # until pytest closes its end (or dies)
        if "path" not in request:  # a kill for a notebook that has already ended: it is over
            _send(events, {"id": request["kill"], "exit": None, "left": []})
            continue
        pid = os.fork()
        if pid == 0:  # the notebook's process: it never comes back into this loop
            try:
                _child(request, events)
            finally:
                os._exit(1)
        code, gone = _watch(pid, requests)
        left = _leftovers()
        with contextlib.suppress(OSError):  # pytest may be gone
            _send(events, {"id": request["id"], "exit": code, "left": left})
        if gone:
            break
    return 0


def _other_threads(settle: float = 2.0) -> list[str]:
    "This process's threads but its main one, native ones too ('tid name'), once those ending have ended; Linux only."
    import time

    deadline = time.monotonic() + settle
    while True:
        others = []
        for task in Path("/proc/self/task").glob("*"):
            with contextlib.suppress(OSError):
                if task.name != str(os.getpid()):
                    others.append(f"{task.name} {(task / 'comm').read_text().strip()}")
        if not others or time.monotonic() > deadline:
            return others
        time.sleep(0.1)


def _watch(pid: int, requests: _Lines) -> tuple[int, bool]:
    "Wait for the notebook's process `pid`: its exit code, and whether pytest went away; killed when pytest says so."
    import select
    import signal

    gone = False
    while True:  # however long the notebook takes: pytest bounds it, and says so
        # Reap what has ended: the notebook's process, and its orphans that came back here, as init would reap them (a
        # zombie left unreaped would look alive to the notebook: psutil.wait_procs would wait for it to its timeout)
        while (ended := os.waitpid(-1, os.WNOHANG))[0]:
            if ended[0] == pid:
                return os.waitstatus_to_exitcode(ended[1]), gone
        if b"\n" not in requests.buffer and not select.select([] if gone else [requests.fd], [], [], 0.05)[0]:
            continue
        request = requests.next(None)
        if request is None or request.get("kill"):  # pytest ended, or stops this notebook: its whole process group
            gone = request is None
            if not gone:
                _where(pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _where(pid: int) -> None:
    "Write where the notebook's process `pid` is to the log (fd 2): each thread's kernel wait, and its Python stacks."
    import time

    threads = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):  # native threads too (a C library's), on Linux
        with contextlib.suppress(OSError):
            threads.append(f"{task.name} {(task / 'comm').read_text().strip()} ({(task / 'wchan').read_text() or '-'})")
    os.write(2, f"\nthe notebook's process {pid} when stopped; its threads: {'; '.join(threads) or '?'}\n".encode())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, _WHERE)  # faulthandler, registered in _child, writes every thread's Python stack to the log
        time.sleep(0.5)


def _leftovers() -> list[str]:
    "Stop what the last notebook left running (they come back to this process, its subreaper): 'pid (command)' each."
    import psutil

    from mlops_day28.reliability.processes import stop_process

    left = []
    for p in psutil.Process().children():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:  # ended already: reap it
                os.waitpid(p.pid, 0)
                continue
            left.append(f"pid {p.pid} ({' '.join(p.cmdline()[:4])[:160]})")
        except (psutil.Error, ChildProcessError):
            continue
        stop_process(p.pid)  # SIGTERM, to its children and process group too; SIGKILL after 10 s
    return left


def _child(request: dict, events: int) -> None:
    "In the forked child: become the notebook's process (its own process group), run its cells, tell pytest how it went."
    import faulthandler
    import signal
    import traceback

    os.setsid()  # the parent kills the notebook and what it started in its group, by this process's id
    faulthandler.register(_WHERE, file=sys.__stderr__, all_threads=True)  # where it is, to the log, when stopped
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # and if the warm parent dies, this goes with it
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # no input, as in a kernel run with allow_stdin=False
    os.close(devnull)
    try:
        _execute(request, lambda message: _send(events, {"id": request["id"], **message}))
    except BaseException:
        _send(events, {"id": request["id"], "broken": traceback.format_exc()})
    os.close(events)
    _end()


def _end() -> None:
    "End this process as a kernel's ends (its threads, then atexit), without tearing down what it shares with its parent."
    import atexit
    import threading

    # What Python's exit does first: threading's own exit hooks (they wake the idle workers of a thread pool nobody
    # shut down, which would otherwise wait for work for ever), then every non-daemon thread joined. A kernel waits
    # for them too; pytest kills this process if they never end.
    threading._shutdown()
    atexit._run_exitfuncs()  # what a notebook registered: servers stopped, temporary folders removed, logs flushed
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)  # not the interpreter's teardown of every module: it would copy the parent's memory, for nothing


def _execute(request: dict, send) -> None:
    "Run the notebook's code cells in order, as a Jupyter kernel does; after each, what it raised and what shows wrong."
    import asyncio
    import re
    import sysconfig

    import ipykernel  # noqa: F401 (imported, as in a kernel: the package asks whether it is)
    from execnb.shell import CaptureShell
    from fastcore.nbio import run_cell
    from IPython.utils.capture import capture_output

    path = Path(request["path"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(path.parent)  # where Jupyter (and nbval) start a notebook's kernel
    sys.argv = [os.path.join(sysconfig.get_paths()["purelib"], "ipykernel_launcher.py")]  # a kernel's: a run's source
    site = next((i for i, p in enumerate(sys.path) if p.endswith("site-packages")), len(sys.path))
    sys.path.insert(site, "")  # the notebook's folder, where a kernel has it
    if "numpy" in sys.modules:  # a fresh process draws fresh seeds (Python's `random` reseeds itself at a fork)
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    # IPython's shell, with execnb's display hook. Not its matplotlib set-up: as in a kernel, matplotlib_inline sets
    # itself up when a notebook first plots through pyplot (a Figure shown before that shows as text, as in Jupyter)
    shell = CaptureShell(mpl_format=None)
    shell.close()  # its loop runs in a thread of its own; here the cells run in the main thread, on this one:
    loop = asyncio.new_event_loop()  # as ipykernel runs them (signal handlers work; `await` at the top level too)
    asyncio.set_event_loop(loop)
    for cell in request["cells"]:
        if cell["skip"]:
            continue
        send({"cell": cell["n"]})
        with capture_output() as shown:
            result = loop.run_until_complete(run_cell(shell, cell["source"], store_history=True))
        outputs = [{"output_type": "display_data", "data": o.data} for o in shown.outputs]
        if result.result is not None:
            outputs.append({"output_type": "execute_result", "data": shell.display_formatter.format(result.result)[0]})
        if shown.stderr:
            outputs.append({"output_type": "stream", "name": "stderr", "text": shown.stderr})
        error = result.error_before_exec or result.error_in_exec
        text = None
        if error is not None and not cell["raises"]:
            tb = shell.InteractiveTB.structured_traceback(type(error), error, error.__traceback__)
            text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(tb))
        problems = [str(p) for p in shown_wrong(outputs, exercise=request["exercise"])]
        send({"cell": cell["n"], "error": text, "problems": problems})
        if text:
            break
    send({"done": True})
