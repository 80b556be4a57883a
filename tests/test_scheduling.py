"""How `make test` shares the tests among its processes: pytest-xdist's `--dist loadgroup`, one
`xdist_group` mark per test (the project's conftest.py), the exercise notebooks as one group."""

import importlib.util

import pytest
from paths import ROOT

_spec = importlib.util.spec_from_file_location("project_conftest", ROOT / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)  # the project's root conftest.py: its hooks, called on fake items
_spec.loader.exec_module(conftest)


class FakeItem:
    "What conftest.py's collection hook reads of a test, and the marks it adds."

    def __init__(self, nodeid: str, fixturenames=()):
        self.nodeid, self.path, self.fixturenames = nodeid, ROOT / nodeid.split("::", 1)[0], fixturenames
        self.marks: list[pytest.Mark] = []

    def add_marker(self, marker):
        self.marks.append(marker.mark)

    def iter_markers(self, name):
        return (m for m in self.marks if m.name == name)

    def get_closest_marker(self, name):
        return next(self.iter_markers(name), None)

    def groups(self) -> list[str]:
        "The group names xdist reads (its `pytest_collection_modifyitems`: the first argument of each mark)."
        return [m.args[0] for m in self.iter_markers("xdist_group")]


EXERCISES = [f"nbs/exercises/{n}.ipynb" for n in ("01_tracking", "02_registry", "03_pipeline")]
NODEIDS = [
    "tests/test_data.py::test_a",
    f"{EXERCISES[2]}::Cell 0",
    "nbs/exercises/07_team.ipynb::Cell 0",
    "tests/test_workbook_ticks.py::test_ticks",
    f"{EXERCISES[0]}::Cell 0",
    "tests/test_data.py::test_b[x@y]",
    "nbs/core/01_config.ipynb::Cell 0",
    f"{EXERCISES[0]}::Cell 1",
    f"{EXERCISES[1]}::Cell 0",
    "tests/faults/test_fault_sweep.py::test_resume",
]


def test_group_is_the_file_or_the_exercises():
    assert conftest._group("tests/test_data.py") == "tests/test_data.py"
    assert conftest._group("nbs/core/01_config.ipynb") == "nbs/core/01_config.ipynb"
    for path in (*EXERCISES, "nbs/exercises/06_monitoring.ipynb", "tests/test_workbook_ticks.py"):
        assert conftest._group(path) == conftest.EXERCISES, path
    assert conftest._group("nbs/exercises/07_team.ipynb") == "nbs/exercises/07_team.ipynb"  # its own server: apart
    assert conftest._group("learner/01_tracking.ipynb") == "learner/01_tracking.ipynb"


def test_every_test_gets_one_group_and_the_exercises_share_one_in_order():
    items = [FakeItem(n) for n in NODEIDS]
    conftest.pytest_collection_modifyitems(items)
    assert all(len(item.groups()) == 1 for item in items), [(i.nodeid, i.groups()) for i in items]
    group = {item.nodeid: item.groups()[0] for item in items}
    assert group["tests/test_data.py::test_a"] == group["tests/test_data.py::test_b[x@y]"] == "tests/test_data.py"
    exercises = [i.nodeid for i in items if group[i.nodeid] == conftest.EXERCISES]
    assert exercises == [  # first in the queue, in the workbook's order, then the test that reads what they left
        f"{EXERCISES[0]}::Cell 0",
        f"{EXERCISES[0]}::Cell 1",
        f"{EXERCISES[1]}::Cell 0",
        f"{EXERCISES[2]}::Cell 0",
        "tests/test_workbook_ticks.py::test_ticks",
    ]
    assert [i.nodeid for i in items[:5]] == exercises
    assert len(set(group.values())) == 5  # the exercises, and each other file alone
    assert items[-1].nodeid == "nbs/core/01_config.ipynb::Cell 0"  # reference notebooks last
    assert all(i.get_closest_marker("notebook") for i in items if i.path.suffix == ".ipynb")


def test_a_loadgroup_session_stops_where_the_groups_would_be_lost(monkeypatch):
    class Config:
        pluginmanager = type("NoPlugins", (), {"has_plugin": staticmethod(lambda name: False)})()

        def __init__(self, dist):
            self.dist = dist

        def getoption(self, name, default=None):
            return {"dist": self.dist}.get(name, default)

    monkeypatch.setattr(conftest, "loadgroup_works", lambda: False)
    with pytest.raises(pytest.UsageError, match="--dist loadgroup cannot group tests under pytest"):
        conftest.pytest_configure(Config("loadgroup"))
    conftest.pytest_configure(Config("no"))  # a session in one process needs no groups
    monkeypatch.setattr(conftest, "loadgroup_works", lambda: True)
    conftest.pytest_configure(Config("loadgroup"))


def test_the_installed_pytest_keeps_xdist_groups():
    "The lock pins a pytest whose `nodeid` reads the `_nodeid` that xdist rewrites (pytest 9.2's does not)."
    assert conftest.loadgroup_works(), f"pytest {pytest.__version__}: install the locked pytest (make install)"
