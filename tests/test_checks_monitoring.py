"""Exercise 6's checks (checks_monitoring): what they accept and what they refuse, without a kernel."""

import shutil
import time
import uuid

import pytest
from fastapi import FastAPI
from paths import ROOT
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator

from mlops_day28.serve.background import serve_in_background
from mlops_day28.workbook import checks_monitoring as cm
from mlops_day28.workbook import tasks as exercises
from mlops_day28.workbook.checks_monitoring import (
    ALERTS_FILE,
    ALERTS_TEST,
    METRICS_FILE,
    alert_results,
    checklist,
    metric_results,
    q1,
    q2,
    q3,
    q4,
    q5,
    reveal_prediction,
    suggest_buckets,
    your_families,
)

REAL_PROMETHEUS_FOR = cm._prometheus_for
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="Prometheus is not installed")

RULES = """groups:
- name: mine
  rules:
  - alert: SlowModel
    expr: histogram_quantile(0.95, sum(rate(my_latency_seconds_bucket[1m])) by (le)) > 0.005
    for: 2m
"""
TEST = """rule_files: [my_alerts.yml]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  - series: 'my_latency_seconds_bucket{le="0.01"}'
    values: '0+0x10'
  - series: 'my_latency_seconds_bucket{le="+Inf"}'
    values: '0+10x10'
  alert_rule_test:
  - eval_time: 5m
    alertname: SlowModel
    exp_alerts: [{exp_labels: {}}]
"""


def metrics(*, labelled: bool = True, requests: int = 3) -> str:
    r = CollectorRegistry()
    Counter("my_predictions_total", "Predictions.", registry=r).inc(requests)
    h = Histogram("my_latency_seconds", "Latency.", buckets=(0.001, 0.01), registry=r)
    for _ in range(requests):
        h.observe(0.0005)
    Gauge("my_accuracy", "Accuracy.", registry=r).set(0.95)
    if labelled:
        Counter("my_classes", "By class.", ["predicted_class"], registry=r).labels(predicted_class="3").inc()
    return generate_latest(r).decode() + "# TYPE http_requests_total counter\nhttp_requests_total 3.0\n"


@pytest.fixture
def folder(monkeypatch):
    "A notebook folder inside the project (as the learner's is), declared as this process's notebook's."
    d = ROOT / ".workbook" / f"tmp-checks-monitoring-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    monkeypatch.setattr(exercises, "_NOTEBOOK", None)
    monkeypatch.chdir(ROOT)
    exercises.this_notebook("06_monitoring.ipynb", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_four_kinds_are_found_and_the_instrumentators_are_not_yours():
    assert all(r.ok for r in metric_results(metrics()))
    assert set(your_families(metrics())) == {"my_predictions", "my_latency_seconds", "my_accuracy", "my_classes"}


def test_a_counter_without_labels_or_without_requests_is_refused():
    assert [r.ok for r in metric_results(metrics(labelled=False))] == [True, True, True, False, True]
    assert not list(metric_results(metrics(requests=0)))[-1].ok
    assert not any(r.ok for r in metric_results(""))


def test_every_check_fails_with_a_hint_when_nothing_was_done(folder):
    for q in (q1, q2, q3):
        results = q.results()
        assert results and not any(r.ok for r in results) and all(r.hint for r in results), results
    results = list(checklist())
    assert not any(r.ok for r in results) and all(r.hint for r in results), results


@needs_promtool
def test_an_alert_rule_and_its_unit_test_pass_promtool(folder):
    (folder / METRICS_FILE).write_text(metrics())
    (folder / ALERTS_FILE).write_text(RULES)
    (folder / ALERTS_TEST).write_text(TEST)
    results = list(checklist())
    assert all(r.ok for r in results), "\n".join(map(str, results))


@needs_promtool
def test_a_unit_test_that_expects_the_wrong_thing_fails(folder):
    (folder / ALERTS_FILE).write_text(RULES)
    (folder / ALERTS_TEST).write_text(TEST.replace("eval_time: 5m", "eval_time: 1m"))  # still pending at 1m
    last = list(alert_results(folder))[-1]
    assert not last.ok and "promtool test rules" in last.what


@needs_promtool
def test_a_rule_promtool_refuses_is_a_cross(folder):
    (folder / ALERTS_FILE).write_text(RULES.replace("> 0.005", "> > 0.005"))
    results = list(alert_results(folder))
    assert any(not r.ok and "promtool check rules" in r.what for r in results), results


def learner_app(buckets, *, seconds: float = 0.002, observe: bool = True) -> FastAPI:
    "Task 1 as a learner writes it: the four metrics, the Instrumentator, a /predict that takes `seconds`."
    r = CollectorRegistry()
    count = Counter("my_predictions_total", "Predictions.", registry=r)
    latency = Histogram("my_latency_seconds", "Latency.", buckets=buckets, registry=r)
    Gauge("my_accuracy", "Accuracy.", registry=r).set(0.95)
    by_class = Counter("my_classes_total", "By class.", ["predicted_class"], registry=r)
    app = FastAPI()
    Instrumentator(registry=r).instrument(app).expose(app)

    @app.post("/predict")
    def predict(data: dict):
        start = time.perf_counter()
        time.sleep(seconds)
        if observe:
            latency.observe(time.perf_counter() - start)
        count.inc()
        by_class.labels(predicted_class=str(len(data.get("image", [])) % 10)).inc()
        return {"predicted_class": 4}

    return app


GOOD_QUERY = "histogram_quantile(0.95, sum(rate(my_latency_seconds_bucket[1m])) by (le))"


@pytest.fixture
def learner(folder, monkeypatch):
    "The learner's notebook variables (a dict), and a function that serves an app as `my_url`; no Prometheus."
    variables, served = {}, []

    def variable(name):
        if name not in variables:
            raise NameError(name)
        return variables[name]

    def serve(app):
        served.append(url := serve_in_background(app, name=f"test-{uuid.uuid4().hex[:6]}"))
        variables["my_url"] = url
        return url

    monkeypatch.setattr(cm, "learner_variable", variable)
    monkeypatch.setattr(cm, "_prometheus_for", lambda url: None)  # as where Prometheus is not installed
    yield variables, serve
    for url in served:
        url.stop()


def by_start(results, start: str):
    found = [r for r in results if r.what.startswith(start)]
    assert len(found) == 1, (start, results)
    return found[0]


BUCKET_LINES = (
    "my_latency_seconds resolves your latencies",
    "a bucket bound above the mean",
    "the median lies above your first bucket",
)


@pytest.mark.parametrize(
    "buckets, expected",
    [
        (Histogram.DEFAULT_BUCKETS, [False, True, False]),  # prometheus_client's: the first bucket is 5 ms
        ((10, 20), [False, False, False]),  # buckets of 10 s and 20 s
        ((0.0001, 0.0002, 0.0005, 1.0), [True, False, True]),  # fine below 2 ms, then nothing up to 1 s
        (suggest_buckets(0.002, 0.004), [True, True, True]),
    ],
)
def test_q1_measures_the_latencies_and_wants_buckets_that_resolve_them(learner, buckets, expected):
    _, serve = learner
    serve(learner_app(buckets))
    results = q1.results()
    got = [by_start(results, line) for line in BUCKET_LINES]
    assert [r.ok for r in got] == expected, results
    assert "30 requests" in got[0].what and " ms on average" in got[0].what, got[0]
    assert all("buckets=(" in r.hint for r in got if not r.ok), got


def test_q1_a_histogram_that_observes_nothing_is_a_cross(learner):
    _, serve = learner
    serve(learner_app(suggest_buckets(0.002, 0.004), observe=False))
    r = by_start(q1.results(), "my_latency_seconds observes each /predict")
    assert not r.ok and "the check sent 30, it observed 0" in r.what and ".observe(seconds)" in r.hint


@pytest.fixture
def short_traffic(monkeypatch):
    "The check's traffic for 0.3 s rather than 1.5 (without Prometheus, two scrapes around it are all it needs)."
    traffic = cm._traffic
    monkeypatch.setattr(cm, "_traffic", lambda url, seconds=0.3, n=None: traffic(url, seconds, n))


@pytest.mark.parametrize(
    "query, wrong",
    [
        ("histogram_quantile(0.95, sum(my_latency_seconds_bucket) by (le))", "rate() of the buckets"),  # no rate()
        ("histogram_quantile(0.95, sum(irate(my_latency_seconds_bucket[1m])) by (le))", "rate() of the buckets"),
        ("histogram_quantile(0.5, sum(rate(my_latency_seconds_bucket[1m])) by (le))", "histogram_quantile(0.95"),
        ("histogram_quantile(0.95, sum(rate(model_prediction_latency_seconds_bucket[1m])) by (le))", "histogram_q"),
    ],
)
def test_q2_wants_the_p95_of_your_buckets_through_rate_over_a_window(learner, short_traffic, query, wrong):
    variables, serve = learner
    serve(learner_app(suggest_buckets(0.002, 0.004)))
    variables["p95_query"] = query
    results = q2.results()
    assert not by_start(results, wrong).ok, results


def test_q2_without_prometheus_evaluates_the_query_itself_and_says_so(learner, short_traffic):
    variables, serve = learner
    serve(learner_app(suggest_buckets(0.002, 0.004)))
    variables["p95_query"] = GOOD_QUERY
    results = q2.results()
    assert all(r.ok for r in results), results
    assert any("Prometheus is not installed" in r.what and "histogram_quantile" in r.what for r in results)
    assert any(r.what.startswith("a p95 the model can have") for r in results), results


def test_q2_refuses_a_p95_that_coarse_buckets_make_up(learner, short_traffic):
    variables, serve = learner
    serve(learner_app((10, 20)))  # every observation under 10 s: histogram_quantile says 9.5 s
    variables["p95_query"] = GOOD_QUERY
    r = by_start(q2.results(), "a p95 the model can have")
    assert not r.ok and "9.5 s" in r.what and "Task 1's buckets" in r.hint, r


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed")
def test_q2_asks_a_real_prometheus_and_stops_it(learner, monkeypatch):
    variables, serve = learner
    monkeypatch.setattr(cm, "_prometheus_for", REAL_PROMETHEUS_FOR)
    serve(learner_app(suggest_buckets(0.002, 0.004)))
    variables["p95_query"] = GOOD_QUERY
    results = q2.results()
    assert all(r.ok for r in results), results
    assert any(r.what.startswith("it agrees with the expected query") for r in results), "\n".join(map(str, results))
    assert not any("not installed" in r.what for r in results) and cm._WATCHING == {}


def test_q4_wants_the_most_predicted_digit_read_off_your_scrape(learner, folder):
    variables, _ = learner
    r = CollectorRegistry()
    by_class = Counter("my_classes", "By class.", ["predicted_class"], registry=r)
    for digit, n in [("1", 9), ("7", 9), ("3", 4)]:
        by_class.labels(predicted_class=digit).inc(n)
    results = q4.results()
    assert [x.ok for x in results] == [False] and "Task 1" in results[0].hint  # no scrape saved yet
    (folder / METRICS_FILE).write_text(generate_latest(r).decode())
    for answer, expected in [
        (("7", 9), [True, True, True]),  # tied for the most: either digit is right
        ((1, 9.0), [True, True, True]),
        (("3", 4), [True, False, False]),  # the last line, not the largest
        (("1", 22), [True, True, False]),  # every prediction, not this digit's
        ("1", [False]),  # not a pair
    ]:
        variables["most_predicted"] = answer
        results = q4.results()
        assert [x.ok for x in results] == expected, (answer, results)
        assert all(x.hint for x in results if not x.ok)


def test_q5_records_a_prediction_that_names_an_alert(learner):
    variables, _ = learner
    cm.PREDICTIONS.clear()
    assert [x.ok for x in q5.results()] == [False]
    variables["first_alert"] = "drift"  # not the alert's name
    results = q5.results()
    assert [x.ok for x in results] == [False] and "ModelInputDrift" in results[0].hint and not cm.PREDICTIONS
    variables["first_alert"] = "ModelAccuracyLow"
    assert [x.ok for x in q5.results()] == [True]
    assert "You predicted ModelAccuracyLow (before the drifted traffic)" in reveal_prediction(
        "ModelInputDrift", time.time() + 1
    )
    cm.PREDICTIONS.clear()


@needs_promtool
def test_an_alert_on_a_metric_that_is_not_yours_is_a_cross(folder):
    (folder / METRICS_FILE).write_text(metrics())
    (folder / ALERTS_FILE).write_text(
        RULES.replace("my_latency_seconds_bucket", "model_prediction_latency_seconds_bucket")
    )
    r = next(r for r in alert_results(folder) if r.what.startswith("it watches a metric of yours"))
    assert not r.ok and "none of my_accuracy" in r.what, r
