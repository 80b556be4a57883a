"""The model service past one process, and following its alias (nbs/06_monitoring, serve/04_feedback_store, serve/08_reload).

Real `mlops-serve` processes: two workers whose metrics a real Prometheus sums to exactly
the predictions made, with feedback for every prediction accepted once whichever worker
gets it; two replicas sharing a feedback store; and a service on `@champion` that moves
to the version the alias names while traffic flows, refuses a version that fails to
load, and keeps serving while the registry is unreachable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from paths import TINY_CONFIG

from mlops_day28.config import load_config
from mlops_day28.data import InputProfile
from mlops_day28.reliability.processes import free_port
from mlops_day28.serve.prometheus import prometheus_get, start_prometheus, start_service
from mlops_day28.serve.served_model import load_served_model
from mlops_day28.tracking import log_torch_model, save_torch_model
from mlops_day28.training import prepare_training

pytestmark = [pytest.mark.server, pytest.mark.slow]


def trained(seed: int = 42):
    job = prepare_training(load_config(TINY_CONFIG, [f"seed={seed}"]))
    job.fit(progress=False)
    return job, InputProfile.from_training(job.dataset, job.splits.train.X)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    job, profile = trained()
    path = tmp_path_factory.mktemp("served") / "model"
    save_torch_model(job.model, job.splits.train.X[:5], path, profile)
    return path, job.splits.test.X


def fresh_connection_post(url: str, path: str, body: dict) -> httpx.Response:
    "POST on a connection of its own: the kernel hands each new connection to one of the workers."
    with httpx.Client(timeout=10) as c:
        return c.post(f"{url}{path}", json=body)


def metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def test_two_workers_count_each_prediction_once_and_take_each_feedback_once(model_dir):
    path, X = model_dir
    service = start_service(TINY_CONFIG, free_port(), model_uri=str(path), args=["--workers", "2"])
    prometheus = None
    try:
        n = 120
        answers = [fresh_connection_post(service.url, "/predict", {"image": X[i % len(X)].tolist()}) for i in range(n)]
        assert all(a.status_code == 200 for a in answers)
        pids = set()
        for _ in range(400):  # the kernel hands each new connection to one worker; not in turn
            pids.add(httpx.get(f"{service.url}/health").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, pids  # both workers answer
        ids = [a.json()["predictions"][0]["prediction_id"] for a in answers]
        first = [fresh_connection_post(service.url, "/feedback", {"prediction_id": p, "label": 0}) for p in ids]
        again = [fresh_connection_post(service.url, "/feedback", {"prediction_id": p, "label": 0}) for p in ids]
        assert [r.status_code for r in first] == [200] * n
        assert [r.status_code for r in again] == [409] * n
        assert first[-1].json()["window"] == n  # the rolling window holds every worker's labels

        for _ in range(5):  # each scrape reaches one worker; every one sums all of them
            text = httpx.get(f"{service.url}/metrics").text
            assert metric(text, "model_predictions_total") == n
            assert (
                metric(text, 'model_feedback_total{correct="true"}')
                + metric(text, 'model_feedback_total{correct="false"}')
                == n
            )
            assert metric(text, 'model_invalid_requests_total{reason="duplicate_feedback"}') == n
        prometheus = start_prometheus([service.url.removeprefix("http://")])
        assert prometheus is not None, "prometheus is not installed (.ci/run installs it)"
        deadline, summed = time.monotonic() + 30, None
        while time.monotonic() < deadline and summed != n:
            result = prometheus_get(prometheus.url, "/api/v1/query", query="sum(model_predictions_total)")["result"]
            summed = float(result[0]["value"][1]) if result else None
            time.sleep(0.5)
        assert summed == n
    finally:
        if prometheus:
            prometheus.stop()
        service.stop()
    assert service.popen.poll() is not None


def test_replicas_sharing_a_feedback_store_refuse_a_label_given_to_the_other(model_dir, tmp_path):
    path, X = model_dir
    shared = ["--set", f"serving.feedback_store={tmp_path / 'feedback.db'}"]
    a = start_service(TINY_CONFIG, free_port(), model_uri=str(path), args=shared)
    try:
        b = start_service(TINY_CONFIG, free_port(), model_uri=str(path), args=shared)
        try:
            ids = [
                p["prediction_id"]
                for p in httpx.post(f"{a.url}/predict", json={"images": X[:10].tolist()}).json()["predictions"]
            ]
            assert all(
                httpx.post(f"{b.url}/feedback", json={"prediction_id": p, "label": 1}).status_code == 200 for p in ids
            )
            again = httpx.post(f"{a.url}/feedback", json={"prediction_id": ids[0], "label": 1})
            altered = ids[0][:-1] + ("1" if ids[0].endswith("0") else "0")  # its signature no longer fits
            assert again.status_code == 409 and again.json()["reason"] == "duplicate_feedback"
            assert httpx.post(f"{a.url}/feedback", json={"prediction_id": altered, "label": 1}).status_code == 404
        finally:
            b.stop()
    finally:
        a.stop()
    assert a.popen.poll() is not None and b.popen.poll() is not None


class TcpProxy:
    "127.0.0.1:port forwarding to `target`, which the test can take down (refusing connections) and bring back."

    def __init__(self, target: str):
        host, port = target.removeprefix("http://").rstrip("/").split(":")
        self.target, self.port = (host, int(port)), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conns: list[socket.socket] = []
        self.listener = None
        self.up()

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.listener.settimeout(0.2)
        self.running = True
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while self.running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=30)
            self.conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def down(self) -> None:
        self.running = False
        self.listener.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
                c.close()
        self.conns = []


def register(job_profile, name: str) -> str:
    job, profile = job_profile
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("Default").experiment_id):
        info = log_torch_model(job.model, job.splits.train.X[:5], registered_model_name=name, profile=profile)
    return str(info.registered_model_version)


def broken_version(name: str) -> str:
    "A version whose artifacts are not a model: loading it fails."
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("Default").experiment_id) as run:
        mlflow.log_text("not a model", "broken/MLmodel")
    return MlflowClient().create_model_version(name, f"{run.info.artifact_uri}/broken", run.info.run_id).version


def test_the_service_follows_its_alias_under_traffic_refuses_a_broken_version_and_survives_the_registry(tracking_uri):
    name, every = f"follow-{uuid.uuid4().hex[:8]}", 1.0
    one, two = trained(42), trained(7)
    client = MlflowClient()
    v1, v2 = register(one, name), register(two, name)
    client.set_registered_model_alias(name, "champion", v1)
    X = one[0].splits.test.X[:4]
    expected = {v: load_served_model(f"models:/{name}/{v}").predict_proba(X) for v in (v1, v2)}
    assert not np.allclose(expected[v1], expected[v2], atol=1e-3)  # the versions can be told apart by their answers

    proxy = TcpProxy(tracking_uri)
    env = {**os.environ, "MLFLOW_TRACKING_URI": proxy.url}
    args = ["--set", f"serving.reload_every={every}"]
    service = start_service(TINY_CONFIG, free_port(), model_uri=f"models:/{name}@champion", args=args, env=env)
    answers, stop = [], threading.Event()

    def traffic():
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                r = c.post(f"{service.url}/predict", json={"images": X.tolist()})
                answers.append((r.status_code, r.json()))

    sender = threading.Thread(target=traffic, daemon=True)
    try:
        health = lambda: httpx.get(f"{service.url}/health").json()  # noqa: E731
        assert health()["model_version"] == v1
        sender.start()
        time.sleep(1)
        client.set_registered_model_alias(name, "champion", v2)
        moved = time.monotonic()
        while health()["model_version"] != v2:
            assert time.monotonic() - moved < every + 5, health()
            time.sleep(0.1)
        time.sleep(1)
        stop.set()
        sender.join(10)
        assert {a[1]["model_version"] for a in answers} == {v1, v2}
        for status, body in answers:  # none failed, and each answer came whole from the version it names
            assert status == 200, body
            probs = np.array([p["probabilities"] for p in body["predictions"]])
            np.testing.assert_allclose(probs, expected[body["model_version"]], atol=1e-5)
        assert health()["registry"]["reloads"] == 1

        v3 = broken_version(name)
        client.set_registered_model_alias(name, "champion", v3)
        deadline = time.monotonic() + every + 15
        while health()["registry"]["failed_reloads"] == 0:
            assert time.monotonic() < deadline, health()
            time.sleep(0.2)
        h = health()
        assert h["model_version"] == v2 and h["registry"]["last_failure"].startswith(f"v{v3}: "), h
        assert httpx.post(f"{service.url}/predict", json={"images": X.tolist()}).json()["model_version"] == v2
        text = httpx.get(f"{service.url}/metrics").text
        assert metric(text, 'model_reloads_total{result="failed"}') == 1
        assert metric(text, 'model_reloads_total{result="loaded"}') == 1

        proxy.down()
        deadline = time.monotonic() + every + 10
        while health()["registry"]["state"] != "unreachable":
            assert time.monotonic() < deadline, health()
            time.sleep(0.2)
        r = httpx.post(f"{service.url}/predict", json={"images": X.tolist()})
        assert r.status_code == 200 and r.json()["model_version"] == v2
        assert metric(httpx.get(f"{service.url}/metrics").text, "model_registry_reachable") == 0
    finally:
        stop.set()
        service.stop()
        proxy.down()
        client.delete_registered_model(name)
    assert service.popen.poll() is not None
