"""Fixtures of tests/: the session's MLflow server (`tracking_uri`; the project's conftest.py starts and stops it,
as notebooks need it too, and holds the tiers and the scheduling), one of a module's own in this process
(`local_mlflow`), and a learner's namespace.

The project's paths and the tiny config are constants in tests/paths.py (`from paths import ROOT, TINY_CONFIG`),
not here: tests use them at import time, and `from conftest import ...` would be ambiguous between this file and
the project's conftest.py.
"""

import contextlib
import os
import shutil
import sqlite3

import pytest


@pytest.fixture(scope="session")
def tracking_uri() -> str:
    """The session's MLflow server, with MLflow pointed at it: the project's conftest.py starts it before the first
    test that asks for this fixture (or the first notebook), in a temporary folder, and stops it at the end."""
    import mlflow

    uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def _mlflow_store(tmp_path_factory) -> str:
    "An empty MLflow SQLite store, made once per test process (its tables cost about a second to make each time)."
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # makes the tables and the Default experiment
    return str(db)


@pytest.fixture(scope="module")
def local_mlflow(tmp_path_factory, _mlflow_store):
    """An MLflow of the test module's own, in this process: a SQLite store and its artifacts in a temporary folder,
    no server (MLflow's own tests work this way). MLflow points at it while the module's tests run, then back.

    A test that uses it needs no server, so it is in the fast tier (`make test-fast`) unless it is slow. The
    store is made from inside the temporary folder: MLflow resolves a SQLite store's default artifact root
    (`./mlruns`) against the working directory once, when it first opens the store, and keeps it.
    """
    import mlflow
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    shutil.copyfile(_mlflow_store, folder / "mlflow.db")  # a copy of the empty store, its Default experiment moved here
    with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as db, db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns" / "0"),)
        )
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # commands run in this process (cli.train) read it
    mlflow.set_tracking_uri(uri)
    here = os.getcwd()
    try:
        os.chdir(folder)
        MlflowClient().search_experiments()  # opens the store here: artifacts go to <folder>/mlruns
    finally:
        os.chdir(here)
    yield uri
    with contextlib.suppress(Exception):
        mlflow.end_run()
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    mlflow.set_tracking_uri(before)


@pytest.fixture
def learner_namespace(monkeypatch):
    "`make(*modules)`: the learner's namespace (IPython's `In` included) that `learner_variable` reads in `modules`."

    def make(*modules) -> dict:
        ns = {"In": []}

        def variable(name):
            if name not in ns:
                raise NameError(name)
            return ns[name]

        for module in modules:
            monkeypatch.setattr(module, "learner_variable", variable)
        return ns

    return make
