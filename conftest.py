"""Test-session set-up shared by tests/ and the notebooks that nbval executes.

Tiers. Every test is marked by what it needs, so `make test-fast` can leave the slow ones out:
- `notebook`: a notebook cell executed by nbval (marked here, by file type);
- `server`: uses the session's MLflow server (the `tracking_uri` fixture; marked here), or
  starts servers of its own (marked in its file);
- `slow`: runs a real command end to end, or trains for more than a few seconds (marked in its file).

One MLflow server serves each test process: it is started on a free port in a temporary
folder before the first notebook kernel or server test runs, exported as MLFLOW_TRACKING_URI
(so kernels inherit it), and stopped by process id at the end. With `pytest -n 2` each
worker has its own. Set MLFLOW_TRACKING_URI yourself to run the tests against a server you
already have.
"""

import os
import shutil
import tempfile

import pytest

# Before any kernel starts: every notebook runs with the tiny config, quietly.
os.environ.setdefault("MLOPS_CONFIG", "configs/tiny.yaml")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# The solution edition (nbs/): a task check that fails is a bug, so q.check() raises (00j_exercises).
os.environ.setdefault("MLOPS_STRICT_CHECKS", "1")
# One thread per torch process: the tests run in three processes on two cores, each starting
# kernels and commands of its own; with torch's default (a thread per core each) they fight
# over the cores and everything gets several times slower. Results do not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_SERVER_FIXTURE = "tracking_uri"


def _needs_server(item) -> bool:
    return item.path.suffix == ".ipynb" or _SERVER_FIXTURE in getattr(item, "fixturenames", ())


# The longest files first, so that `pytest -n` does not end waiting on one of them (measured with
# --durations: the exercises that train the most, then the tests, then the reference notebooks).
_FIRST = [
    "06_monitoring",
    "04_sweep",
    "test_learner_edition",
    "03_pipeline",
    "test_sweep",
    "test_evaluate",
    "test_serving",
    "05_cicd",
    "test_pipeline",
    "02_registry",
    "test_tracking_server",
    "01_tracking",
    "00d_tracking_server",
]


def _cost_rank(item) -> tuple[int, int]:
    "Where `item`'s file goes in the queue: the known long ones, the tests, then the notebooks."
    stem = item.path.stem
    if stem in _FIRST:
        return 0, _FIRST.index(stem)
    return (1, 0) if item.path.suffix == ".py" else (2, 0)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
        if _needs_server(item):
            item.add_marker(pytest.mark.server)
    items.sort(key=_cost_rank)  # stable: a file's tests, and a notebook's cells, stay in order


def pytest_collection_finish(session):
    if os.environ.get("MLFLOW_TRACKING_URI") or not any(_needs_server(i) for i in session.items):
        return
    from mlops_day28.processes import free_port
    from mlops_day28.tracking_server import start_tracking_server

    root = tempfile.mkdtemp(prefix="mlops-day28-tests-")
    server = start_tracking_server(port=free_port(), root=root)
    session.config._mlops_server = (server, root)
    os.environ["MLFLOW_TRACKING_URI"] = server.uri


def pytest_sessionfinish(session, exitstatus):
    started = getattr(session.config, "_mlops_server", None)
    if not started:
        return
    from mlops_day28.tracking_server import stop_tracking_server

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
