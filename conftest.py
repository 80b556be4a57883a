"""Test-session set-up shared by tests/ and the notebooks that nbval executes.

One MLflow server serves the whole session: it is started on a free port in a
temporary folder before the first notebook kernel or tracking test runs, exported
as MLFLOW_TRACKING_URI (so kernels inherit it), and stopped by process id at the end.
Set MLFLOW_TRACKING_URI yourself to run the tests against a server you already have.
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

_SERVER_FIXTURE = "tracking_uri"


def _needs_server(item) -> bool:
    return item.path.suffix == ".ipynb" or _SERVER_FIXTURE in getattr(item, "fixturenames", ())


def pytest_collection_finish(session):
    if os.environ.get("MLFLOW_TRACKING_URI") or not any(_needs_server(i) for i in session.items):
        return
    from mlops_day28.server import free_port, start_tracking_server

    root = tempfile.mkdtemp(prefix="mlops-day28-tests-")
    server = start_tracking_server(port=free_port(), root=root)
    session.config._mlops_server = (server, root)
    os.environ["MLFLOW_TRACKING_URI"] = server.uri


def pytest_sessionfinish(session, exitstatus):
    started = getattr(session.config, "_mlops_server", None)
    if not started:
        return
    from mlops_day28.server import stop_tracking_server

    server, root = started
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
