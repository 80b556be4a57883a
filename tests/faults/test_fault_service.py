"""Faults of the model service (nbs/06_monitoring, serve/04_feedback_store, serve/03_http): real `mlops-serve` processes.

SIGTERM while requests are in flight on kept-alive connections: every request the service
received is answered, each connection ends with `Connection: close` after an answer, never
mid-request, and the command ends with one line and exit code 0, with one worker or two.
A full disk under the feedback store: 503 with a JSON body naming the cause, one log line
and no traceback, and the same connection's next /predict is answered. Headers trickled a
byte a second: cut off at the header timeout with 408. And every run leaves its temporary
folder as it found it, whether it ends with Ctrl-C or SIGTERM, or the notebook-like process
that launched the service and Prometheus ends or is sent SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from faultkit import wait_for
from paths import ROOT

from mlops_day28.config import load_config
from mlops_day28.data import InputProfile
from mlops_day28.reliability.processes import free_port, http_get, is_running, port_is_open
from mlops_day28.serve.http import HEADER_TIMEOUT
from mlops_day28.tracking import save_torch_model
from mlops_day28.training import prepare_training

pytestmark = [pytest.mark.server, pytest.mark.slow]
STOPPED = "mlops-serve stopped on {}: it answered the requests it had received and took no new ones"
TORCH_CACHE = f"torchinductor_{os.environ.get('USER') or 'root'}"  # torch makes it on import and reuses it: not a run's


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    "The tiny config's model as a folder, and test images."
    job = prepare_training(load_config(ROOT / "configs" / "tiny.yaml"))
    job.fit(progress=False)
    path = tmp_path_factory.mktemp("served") / "model"
    profile = InputProfile.from_training(job.dataset, job.splits.train.X)
    save_torch_model(job.model, job.splits.train.X[:5], path, profile)
    return str(path), job.splits.test.X


def serve(project, model_path: str, *args: str):
    "`mlops-serve` of `model_path` on a free port, in `project`, once it answers /health: (process, port)."
    port = free_port()
    proc = project.start(
        "mlops-serve", "--config", str(project.config()), "--model", model_path, "--port", str(port), *args
    )

    def up():
        assert proc.poll() is None, f"mlops-serve ended: {proc.communicate()}"
        return (http_get(f"http://127.0.0.1:{port}/health", timeout=2) or (0,))[0] == 200

    wait_for(up, 120, "mlops-serve answering /health")
    return proc, port


class Dropped(Exception):
    "The connection closed before a whole response came."


class Connection:
    "One kept-alive HTTP/1.1 connection, by hand, so the test knows what was sent when and what came back on it."

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def send(self, method: str, path: str, body: bytes = b"") -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Dropped(f"closed after {len(self.buffer)} bytes of a response")
        self.buffer += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        "The next response: status, headers (lower-case names), body."
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        self.send(method, path, body)
        return self.response()

    def close(self) -> None:
        self.sock.close()


def leftovers(folder: Path) -> list[str]:
    "What is in `folder` but torch's cache (which every process that imports torch makes there, and reuses)."
    return sorted(p.name for p in folder.iterdir() if p.name != TORCH_CACHE)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_every_request_it_received_and_ends_in_one_line(project, model, tmp_path, workers):
    path, X = model
    temp = tmp_path / "tmp"
    temp.mkdir()
    project.env["TMPDIR"] = str(temp)
    proc, port = serve(project, path, "--workers", str(workers))
    body = json.dumps({"images": X[:256].tolist()}).encode()  # a few ms each: requests queue behind each other
    conns = [Connection(port) for _ in range(8)]
    for c in conns:  # each accepted and kept alive
        assert c.request("POST", "/predict", body)[0] == 200
    answers: list[list[tuple[float, object, str]]] = [[] for _ in conns]  # (sent at, status or error, Connection)

    def client(i: int) -> None:  # half of them back to back, half pausing 20 ms between requests, as people do
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.02 * (i % 2))
            conns[i].send("POST", "/predict", body)
            sent = time.monotonic()
            try:
                status, headers, _ = conns[i].response()
            except (Dropped, OSError) as e:
                answers[i].append((sent, repr(e), ""))
                return
            answers[i].append((sent, status, headers.get("connection", "")))
            if headers.get("connection") == "close":
                return

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(conns))]
    for t in threads:
        t.start()
    wait_for(lambda: all(len(a) >= 3 for a in answers), 60, "every client answered 3 times")
    signalled = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    for t in threads:
        t.join(60)
    out, err = proc.communicate(timeout=60)
    for c in conns:
        c.close()

    received = [a for client_answers in answers for a in client_answers if a[0] < signalled]
    assert received and all(status == 200 for _, status, _ in received), received
    after = [a for client_answers in answers for a in client_answers if a[0] >= signalled]
    assert all(status == 200 for _, status, _ in after), after  # sent on a kept-alive connection during the drain
    assert all(a[-1][2] == "close" for a in answers), [a[-1] for a in answers]  # each ended after an answer
    assert proc.returncode == 0, (out, err)
    assert out.splitlines()[-1] == STOPPED.format("SIGTERM"), out
    assert "Traceback" not in err and "error:" not in err and " run " not in out + err, err
    assert not port_is_open(port)
    assert leftovers(temp) == []


def test_ctrl_c_ends_the_same_way(project, model, tmp_path):
    path, _ = model
    temp = tmp_path / "tmp"
    temp.mkdir()
    project.env["TMPDIR"] = str(temp)
    proc, port = serve(project, path)
    conn = Connection(port)
    assert conn.request("GET", "/health")[0] == 200
    proc.send_signal(signal.SIGINT)
    statuses, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:  # until the answer that closes it: each one answered, none dropped
        status, headers, _ = conn.request("GET", "/health")
        statuses.append(status)
        if headers.get("connection") == "close":
            break
        time.sleep(0.05)
    assert set(statuses) == {200} and headers.get("connection") == "close", statuses
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.splitlines()[-1] == STOPPED.format("SIGINT"), (out, err)
    assert "Traceback" not in err and "error:" not in err, err
    assert leftovers(temp) == []


def test_sigterm_while_it_starts_ends_in_one_line(project):
    "SIGTERM while it waits for a registry that does not answer (a server that accepts and says nothing)."
    silent = socket.create_server(("127.0.0.1", 0))
    project.env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        proc = project.start("mlops-serve", "--config", str(project.config()), "--model", "models:/any@champion")
        silent.settimeout(60)
        waiting, _ = silent.accept()  # it is asking: inside its start-up
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        waiting.close()
    finally:
        silent.close()
    assert proc.returncode == 0, (out, err)
    assert out.splitlines()[-1] == "mlops-serve stopped on SIGTERM before it served", out
    assert err == "", err


@pytest.fixture
def small_disk(project):
    "A 512 KB tmpfs for the feedback store (root can mount one; elsewhere: skipped, or failed under MLOPS_REQUIRE_FAULTS=1)."
    mnt = project.path / "store"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})"
        if os.environ.get("MLOPS_REQUIRE_FAULTS") == "1":
            pytest.fail(f"{why}, but MLOPS_REQUIRE_FAULTS=1 requires the disk-full tests")
        pytest.skip(why)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    "Write zeros to a file in `folder` until its file system is full."
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def test_a_full_feedback_store_is_a_503_and_the_connection_goes_on(project, model, small_disk):
    path, X = model
    proc, port = serve(project, path, "--set", f"serving.feedback_store={small_disk / 'feedback.db'}")
    conn = Connection(port)
    status, _, body = conn.request("POST", "/predict", json.dumps({"images": X[:40].tolist()}).encode())
    assert status == 200
    ids = [p["prediction_id"] for p in json.loads(body)["predictions"]]
    feedback = lambda pid: conn.request("POST", "/feedback", json.dumps({"prediction_id": pid, "label": 1}).encode())  # noqa: E731
    assert feedback(ids.pop())[0] == 200
    filler = fill(small_disk)
    answers = []
    while ids and len([a for a in answers if a[0] != 200]) < 3:  # SQLite may fit a label or two in a page it has
        answers.append(feedback(ids.pop()))
    refused = [a for a in answers if a[0] != 200]
    assert len(refused) == 3, [a[0] for a in answers]
    for status, headers, body in refused:
        assert (status, headers["content-type"]) == (503, "application/json"), (status, body)
        answer = json.loads(body)
        assert answer["reason"] == "feedback_store_unavailable" and "database or disk is full" in answer["detail"]
        assert headers.get("connection") != "close"
    assert conn.request("POST", "/predict", json.dumps({"image": X[0].tolist()}).encode())[0] == 200  # same connection
    filler.unlink()  # space again: labels are taken again
    assert feedback(ids.pop())[0] == 200
    conn.close()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    logged = [line for line in err.splitlines() if line.strip()]
    assert len(logged) == 3 and all(line.startswith("WARNING:  /feedback answered 503: ") for line in logged), err
    assert "database or disk is full" in logged[0] and "Traceback" not in err


def _left_unread(s: socket.socket) -> bytes:
    "What the peer sent that is still in `s`'s receive buffer (it closed the connection while we wrote)."
    s.setblocking(False)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except OSError:  # nothing more, or the reset came first
        pass
    return data


def test_headers_trickled_a_byte_a_second_are_cut_off_at_the_bound(project, model):
    path, _ = model
    proc, port = serve(project, path)
    request = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"x" * 100  # never complete
    socks = {socket.create_connection(("127.0.0.1", port), timeout=5): 0 for _ in range(100)}
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # sends nothing at all
    start, closed, answers = time.monotonic(), {}, {}
    deadline = start + HEADER_TIMEOUT + 10
    while len(closed) < len(socks) + 1 and time.monotonic() < deadline:
        for s, sent in socks.items():
            if s not in closed:
                try:
                    s.sendall(request[sent : sent + 1])
                    socks[s] = sent + 1
                except OSError:  # the server closed it: its answer may still wait in our buffer, unread
                    closed[s] = time.monotonic() - start
                    answers[s] = answers.get(s, b"") + _left_unread(s)
        readable, _, _ = select.select([s for s in [*socks, silent] if s not in closed], [], [], 1.0)
        for s in readable:
            data = s.recv(4096)
            answers[s] = answers.get(s, b"") + data
            if not data:
                closed[s] = time.monotonic() - start
        assert (http_get(f"http://127.0.0.1:{port}/health", timeout=5) or (0,))[0] == 200  # it serves meanwhile
    assert len(closed) == len(socks) + 1, (
        f"{len(socks) + 1 - len(closed)} connections still open after {deadline - start:.0f} s"
    )
    assert all(HEADER_TIMEOUT - 1 <= t <= HEADER_TIMEOUT + 5 for t in closed.values()), sorted(closed.values())
    for s in socks:
        assert answers[s].startswith(b"HTTP/1.1 408 Request Timeout"), answers[s][:80]
        s.close()
    assert answers.get(silent, b"") == b""  # closed without a word
    silent.close()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    cut = [line for line in err.splitlines() if "request headers not received within" in line]
    assert len(cut) == len(socks), err


REGISTER = """
import sys, mlflow
from mlflow import MlflowClient
with mlflow.start_run() as run:
    mlflow.log_artifacts(sys.argv[1], "model")
client = MlflowClient()
if not client.search_registered_models(f"name = '{sys.argv[2]}'"):
    client.create_registered_model(sys.argv[2])
version = client.create_model_version(sys.argv[2], f"{run.info.artifact_uri}/model", run.info.run_id).version
client.set_registered_model_alias(sys.argv[2], "champion", version)
print(version)
"""


def test_a_service_of_the_registrys_champion_leaves_no_temporary_folder(project, server, model, tmp_path):
    "MLflow downloads a registry's model into a temporary folder it never removes: the service removes its own."
    path, _ = model
    register = lambda: project.run(sys.executable, "-c", REGISTER, path, "served")  # noqa: E731
    first = register()
    assert first.returncode == 0, first.stderr
    temp = tmp_path / "tmp"
    temp.mkdir()
    project.env["TMPDIR"] = str(temp)
    proc, port = serve(project, "models:/served@champion", "--set", "serving.reload_every=1")
    second = register()  # the alias moves: the service loads the new version
    assert second.returncode == 0, second.stderr
    health = lambda: json.loads(http_get(f"http://127.0.0.1:{port}/health", timeout=5)[1])  # noqa: E731
    version = second.stdout.split()[-1]  # after MLflow's "View run" lines
    wait_for(lambda: health()["model_version"] == version, 60, "the service on the new version")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.splitlines()[-1] == STOPPED.format("SIGTERM"), (out, err)
    assert leftovers(temp) == []


LAUNCHER = """
import os, sys, time
from pathlib import Path
from mlops_day28.serve.prometheus import start_prometheus, start_service
service = start_service(sys.argv[1], int(sys.argv[2]), model_uri=sys.argv[3])
prometheus = start_prometheus([service.url.removeprefix("http://")])
Path(sys.argv[4]).write_text(f"{service.pid} {prometheus.pid if prometheus else ''}")
if sys.argv[5] == "wait":
    time.sleep(300)  # until SIGTERM
"""


@pytest.mark.parametrize("end", ["exits", "SIGTERM"])
def test_the_process_that_launched_the_service_and_prometheus_leaves_no_temporary_folder(project, model, tmp_path, end):
    if shutil.which("prometheus") is None and os.environ.get("MLOPS_REQUIRE_PROMETHEUS") == "1":
        pytest.fail("prometheus is required here (MLOPS_REQUIRE_PROMETHEUS=1) but not installed")
    path, _ = model
    temp, record = tmp_path / "tmp", tmp_path / "launched"
    temp.mkdir()
    args = [str(project.config()), str(free_port()), path, str(record), "wait" if end == "SIGTERM" else "exit"]
    launcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LAUNCHER), *args],
        env={**project.env, "TMPDIR": str(temp)},
        cwd=project.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    project.procs.append(launcher)
    wait_for(lambda: record.exists() or launcher.poll() is not None, 180, "the service and Prometheus started")
    pids = [int(p) for p in record.read_text().split()]
    assert "mlops-serve-" in " ".join(os.listdir(temp))  # while they run, their folders are there
    if end == "SIGTERM":
        launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == (-signal.SIGTERM if end == "SIGTERM" else 0), (out, err)
    wait_for(lambda: not any(is_running(p) for p in pids), 30, "the service and Prometheus stopped")
    assert leftovers(temp) == []
