"""Test-session set-up shared by tests/ and the notebooks that nbval executes.

Tiers. Every test is marked by what it needs, so `make test-fast` can leave the slow ones out:
- `notebook`: a notebook cell executed by nbval (marked here, by file type);
- `server`: uses the session's MLflow server (the `tracking_uri` fixture; marked here), or
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
does (`_interrupt`), so `pytest_sessionfinish` still stops these servers and removes their folders
(tests/test_session_cleanup.py). Set MLFLOW_TRACKING_URI yourself to run the tests against a server you
already have. `07_team` starts a team server (PostgreSQL and MLflow) of its own: in a
temporary folder (MLOPS_TEAM_ROOT) on a free port (MLFLOW_TEAM_PORT), stopped at the end.

A session that executes notebooks holds the project's workbook lock (`.workbook/lock`, shared:
`reliability/03_coordination`) from its start to its end, so it never runs beside `make workbook` in the
same project: whichever comes second says who runs, in one line, and exits with code 2.
"""

import os
import re
import shutil
import signal
import tempfile
import threading

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


def _interrupt(signum, frame):
    "SIGTERM ends the session as Ctrl-C does: pytest_sessionfinish still stops its servers and removes their folders."
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}: the test session stops, its servers with it")


def pytest_configure(config):
    if config.getoption("dist", None) == "loadgroup" and not loadgroup_works():  # None: without xdist (-p no:xdist)
        raise pytest.UsageError(
            f"--dist loadgroup cannot group tests under pytest {pytest.__version__} (xdist's group is lost, so a"
            " notebook's cells would be spread over processes): install the locked pytest (make install)"
        )
    # In every pytest process (xdist's controller and its workers), unless something else already handles SIGTERM.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
        config._mlops_sigterm = True


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


@pytest.fixture(scope="session")
def tracking_uri() -> str:
    "The session's MLflow server (started by pytest_collection_finish), with MLflow pointed at it."
    import mlflow

    uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    return uri
