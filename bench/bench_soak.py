"""Soak: `mlops-serve --workers 2` under 60 s of load at concurrency 16, 30% of it malformed.

    .venv/bin/python bench/bench_soak.py [--config configs/config.yaml] [--seconds 60] [--workers 2]

Trains the config's model, saves it to a temporary folder and serves it with `mlops-serve
--workers N`. wrk (Debian's `wrk`: a C client, so the two cores go to the service, not the
client) sends, on 16 keep-alive connections, a cycle of 100 bodies: 70 valid single
images and 30 malformed ones (NaN, the wrong shape, deep nesting, a string, a truncated
body, an empty batch, out-of-range pixels, in turn). Reported: requests/s, p50 and p99
latency, answers by status class (5xx must be 0), and the resident memory (RSS) of the
service's processes (the parent and its workers) after a 5 s warm-up and at the end,
sampled every 10 s between. Growth over 10% is a defect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import httpx
import psutil

from mlops_day28.config import load_config
from mlops_day28.data import InputProfile
from mlops_day28.reliability.processes import free_port
from mlops_day28.serve.prometheus import scrape, start_service
from mlops_day28.tracking import save_torch_model
from mlops_day28.training import prepare_training

# wrk: one thread, a cycle of bodies, status classes counted per thread and summed at the end
WRK_SCRIPT = """
local bodies = %s
local i = 0
local counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {[2] = 0, [4] = 0, [5] = 0} end
function request()
  i = i %% #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[i])
end
function response(status, headers, body)
  local class = math.floor(status / 100)
  counts[class] = (counts[class] or 0) + 1
  c2, c4, c5 = counts[2], counts[4], counts[5]
end
function done(summary, latency, requests)
  local t = {[2] = 0, [4] = 0, [5] = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get("c" .. k) or 0) end
  end
  io.write(string.format(
    'RESULT {"requests": %%d, "seconds": %%.3f, "p50_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f, '
    .. '"s2xx": %%d, "s4xx": %%d, "s5xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, t[2], t[4], t[5],
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def bodies(X) -> list[str]:
    "The 100 bodies wrk cycles through: 70 valid single images, 30 malformed."
    valid = [json.dumps({"image": X[i].tolist()}) for i in range(7)]
    image = X[0].tolist()
    malformed = [
        json.dumps({"image": [float("nan"), *image[1:]]}),  # NaN (Python writes it; JSON has no NaN)
        json.dumps({"image": image[:-1]}),  # the wrong shape
        "[" * 5000 + "]" * 5000,  # nested too deeply
        json.dumps({"image": "zero"}),  # a string
        json.dumps({"image": image})[:-7],  # truncated
        json.dumps({"images": []}),  # an empty batch
        json.dumps({"image": [99.0] * 64}),  # out of range
    ]
    cycle, bad = [], iter(malformed * 5)
    for i in range(100):  # 30 of every 100 malformed, the seven kinds in turn
        cycle.append(next(bad) if i % 10 in (3, 6, 9) else valid[i % 7])
    return cycle


def rss_mb(pid: int) -> float:
    "Resident memory of `pid` and all its descendants, in MiB."
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker restarting
            total += p.memory_info().rss
    return total / 2**20


def wrk(url: str, script: Path, seconds: float, connections: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix("RESULT "))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "config.yaml")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    cfg = load_config(args.config)
    job = prepare_training(cfg)
    job.fit(progress=False)
    X = job.splits.test.X
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    save_torch_model(
        job.model, job.splits.train.X[:5], work / "model", InputProfile.from_training(job.dataset, job.splits.train.X)
    )
    script = work / "soak.lua"
    script.write_text(WRK_SCRIPT % ("{" + ", ".join(json.dumps(b) for b in bodies(X)) + "}"))

    service = start_service(
        args.config, free_port(), model_uri=str(work / "model"), args=["--workers", str(args.workers)]
    )
    try:
        idle = rss_mb(service.popen.pid)
        wrk(service.url, script, 5, args.connections)  # warm-up: TorchScript's first runs, allocator pools
        start = rss_mb(service.popen.pid)
        samples, stop = [], threading.Event()

        def sample():
            while not stop.wait(10):
                samples.append(round(rss_mb(service.popen.pid)))

        threading.Thread(target=sample, daemon=True).start()
        t0 = time.perf_counter()
        result = wrk(service.url, script, args.seconds, args.connections)
        stop.set()
        end = rss_mb(service.popen.pid)
        after = httpx.post(f"{service.url}/predict", json={"image": X[0].tolist()}, timeout=10)
        metrics = scrape(service.url)
    finally:
        service.stop()
        shutil.rmtree(work, ignore_errors=True)
    five_xx = sum(v for k, v in metrics.items() if k.startswith("http_requests_total") and 'status="5xx"' in k)
    report = {
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "workers": args.workers,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        **result,
        "requests_per_s": round(result["requests"] / result["seconds"], 1),
        "malformed_share": 0.3,
        "service_5xx_metric": five_xx,
        "rss_idle_mb": round(idle),
        "rss_start_mb": round(start),
        "rss_end_mb": round(end),
        "rss_samples_mb": samples,
        "rss_growth": round(end / start - 1, 4),
        "answers_after": after.status_code,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(report, indent=1))
    ok = result["s5xx"] == 0 and five_xx == 0 and report["rss_growth"] <= 0.10 and after.status_code == 200
    print(
        f"\n{report['requests_per_s']:.0f} requests/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms; "
        f"2xx {result['s2xx']}, 4xx {result['s4xx']}, 5xx {result['s5xx']}; "
        f"RSS {report['rss_start_mb']} -> {report['rss_end_mb']} MiB ({report['rss_growth']:+.1%}): "
        + ("PASS" if ok else "FAIL")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
