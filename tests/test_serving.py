"""Exercise 6: the model service, its metrics, and the monitoring stack (Prometheus, alert rules, Grafana, compose).

Tests that need Prometheus (`prometheus`, `promtool`: Debian's `prometheus` package) skip with a
reason when it is absent, except where MLOPS_REQUIRE_PROMETHEUS=1 (set by .ci/run): there they fail.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from paths import ROOT, TINY_CONFIG

from mlops_day28.config import load_config
from mlops_day28.data import InputProfile
from mlops_day28.models import ARCHITECTURES, build_model
from mlops_day28.registry import ModelLoadError
from mlops_day28.reliability.processes import free_port
from mlops_day28.serve.app import create_app
from mlops_day28.serve.dashboard import dashboard_series, emulate_alert, histogram_quantile
from mlops_day28.serve.drift import PixelDrift, drifted
from mlops_day28.serve.payloads import INVALID_REASONS
from mlops_day28.serve.prometheus import (
    prometheus_get,
    scrape,
    send_traffic,
    start_prometheus,
    start_service,
)
from mlops_day28.serve.served_model import load_served_model
from mlops_day28.tracking import save_torch_model
from mlops_day28.training import prepare_training

MON = ROOT / "monitoring"


def need(tool):
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("MLOPS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{tool} is required here (MLOPS_REQUIRE_PROMETHEUS=1) but not installed")
        pytest.skip(f"{tool} is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return path


@pytest.fixture(scope="module")
def cfg():
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="module")
def model_dir(cfg, tmp_path_factory):
    "The tiny config's model, trained and saved as an MLflow model folder (pt2), as CI exports it."
    job = prepare_training(cfg)
    job.fit(progress=False)
    path = tmp_path_factory.mktemp("served") / "model"
    save_torch_model(
        job.model, job.splits.train.X[:5], path, InputProfile.from_training(job.dataset, job.splits.train.X)
    )
    return path, job


@pytest.fixture(scope="module")
def bare_model(model_dir, tmp_path_factory):
    "The same model saved without an input profile, as models were logged before the profile existed."
    _, job = model_dir
    return save_torch_model(job.model, job.splits.train.X[:5], tmp_path_factory.mktemp("bare") / "model")


@pytest.fixture(scope="module")
def app(cfg, model_dir):
    return create_app(load_served_model(str(model_dir[0])), cfg)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def invalid_counts(client):
    text = client.get("/metrics").text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'model_invalid_requests_total\{reason="(\w+)"\} (\S+)', text)
    }


def test_predict_one_and_a_batch(client, model_dir):
    _, job = model_dir
    X, y = job.splits.test.X, job.splits.test.y
    one = client.post("/predict", json={"image": X[0].reshape(8, 8).tolist()})
    assert one.status_code == 200
    body = one.json()
    assert body["model_version"] == "local" and len(body["predictions"]) == 1
    p = body["predictions"][0]
    assert set(p) == {"prediction_id", "predicted_class", "label", "probabilities"}
    assert abs(sum(p["probabilities"]) - 1) < 1e-4 and p["predicted_class"] == int(np.argmax(p["probabilities"]))
    batch = client.post("/predict", json={"images": X[:100].tolist()}).json()["predictions"]
    accuracy = np.mean([q["predicted_class"] == t for q, t in zip(batch, y[:100], strict=False)])
    assert accuracy > 0.9
    assert len({q["prediction_id"] for q in batch}) == 100
    mixed = client.post("/predict", json={"images": [X[0].tolist(), X[0].reshape(8, 8).tolist()]})  # a fuzzer's 500
    assert mixed.status_code == 200 and len({p["predicted_class"] for p in mixed.json()["predictions"]}) == 1


X0 = [0.0] * 64
MALFORMED = {
    "wrong length": (json.dumps({"image": X0[:10]}), 422, "shape"),
    "8x7": (json.dumps({"image": [[0.0] * 7] * 8}), 422, "shape"),
    "ragged": (json.dumps({"image": [[0.0] * 8] * 7 + [[0.0] * 3]}), 422, "shape"),
    "3-d": (json.dumps({"image": [[[0.0] * 8] * 8]}), 422, "shape"),
    "too bright": (json.dumps({"image": [17.0, *X0[1:]]}), 422, "out_of_range"),
    "negative": (json.dumps({"image": [-0.5, *X0[1:]]}), 422, "out_of_range"),
    "NaN": ('{"image": [NaN' + ", 0" * 63 + "]}", 422, "not_finite"),
    "Infinity": ('{"image": [Infinity' + ", 0" * 63 + "]}", 422, "not_finite"),
    "strings": (json.dumps({"image": ["x"] * 64}), 422, "type"),
    "booleans": (json.dumps({"image": [True] * 64}), 422, "type"),
    "null image": (json.dumps({"image": None}), 422, "type"),
    "object image": (json.dumps({"image": {"a": 1}}), 422, "type"),
    "images not a list": (json.dumps({"images": 5}), 422, "type"),
    "empty batch": (json.dumps({"images": []}), 422, "empty_batch"),
    "oversized batch": (json.dumps({"images": [X0] * 257}), 413, "batch_too_large"),
    "not JSON": ("{image: nope", 400, "not_json"),
    "binary garbage": (b"\xff\xfe\x00".decode("latin-1"), 400, "not_json"),
    "empty body": ("", 400, "not_json"),
    "JSON list": (json.dumps([X0]), 422, "bad_field"),
    "both fields": (json.dumps({"image": X0, "images": [X0]}), 422, "bad_field"),
    "no field": (json.dumps({}), 422, "bad_field"),
    "extra field": (json.dumps({"image": X0, "debug": True}), 422, "bad_field"),
    "nested 5000 deep": ("[" * 5000, 400, "too_deep"),  # json.loads: RecursionError, and a 500 before
    "over 1 MB": ("[" + "0," * 600_000 + "0]", 413, "body_too_large"),  # serving.max_body_bytes
}


def test_malformed_requests_are_4xx_counted_and_the_service_keeps_serving(client):
    before = invalid_counts(client)
    expected = dict.fromkeys(INVALID_REASONS, 0)
    for what, (body, status, reason) in MALFORMED.items():
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.json()["reason"] == reason and r.json()["detail"], what
        expected[reason] += 1
    after = invalid_counts(client)
    assert {k: after[k] - before[k] for k in INVALID_REASONS} == expected
    assert client.post("/predict", json={"image": X0}).status_code == 200
    assert client.get("/health").json()["model_loaded"] is True
    assert 'status="5xx"' not in client.get("/metrics").text


def test_messages_name_the_problem(client):
    r = client.post("/predict", json={"images": [X0, X0[:-1]]})
    assert r.json()["detail"] == "images[1]: expected 64 values or 8x8, got shape (63,)"
    r = client.post("/predict", json={"image": [20.0, *X0[1:]]})
    assert r.json()["detail"] == "image: pixel values must be between 0 and 16, got 0 to 20"


def test_feedback_rolling_accuracy_and_its_errors(cfg, model_dir):
    _, job = model_dir
    small = cfg.model_copy(
        update={"serving": cfg.serving.model_copy(update={"accuracy_window": 4, "feedback_within": 60})}
    )
    c = TestClient(create_app(load_served_model(str(model_dir[0])), small))
    preds = c.post("/predict", json={"images": job.splits.test.X[:6].tolist()}).json()["predictions"]
    made, predicted, rest = preds[0]["prediction_id"].split("-", 2)
    forged = f"{made}-{(int(predicted) + 1) % 10}-{rest}"  # claims another class: the signature no longer fits
    r = c.post("/feedback", json={"prediction_id": forged, "label": 1})
    assert r.status_code == 404 and r.json()["detail"] == f"unknown prediction_id {forged!r}"
    store = c.app.state.store
    old = f"{int(time.time()) - 61:x}-{predicted}-{rest.split('-')[0]}"
    r = c.post("/feedback", json={"prediction_id": f"{old}-{store._sign(old)}", "label": 1})
    assert r.status_code == 404 and "older than 60 s (serving.feedback_within)" in r.json()["detail"]
    results = []
    for p in preds[1:]:
        wrong = (p["predicted_class"] + 1) % 10
        label = p["predicted_class"] if len(results) < 2 else wrong
        results.append(c.post("/feedback", json={"prediction_id": p["prediction_id"], "label": label}).json())
    assert [r["window"] for r in results] == [1, 2, 3, 4, 4]
    assert results[-1]["rolling_accuracy"] == 0.25  # window of 4: one right, three wrong
    assert "model_accuracy 0.25" in c.get("/metrics").text
    again = c.post("/feedback", json={"prediction_id": preds[1]["prediction_id"], "label": 0})
    assert again.status_code == 409
    for body, status in [
        ({"prediction_id": preds[1]["prediction_id"], "label": 10}, 422),
        ({"prediction_id": preds[1]["prediction_id"], "label": True}, 422),
        ({"prediction_id": 5, "label": 1}, 422),
        ({"label": 1}, 422),
    ]:
        assert c.post("/feedback", json=body).status_code == status
    assert c.post("/feedback", content="nope").status_code == 400


def test_a_store_that_cannot_write_is_a_503_naming_the_cause_and_predictions_go_on(cfg, model_dir, capfd):
    c = TestClient(create_app(load_served_model(str(model_dir[0])), cfg))
    before = invalid_counts(c)
    pid = c.post("/predict", json={"image": X0}).json()["predictions"][0]["prediction_id"]
    c.app.state.store._db.execute("PRAGMA query_only = ON")  # SQLite refuses writes, as on a read-only file
    r = c.post("/feedback", json={"prediction_id": pid, "label": 1})
    assert r.status_code == 503 and r.json() == {
        "detail": "the feedback store cannot record labels now (attempt to write a readonly database); send it again later",
        "reason": "feedback_store_unavailable",
    }
    assert c.post("/predict", json={"image": X0}).status_code == 200  # predictions never touch the store
    assert invalid_counts(c) == before  # not the client's fault: no invalid request counted
    assert 'handler="/feedback",method="POST",status="5xx"' in c.get("/metrics").text  # a server error, for the alert
    c.app.state.store._db.execute("PRAGMA query_only = OFF")
    assert c.post("/feedback", json={"prediction_id": pid, "label": 1}).status_code == 200  # and it recovers
    assert "Traceback" not in capfd.readouterr().err


def test_docs_pages_load_their_scripts_from_the_service(client):
    for page, assets in {
        "/docs": ("swagger-ui-bundle.js", "swagger-ui.css"),
        "/redoc": ("redoc.standalone.js",),
    }.items():
        html = client.get(page).text
        assert "https://" not in html, page  # no CDN, no web font, no remote icon
        for asset in (*assets, "favicon.png"):
            assert (
                f"/static-offline-docs/{asset}" in html
                and client.get(f"/static-offline-docs/{asset}").status_code == 200
            )


def test_drift_gauge_rises_on_drifted_inputs(cfg, model_dir):
    _, job = model_dir
    c = TestClient(create_app(load_served_model(str(model_dir[0])), cfg))
    c.post("/predict", json={"images": job.splits.test.X[:200].tolist()})
    normal = float(re.search(r"^model_input_drift_psi (\S+)", c.get("/metrics").text, re.M).group(1))
    c.post("/predict", json={"images": drifted(job.splits.test.X[:256]).tolist()})
    shifted = float(re.search(r"^model_input_drift_psi (\S+)", c.get("/metrics").text, re.M).group(1))
    assert normal < 0.1 and shifted > 0.2


def test_pixel_drift_window_forgets_old_images(model_dir):
    _, job = model_dir
    d = PixelDrift(InputProfile.from_training(job.dataset, job.splits.train.X), window=50)
    assert d.psi() == 0.0
    d.update(drifted(job.splits.test.X[:50]))
    assert d.psi() > 0.2
    d.update(job.splits.test.X[:50])  # the window now holds only normal images
    assert d.psi() < 0.1 and len(d) == 50


def test_histogram_quantile_and_alert_emulation():
    assert histogram_quantile(0.5, {0.01: 5, 0.1: 10, float("inf"): 10}) == pytest.approx(0.01)
    assert np.isnan(histogram_quantile(0.5, {0.1: 0, float("inf"): 0}))
    t = np.arange(0, 20, 1.0)
    v = np.where(t >= 5, 0.5, 0.0)
    states = emulate_alert(t, v, 0.2, 10)
    assert states[:5] == ["inactive"] * 5 and states[5:15] == ["pending"] * 10 and states[15:] == ["firing"] * 5


def test_metrics_pass_promtool_check(client):
    promtool = need("promtool")
    client.post("/predict", json={"image": X0})
    r = subprocess.run(
        [promtool, "check", "metrics"], input=client.get("/metrics").text, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


PROMQL_WORDS = {
    "sum",
    "rate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "topk",
    "avg",
    "max",
    "min",
    "count",
    "le",
    "bool",
    "offset",
}


def promql_metrics(expr: str) -> set[str]:
    "Metric names an expression reads: identifiers that are not functions, keywords, label names or values."
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*", n)}


def test_every_metric_the_dashboard_and_alerts_query_is_exported(client):
    exprs = [r["expr"] for g in yaml.safe_load((MON / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads((MON / "grafana" / "dashboards" / "model_service.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = set().union(*map(promql_metrics, exprs))
    assert {
        "model_input_drift_psi",
        "model_feedback_total",  # accuracy, from the counters: right across replicas
        "http_requests_total",
        "model_prediction_latency_seconds_bucket",
    } <= queried
    client.post("/predict", json={"image": X0})
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", client.get("/metrics").text, re.M))
    assert queried <= exported, f"queried but not exported: {sorted(queried - exported)}"


def test_grafana_provisioning_points_at_the_dashboard_and_datasource():
    source = yaml.safe_load((MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ][0]
    dashboard = json.loads((MON / "grafana" / "dashboards" / "model_service.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("request rate", "latency", "class", "accuracy", "drift"):
        assert topic in titles
    compose = yaml.safe_load((MON / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"model-service", "prometheus", "grafana"}
    mounts = " ".join(compose["services"]["grafana"]["volumes"])
    assert "./grafana/provisioning" in mounts and "./grafana/dashboards" in mounts


@pytest.mark.slow  # check-jsonschema loads the compose spec: seconds
def test_compose_file_matches_the_compose_spec():
    r = subprocess.run(
        [
            Path(sys.executable).parent / "check-jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            MON / "docker-compose.yml",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_finds_the_replicas_in_its_targets_file():
    "monitoring/prometheus.yml scrapes every host:port listed in targets/ (file-based discovery: add a replica, no restart)."
    config = yaml.safe_load((MON / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (files,) = [sd["files"] for sd in job["file_sd_configs"]]
    groups = [g for f in files for g in yaml.safe_load((MON / f).read_text())]
    assert groups and all(g["targets"] and all(":" in t for t in g["targets"]) for g in groups)
    assert "127.0.0.1:8000" in groups[0]["targets"]  # what `make serve` listens on


def test_promtool_checks_configs_and_rules():
    promtool = need("promtool")
    for config in (MON / "prometheus.yml", MON / "compose" / "prometheus.yml"):
        r = subprocess.run(
            [promtool, "check", "config", "--syntax-only", config], capture_output=True, text=True, cwd=MON
        )
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "check", "rules", "alerts.yml"], capture_output=True, text=True, cwd=MON)
    assert r.returncode == 0 and "SUCCESS: 5 rules found" in r.stdout, r.stdout + r.stderr


def test_alert_rule_unit_tests_pass():
    r = subprocess.run([need("promtool"), "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=MON)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    rules = {r["alert"] for g in yaml.safe_load((MON / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tested = (MON / "alerts_test.yml").read_text()
    for alert in rules:
        assert tested.count(f"alertname: {alert}") >= 2, f"{alert}: test it firing and not firing"


def test_alert_rule_tests_can_fail(tmp_path):
    broken = (MON / "alerts_test.yml").read_text().replace("values: '0.35x20'", "values: '0.05x20'")
    (tmp_path / "alerts.yml").write_text((MON / "alerts.yml").read_text())
    (tmp_path / "alerts_test.yml").write_text(broken)
    r = subprocess.run(
        [need("promtool"), "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode != 0 and "ModelInputDrift" in r.stdout + r.stderr


@pytest.mark.server
@pytest.mark.slow
def test_real_service_scraped_by_a_real_prometheus(cfg, model_dir):
    need("prometheus")
    path, job = model_dir
    service = start_service(TINY_CONFIG, free_port(), model_uri=str(path))
    prometheus = None
    try:
        prometheus = start_prometheus([service.url.removeprefix("http://")], [MON / "alerts.yml"])
        samples = []
        sent = send_traffic(service.url, job.splits.test.X, job.splits.test.y, 3, samples=samples)
        time.sleep(2.5)  # two more scrapes
        served = scrape(service.url)["model_predictions_total"]
        assert served == 8 * sent
        result = prometheus_get(prometheus.url, "/api/v1/query", query="model_predictions_total")["result"]
        assert float(result[0]["value"][1]) == served
        rules = prometheus_get(prometheus.url, "/api/v1/rules")["groups"][0]["rules"]
        assert sorted(r["name"] for r in rules) == sorted(
            [
                "ModelAccuracyLow",
                "ModelHighErrorRate",
                "ModelHighLatencyP95",
                "ModelInputDrift",
                "ModelManyInvalidRequests",
            ]
        )
        assert all(r["health"] == "ok" for r in rules)
        series = dashboard_series(samples)
        assert np.nanmax(series["request_rate"]) > 1 and np.all(series["drift"] < 0.2)
    finally:
        if prometheus:
            prometheus.stop()
        service.stop()
    assert service.popen.poll() is not None and (prometheus is None or prometheus.popen.poll() is not None)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{service.url}/health")


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_is_served_by_the_torchscript_fast_path(cfg, model_dir, tmp_path, architecture):
    _, job = model_dir
    X = job.splits.train.X
    model = build_model(cfg.model.model_copy(update={"architecture": architecture}), X, job.dataset.image_shape)
    folder = save_torch_model(model, X[:5], tmp_path / "model", InputProfile.from_training(job.dataset, X))
    c = TestClient(create_app(load_served_model(folder), cfg))
    health = c.get("/health").json()
    assert (health["inference"], health["inference_note"]) == ("torchscript", ""), health


def test_a_model_that_cannot_be_traced_is_served_eagerly_and_says_why(model_dir, caplog):
    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x[:, :10] if x.shape[0] > 3 else x[:, :10] * 2  # tracing keeps one branch

    served = load_served_model(str(model_dir[0]))
    slow = type(served)(Branchy(), served.name, served.version, served.uri, served.profile).optimized()
    assert slow.inference == "eager" and "answers differently for a batch of 7" in slow.note
    assert any("as loaded, about 3x slower" in r.getMessage() for r in caplog.records)


def test_the_service_needs_no_training_data(cfg, model_dir, tmp_path):
    path, job = model_dir
    nodata = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset_path": str(tmp_path / "gone.csv")})})
    served = load_served_model(str(path), nodata)
    assert served.data_check == "no training data to compare with: the profile logged with the model is used"
    c = TestClient(create_app(served, nodata))
    r = c.post("/predict", json={"images": job.splits.test.X[:20].tolist()})
    assert r.status_code == 200
    assert [p["label"] for p in r.json()["predictions"]] == [str(p["predicted_class"]) for p in r.json()["predictions"]]
    matching = load_served_model(str(path), cfg)
    assert matching.data_check.startswith("the config's data is the model's training data")


def test_a_model_without_a_profile_needs_its_own_data(cfg, model_dir, bare_model, tmp_path):
    _, job = model_dir
    bare = bare_model
    served = load_served_model(bare, cfg)
    assert served.profile == InputProfile.from_training(job.dataset, job.splits.train.X)
    other = tmp_path / "other.csv"
    other.write_text((ROOT / "data" / "digits.csv").read_text().replace("\n0,", "\n1,", 1))
    elsewhere = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset_path": str(other)})})
    served = load_served_model(bare, elsewhere)  # a folder records no digest to compare with
    assert served.profile.dataset_digest != job.dataset.digest
    with pytest.raises(ModelLoadError, match="logged without an input profile"):
        load_served_model(bare)


def test_a_logged_model_without_a_profile_is_checked_against_its_data_digest(
    tracking_uri, cfg, model_dir, bare_model, tmp_path
):
    _, job = model_dir
    mlflow.set_experiment("tests_serving")
    bare = bare_model
    with mlflow.start_run() as run:
        mlflow.log_param("dataset_digest", job.dataset.digest)
        mlflow.log_artifacts(bare, "model")
    uri = f"runs:/{run.info.run_id}/model"
    assert (
        load_served_model(uri, cfg).data_check == "made from the config's data (the model was logged without a profile)"
    )
    other = tmp_path / "other.csv"
    other.write_text((ROOT / "data" / "digits.csv").read_text().replace("\n0,", "\n1,", 1))
    elsewhere = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset_path": str(other)})})
    with pytest.raises(ModelLoadError, match=f"was trained on data sha256 {job.dataset.digest[:12]}"):
        load_served_model(uri, elsewhere)
