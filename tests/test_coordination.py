"""The lock on the tracking server, against a fake registry: contention, MLflow's own race, abandoned holders."""

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from mlops_day28.coordination import LOCK_PREFIX, LockTimeout, owner_tags, server_lock


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
    reg.models[LOCK_PREFIX + "k"] = {**owner_tags(), "mlops.locked_at": "9999999999"}  # this (live) process
    with pytest.raises(LockTimeout, match="k is locked by pid"), server_lock("k", timeout=0.3, client=reg):
        pass


def test_a_dead_holders_lock_is_taken_over():
    reg = FakeRegistry()
    dead = {**owner_tags(), "mlops.pid_started": "1.00", "mlops.locked_at": "9999999999"}  # same pid, another process
    reg.models[LOCK_PREFIX + "k"] = dead
    with server_lock("k", timeout=5, client=reg):
        assert reg.models[LOCK_PREFIX + "k"] != dead
