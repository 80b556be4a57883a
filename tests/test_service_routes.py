"""Each route of the model service alone (nbs/serve/09_state, 10_routes, 11_app): a bare FastAPI with one router and a state.

The model is made up (its first ten pixels are the scores of the ten classes), so nothing is trained or loaded and
every answer is known in advance.
"""

import logging
import os
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST

from mlops_day28.config import Config, ServingConfig
from mlops_day28.data import InputProfile
from mlops_day28.serve.app import create_app
from mlops_day28.serve.routes import feedback_router, health_router, predict_router
from mlops_day28.serve.served_model import ServedModel
from mlops_day28.serve.state import ServiceState, build_service_state


class FirstPixels(torch.nn.Module):
    def forward(self, x):
        return x[:, :10]


PROFILE = InputProfile([str(c) for c in range(10)], 64, [1, 8, 8], [0.0, 16.0], [1.0] * 17, "made up")


def image_of(c: int) -> list[float]:
    "An image that the made-up model classifies as `c`: that class's pixel is the brightest."
    x = [0.0] * 64
    x[c] = 16.0
    return x


@pytest.fixture
def model():
    return ServedModel(FirstPixels(), "digits", "1", "/models/digits", PROFILE)


@pytest.fixture
def states(model):
    "Makes service states for `model` (settings changed by keyword), and closes their stores at the end."
    made = []

    def make(served=None, **serving) -> ServiceState:
        cfg = Config().model_copy(update={"serving": ServingConfig(**serving)})
        made.append(build_service_state(served or model, cfg, optimize=False))
        return made[-1]

    yield make
    for state in made:
        state.store.close()


def alone(router: APIRouter, state: ServiceState) -> TestClient:
    "A client of a bare app with only `router`, on `state`: how a route is tested alone."
    app = FastAPI()
    app.state.service = state
    app.include_router(router)
    return TestClient(app)


def metric(state: ServiceState, series: str) -> float:
    text = state.metrics.exposition().decode()
    return float(re.search(rf"^{re.escape(series)} (\S+)$", text, re.M).group(1))


def test_predict_alone_classifies_counts_and_issues_ids_the_store_accepts(states):
    state = states()
    c = alone(predict_router(state.api), state)
    one = c.post("/predict", json={"image": np.reshape(image_of(7), (8, 8)).tolist()})
    assert one.status_code == 200 and one.headers["content-type"] == "application/json"
    body = one.json()
    assert (body["model_name"], body["model_version"]) == ("digits", "1")
    (p,) = body["predictions"]
    assert (p["predicted_class"], p["label"]) == (7, "7")
    assert abs(sum(p["probabilities"]) - 1) < 1e-5 and np.argmax(p["probabilities"]) == 7
    assert state.store.predicted(p["prediction_id"]) == 7  # signed by this state's store
    batch = c.post("/predict", json={"images": [image_of(2), image_of(2), image_of(9)]}).json()["predictions"]
    assert [q["predicted_class"] for q in batch] == [2, 2, 9]
    assert metric(state, "model_predictions_total") == 4
    assert metric(state, 'model_class_predictions_total{predicted_class="2"}') == 2
    assert metric(state, "model_prediction_latency_seconds_count") == 2
    assert metric(state, "model_input_drift_psi") > 0  # these images are nothing like the profile's histogram
    assert state.serving.now[1].psi() == metric(state, "model_input_drift_psi")


def test_predict_alone_refuses_with_a_reason_and_counts_it(states):
    state = states(max_batch=2)
    c = alone(predict_router(state.api), state)
    cases = [
        ({"image": image_of(1)[:10]}, 422, "shape"),
        ({"image": [17.0] * 64}, 422, "out_of_range"),
        ({"images": [image_of(1)] * 3}, 413, "batch_too_large"),  # this state's serving.max_batch
        ({"images": []}, 422, "empty_batch"),
    ]
    for body, status, reason in cases:
        r = c.post("/predict", json=body)
        assert (r.status_code, r.json()["reason"]) == (status, reason), body
        assert r.json()["detail"]
    assert c.post("/predict", content="{nope").json()["reason"] == "not_json"
    for reason in ("shape", "out_of_range", "batch_too_large", "empty_batch", "not_json"):
        assert metric(state, f'model_invalid_requests_total{{reason="{reason}"}}') == 1, reason
    assert metric(state, "model_predictions_total") == 0


def test_predict_alone_declares_the_body_of_its_states_api(states):
    def declared(state: ServiceState) -> tuple[dict, dict]:
        api = alone(predict_router(state.api), state).app.openapi()
        assert list(api["paths"]) == ["/predict"]
        op = api["paths"]["/predict"]["post"]
        return op["requestBody"]["content"]["application/json"], op["responses"]

    body, responses = declared(states(max_batch=2))
    assert body["schema"]["properties"]["images"]["maxItems"] == 2
    assert body["example"] == {"image": [0.0] * 64}  # a working example for /docs: the lowest pixel value, 64 times
    assert set(responses) == {"200", "400", "413", "422"}
    assert declared(states(max_batch=5))[0]["schema"]["properties"]["images"]["maxItems"] == 5  # built per app


def test_predict_alone_answers_with_the_version_that_serves_now(states, model):
    state = states()
    c = alone(predict_router(state.api), state)
    assert c.post("/predict", json={"image": image_of(0)}).json()["model_version"] == "1"
    state.serving.swap(replace(model, version="2"))  # what a reload does between requests
    assert c.post("/predict", json={"image": image_of(0)}).json()["model_version"] == "2"


def test_each_app_reads_its_own_state(states):
    a, b = states(), states()
    ca, cb = alone(predict_router(a.api), a), alone(predict_router(b.api), b)
    ca.post("/predict", json={"images": [image_of(1)] * 3})
    cb.post("/predict", json={"image": image_of(1)})
    assert (metric(a, "model_predictions_total"), metric(b, "model_predictions_total")) == (3, 1)


def test_feedback_alone_records_labels_once_and_keeps_the_rolling_accuracy(states):
    state = states(accuracy_window=2)
    c = alone(feedback_router(state.api), state)
    first, second, third = state.store.issue([3, 3, 4])  # as /predict would have
    assert c.post("/feedback", json={"prediction_id": first, "label": 3}).json() == {
        "prediction_id": first,
        "correct": True,
        "rolling_accuracy": 1.0,
        "window": 1,
    }
    r = c.post("/feedback", json={"prediction_id": second, "label": 5}).json()
    assert (r["correct"], r["rolling_accuracy"], r["window"]) == (False, 0.5, 2)
    r = c.post("/feedback", json={"prediction_id": third, "label": 1}).json()
    assert (r["rolling_accuracy"], r["window"]) == (0.0, 2)  # a window of 2: the last two were wrong
    again = c.post("/feedback", json={"prediction_id": first, "label": 3})
    assert (again.status_code, again.json()["reason"]) == (409, "duplicate_feedback")
    assert metric(state, 'model_feedback_total{correct="true"}') == 1
    assert metric(state, 'model_feedback_total{correct="false"}') == 2
    assert (metric(state, "model_accuracy"), metric(state, "model_accuracy_window_size")) == (0.0, 2)


def test_feedback_alone_refuses_with_a_reason_and_counts_it(states):
    state = states()
    c = alone(feedback_router(state.api), state)
    (pid,) = state.store.issue([3])
    cases = [
        ({"prediction_id": "nope", "label": 3}, 404, "unknown_prediction_id"),
        ({"prediction_id": pid, "label": 10}, 422, "type"),
        ({"prediction_id": pid, "label": "3"}, 422, "type"),
        ({"label": 3}, 422, "bad_field"),
    ]
    for body, status, reason in cases:
        r = c.post("/feedback", json=body)
        assert (r.status_code, r.json()["reason"]) == (status, reason), body
    assert c.post("/feedback", content="nope").status_code == 400
    assert metric(state, 'model_invalid_requests_total{reason="type"}') == 2
    assert metric(state, 'model_invalid_requests_total{reason="not_json"}') == 1
    assert c.post("/feedback", json={"prediction_id": pid, "label": 3}).json()["correct"] is True


def test_feedback_alone_is_a_503_naming_the_cause_when_the_store_cannot_write(states, caplog):
    state = states()
    c = alone(feedback_router(state.api), state)
    (pid,) = state.store.issue([3])
    state.store._db.execute("PRAGMA query_only = ON")  # SQLite refuses writes, as on a read-only file
    with caplog.at_level(logging.WARNING, logger="mlops_day28.serve.app"):
        r = c.post("/feedback", json={"prediction_id": pid, "label": 3})
    assert r.status_code == 503 and r.json()["reason"] == "feedback_store_unavailable"
    assert "attempt to write a readonly database" in r.json()["detail"]
    assert [rec.getMessage().split(":")[0] for rec in caplog.records] == ["/feedback answered 503"]
    assert sum(s.value for m in state.metrics.invalid.collect() for s in m.samples if s.name.endswith("_total")) == 0
    state.store._db.execute("PRAGMA query_only = OFF")
    assert c.post("/feedback", json={"prediction_id": pid, "label": 3}).status_code == 200


def test_feedback_alone_declares_the_body_of_its_states_api(states):
    state = states()
    api = alone(feedback_router(state.api), state).app.openapi()
    assert list(api["paths"]) == ["/feedback"]
    op = api["paths"]["/feedback"]["post"]
    label = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["label"]
    assert label["exclusiveMaximum"] == 10  # the model's ten classes
    assert set(op["responses"]) == {"200", "400", "404", "409", "413", "422", "503"}


def test_health_alone_says_what_serves_and_whether_the_alias_is_followed(states, model):
    state = states()
    c = alone(health_router(), state)
    h = c.get("/health").json()
    assert h == {
        "status": "ok",
        "model_loaded": True,
        "model_name": "digits",
        "model_version": "1",
        "model_uri": "/models/digits",
        "inference": "eager",
        "inference_note": "",
        "data_check": "",
        "registry": {"follows": None, "state": "not followed"},
        "pid": os.getpid(),
    }
    followed = states(replace(model, uri="models:/digits@champion"), reload_every=5)
    registry = alone(health_router(), followed).get("/health").json()["registry"]
    assert (registry["follows"], registry["every_s"], registry["state"]) == (
        "models:/digits@champion",
        5.0,
        "not checked yet",  # a bare app has no lifespan: the follower never started
    )


def test_metrics_alone_exposes_the_states_metrics(states):
    state = states()
    c = alone(health_router(), state)
    state.metrics.predictions.inc(5)
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "model_predictions_total 5.0" in r.text
    assert 'model_info{name="digits",uri="/models/digits",version="1"} 1.0' in r.text
    api = c.app.openapi()
    assert list(api["paths"]) == ["/health", "/metrics"]
    assert "text/plain" in api["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_create_app_is_the_routers_on_one_state(model):
    app = create_app(model, optimize=False)
    with TestClient(app) as c:
        state = app.state.service
        assert isinstance(state, ServiceState)
        assert (app.state.metrics, app.state.serving, app.state.store, app.state.follower) == (
            state.metrics,
            state.serving,
            state.store,
            None,
        )
        c.post("/predict", json={"image": image_of(4)})
        assert metric(state, 'model_class_predictions_total{predicted_class="4"}') == 1
        assert metric(state, 'http_requests_total{handler="/predict",method="POST",status="2xx"}') == 1
        api = c.get("/openapi.json").json()
    assert list(api["paths"]) == ["/predict", "/feedback", "/health", "/metrics"]
    for router in (predict_router(state.api), feedback_router(state.api), health_router()):
        for path, ops in alone(router, state).app.openapi()["paths"].items():
            assert api["paths"][path] == ops, path  # the app declares each route as its router alone does
    assert not state.store.path.exists()  # the app's own store went with it
