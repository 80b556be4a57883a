"""The lock on the tracking server, against a fake registry: contention, MLflow's own race, abandoned holders;
and the project's workbook lock (a file lock), across processes."""

import os
import socket
import subprocess
import sys
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from mlops_day28.reliability.coordination import (
    LOCK_PREFIX,
    LOCKED_AT_TAG,
    PID_STARTED_TAG,
    WORKBOOK_LOCK,
    LockTimeout,
    ProjectBusy,
    ProjectLock,
    owner_tags,
    server_lock,
)


class FakeRegistry:
    "Registered models by name, as MLflow's store keeps them; `fail_next` error codes are raised by `create` first."

    def __init__(self, fail_next=()):
        self.models, self.fail_next, self.creates = {}, list(fail_next), 0

    def create_registered_model(self, name, tags=None, description=None):
        self.creates += 1
        if self.fail_next:
            raise MlflowException("injected", error_code=getattr(databricks_pb2, self.fail_next.pop(0)))
        if name in self.models:
            raise MlflowException(
                f"Registered Model (name={name}) already exists.", error_code="RESOURCE_ALREADY_EXISTS"
            )
        self.models[name] = dict(tags or {})

    def get_registered_model(self, name):
        if name not in self.models:
            raise MlflowException(
                f"Registered Model with name={name} not found", error_code=databricks_pb2.RESOURCE_DOES_NOT_EXIST
            )
        return type("Model", (), {"tags": self.models[name]})()

    def delete_registered_model(self, name):
        self.models.pop(name)


def test_the_lock_is_held_in_the_block_and_released_after():
    reg = FakeRegistry()
    with server_lock("k", client=reg):
        assert LOCK_PREFIX + "k" in reg.models
    assert reg.models == {}


def test_a_holder_released_between_insert_and_read_is_contention_not_an_error():
    "MLflow's store answers a failed insert by reading the name; if the holder released it meanwhile: not found."
    reg = FakeRegistry(fail_next=["RESOURCE_DOES_NOT_EXIST"])
    with server_lock("k", client=reg):
        pass
    assert reg.creates == 2 and reg.models == {}


def test_other_errors_are_not_swallowed():
    reg = FakeRegistry(fail_next=["PERMISSION_DENIED"])
    with pytest.raises(MlflowException, match="injected"), server_lock("k", client=reg):
        pass


def test_a_live_holder_makes_the_lock_wait_then_time_out():
    reg = FakeRegistry()
    reg.models[LOCK_PREFIX + "k"] = {**owner_tags(), LOCKED_AT_TAG: "9999999999"}  # this (live) process
    with pytest.raises(LockTimeout, match="k is locked by pid"), server_lock("k", timeout=0.3, client=reg):
        pass


def test_a_dead_holders_lock_is_taken_over_and_said_in_one_line(capsys):
    reg = FakeRegistry()
    locked = f"{time.time() - 42:.3f}"
    dead = {**owner_tags(), PID_STARTED_TAG: "1.00", LOCKED_AT_TAG: locked}  # same pid, another process
    reg.models[LOCK_PREFIX + "k"] = dead
    with server_lock("k", timeout=5, client=reg):
        assert reg.models[LOCK_PREFIX + "k"] != dead
    who = f"pid {os.getpid()} on {socket.gethostname()}"
    assert (
        capsys.readouterr().err
        == f"note: took over the lock k from {who}, which ended without releasing it (locked 42 s ago)\n"
    )


def test_a_stale_live_holders_lock_is_taken_over_and_said(capsys):
    reg = FakeRegistry()
    reg.models[LOCK_PREFIX + "k"] = {**owner_tags(), LOCKED_AT_TAG: f"{time.time() - 400:.3f}"}  # alive, but 400 s
    with server_lock("k", timeout=5, stale_after=300, client=reg):
        pass
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"note: took over the lock k from pid {os.getpid()} on {socket.gethostname()}, which held")
    assert line.endswith("(over 300 s: presumed dead)")


def test_a_free_lock_is_taken_without_a_word(capsys):
    with server_lock("k", client=FakeRegistry()):
        pass
    assert capsys.readouterr().err == ""


HOLD = "import sys, time; from mlops_day28.reliability.coordination import ProjectLock; ProjectLock(sys.argv[1], 'make workbook').acquire(); print('held', flush=True); time.sleep(120)"


def test_the_workbook_lock_names_its_holder_and_goes_with_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ProjectBusy) as refused:
            ProjectLock(tmp_path, "make workbook").acquire()
        said = str(refused.value)
        assert said.startswith(
            f"another run is executing this project's notebooks: pid {holder.pid} (make workbook, since "
        )
        assert said.endswith("); wait for it to end, then run this again") and refused.value.exit_code == 2
        with pytest.raises(ProjectBusy):  # a test session (shared) is refused too
            ProjectLock(tmp_path, "pytest", shared=True).acquire()
    finally:
        holder.kill()  # kill -9: no chance to let go of anything
        holder.wait(10)
    with ProjectLock(tmp_path, "make workbook") as lock:  # the OS released it with the process
        assert [h["pid"] for h in lock.holders()] == [os.getpid()]
    assert (tmp_path / WORKBOOK_LOCK).exists()


def test_test_sessions_share_the_workbook_lock_and_exclude_a_workbook_run(tmp_path):
    with ProjectLock(tmp_path, "pytest", shared=True), ProjectLock(tmp_path, "pytest", shared=True) as second:
        assert len(second.holders()) == 2
        with pytest.raises(ProjectBusy, match=r"notebooks: pid \d+ \(pytest, since [\d:]+\); pid \d+ \(pytest, since "):
            ProjectLock(tmp_path, "make workbook").acquire()
    ProjectLock(tmp_path, "make workbook").acquire().release()  # both gone: free
