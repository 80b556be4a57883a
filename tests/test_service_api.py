"""The model service's declared API (nbs/serve/01_payloads, 06_monitoring), held to it from outside.

A real `mlops-serve` process: schemathesis generates requests from its OpenAPI schema
(`--checks all`: no 5xx, only documented statuses and content types, schema-valid requests
accepted, schema-invalid ones refused, responses that match their schemas) and finds
nothing; bodies over the limit get 413 before they are sent in full; JSON nested too
deeply gets 400; and the service still answers afterwards. Its /docs and /redoc render
every operation in headless Chromium with no network but the service's own address
(Debian's `chromium`: skipped when absent, except where MLOPS_REQUIRE_CHROMIUM=1, set by
.ci/run: there it fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from paths import TINY_CONFIG

from mlops_day28.config import load_config
from mlops_day28.data import InputProfile
from mlops_day28.reliability.processes import free_port
from mlops_day28.serve.prometheus import start_service
from mlops_day28.tracking import save_torch_model
from mlops_day28.training import prepare_training

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    "`mlops-serve` of the tiny config's model (a folder, as CI exports it), stopped by process id afterwards."
    job = prepare_training(load_config(TINY_CONFIG))
    job.fit(progress=False)
    path = tmp_path_factory.mktemp("served") / "model"
    save_torch_model(
        job.model, job.splits.train.X[:5], path, InputProfile.from_training(job.dataset, job.splits.train.X)
    )
    proc = start_service(TINY_CONFIG, free_port(), model_uri=str(path))
    try:
        yield proc
    finally:
        proc.stop()
    assert proc.popen.poll() is not None


def test_every_route_declares_its_body_statuses_and_an_example(service):
    api = httpx.get(f"{service.url}/openapi.json").json()
    declared = {route: sorted(op["responses"]) for route, ops in api["paths"].items() for op in ops.values()}
    assert declared["/predict"] == ["200", "400", "413", "422"]
    assert declared["/feedback"] == ["200", "400", "404", "409", "413", "422", "503"]  # 503: the store cannot write
    for route in ("/predict", "/feedback"):
        body = api["paths"][route]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["additionalProperties"] is False and body["example"], route
        example = httpx.post(f"{service.url}{route}", json=body["example"])
        assert example.status_code == (200 if route == "/predict" else 404), example.text  # no such id: documented
    assert "text/plain" in api["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    image = api["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    pixel = image["properties"]["image"]["anyOf"][0]["items"]
    assert (pixel["minimum"], pixel["maximum"]) == (0.0, 16.0)  # the model's own range, from its input profile


def test_a_schema_driven_fuzzer_finds_nothing(service, tmp_path):
    st = Path(sys.executable).parent / "st"
    out = subprocess.run(
        [str(st), "run", f"{service.url}/openapi.json", "--checks", "all", "--max-examples", "30", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis writes its cassettes and reports where it runs
    )
    assert out.returncode == 0, out.stdout[-4000:]
    assert "No issues found" in out.stdout
    assert httpx.get(f"{service.url}/health").json()["model_loaded"] is True


def _raw_post(url: str, headers: str, body: bytes) -> tuple[int, dict, int]:
    "POST over a plain socket, 64 KB at a time, until the service answers: (status, JSON body, bytes it was sent)."
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}\r\n".encode())
        sent = 0
        while sent < len(body) and not select.select([s], [], [], 0.05)[0]:  # stop as soon as an answer waits
            s.sendall(body[sent : sent + 65536])
            sent += 65536
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # it closes the connection after a 413
            while chunk := s.recv(65536):
                answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload), min(sent, len(body))


def test_a_50_mb_body_gets_413_before_it_is_sent(service):
    status, body, sent = _raw_post(service.url, f"Content-Length: {50 * 2**20}\r\n", b"[" * 50 * 2**20)
    assert status == 413 and body["reason"] == "body_too_large" and "at most 1048576" in body["detail"]
    assert sent < 2 * 2**20, sent  # answered from the header: the client stopped long before 50 MB
    chunks = b"".join(b"%x\r\n%s\r\n" % (65536, b"1" * 65536) for _ in range(800))  # 50 MB streamed, no length
    status, body, sent = _raw_post(service.url, "Transfer-Encoding: chunked\r\n", chunks)
    assert status == 413 and body["reason"] == "body_too_large" and "more than" in body["detail"]
    assert sent < 4 * 2**20, sent  # refused once the chunks read passed 1 MB


def test_deep_nesting_is_400_and_the_service_keeps_answering(service):
    for depth in (5000, 150):
        r = httpx.post(f"{service.url}/predict", content="[" * depth + "]" * depth)
        assert 400 <= r.status_code < 500, r.text
    assert httpx.post(f"{service.url}/predict", content="[" * 5000).json()["reason"] == "too_deep"
    assert httpx.post(f"{service.url}/predict", json={"image": [0.0] * 64}).status_code == 200
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'model_invalid_requests_total{reason="too_deep"} 2.0' in metrics
    assert 'status="5xx"' not in metrics


def chromium() -> str:
    "Debian's headless-capable Chromium; skipped when absent, failed where MLOPS_REQUIRE_CHROMIUM=1."
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MLOPS_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required here (MLOPS_REQUIRE_CHROMIUM=1) but not installed")
        pytest.skip("chromium is not installed (Debian/Ubuntu: apt-get install chromium)")
    return path


def rendered(url: str, profile: Path) -> str:
    "The DOM of `url` after its scripts ran, in headless Chromium that can reach 127.0.0.1 and nothing else."
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    flags += " --disable-component-update --disable-sync --virtual-time-budget=15000"
    cmd = [
        chromium(),
        *flags.split(),
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]
    out = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_docs_and_redoc_render_every_operation_offline(service, tmp_path):
    docs = rendered(f"{service.url}/docs", tmp_path / "chromium")
    assert "cdn.jsdelivr.net" not in docs and "fastapi.tiangolo.com" not in docs  # scripts, styles, icon: the package's
    rendered_paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', docs))
    assert {"/predict", "/feedback", "/health", "/metrics"} <= rendered_paths, rendered_paths  # Swagger UI ran
    redoc = rendered(f"{service.url}/redoc", tmp_path / "chromium")
    assert "cdn.jsdelivr.net" not in redoc and "fonts.googleapis.com" not in redoc
    operations = set(re.findall(r'data-section-id="operation/([a-z_]+)"', redoc))
    assert {"predict_predict_post", "feedback_feedback_post"} <= operations, operations  # ReDoc ran
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert httpx.get(f"{service.url}/static-offline-docs/{asset}").status_code == 200, asset
