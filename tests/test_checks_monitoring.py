"""Exercise 6's checks (checks_monitoring): what they accept and what they refuse, without a kernel."""

import shutil
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
    your_families,
)

ROOT = Path(__file__).resolve().parents[1]
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
