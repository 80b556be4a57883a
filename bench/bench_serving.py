"""Serving throughput and latency: `mlops-serve` against `mlflow models serve`, same model, same inputs.

    .venv/bin/python bench/bench_serving.py [--config configs/config.yaml] [--seconds 5] [--repeats 2]

Trains the config's model, registers it on a throwaway MLflow server (free port, temporary
folder), and serves `models:/bench-digits@champion` with each server in turn: one uvicorn
worker each, one torch thread each (OMP_NUM_THREADS=1 for both), on loopback, never both at
once. Two load generators, each for --seconds per level after a warm-up:
- httpx (asyncio), closed loop, at several concurrencies, one image per request and batches of 32;
- wrk (C; Debian's `wrk`), where installed, at the same concurrencies: a client that costs far
  less CPU than the servers, so the numbers are the servers' and not the client's.
Servers alternate across repeats; medians are reported. Both servers' predictions are checked
to agree before anything is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import httpx
import mlflow
import numpy as np
import torch

from mlops_day28.config import load_config
from mlops_day28.reliability.local_server import start_tracking_server, stop_tracking_server
from mlops_day28.reliability.processes import Process, free_port, http_get, start_process
from mlops_day28.tracking import run_tracked_training

BIN = Path(sys.executable).parent
NAME = "bench-digits"


def start(kind: str, uri: str, config: Path, port: int) -> Process:
    if kind == "mlops-serve":
        cmd = [BIN / "mlops-serve", "--config", config, "--model", uri, "--port", port]
        url_health = f"http://127.0.0.1:{port}/health"
    else:
        cmd = [
            BIN / "mlflow",
            "models",
            "serve",
            "-m",
            uri,
            "-p",
            port,
            "-h",
            "127.0.0.1",
            "-w",
            "1",
            "--env-manager",
            "local",
        ]
        url_health = f"http://127.0.0.1:{port}/ping"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow runs `uvicorn` from PATH
        "OMP_NUM_THREADS": "1",
    }  # the same for both (mlops-serve also sets serving.torch_threads=1)
    ready = lambda: (http_get(url_health) or (0,))[0] == 200  # noqa: E731
    return start_process([str(c) for c in cmd], kind, f"http://127.0.0.1:{port}", ready=ready, timeout=180, env=env)


def request_for(kind: str, rows: np.ndarray) -> tuple[str, dict]:
    "The endpoint and JSON body each server takes for these image rows."
    if kind == "mlops-serve":
        return "/predict", ({"image": rows[0].tolist()} if len(rows) == 1 else {"images": rows.tolist()})
    return "/invocations", {"inputs": rows.tolist()}


def classes_from(kind: str, body: dict) -> list[int]:
    if kind == "mlops-serve":
        return [p["predicted_class"] for p in body["predictions"]]
    return list(np.asarray(body["predictions"]).argmax(1))


async def load(url: str, kind: str, X: np.ndarray, concurrency: int, batch: int, seconds: float) -> dict:
    "Closed-loop load: `concurrency` clients, each sending its next request when the last one is answered."
    bodies = [request_for(kind, X[i : i + batch]) for i in range(0, len(X) - batch + 1, batch)]
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker(offset: int, until: float, record: bool):
            nonlocal errors
            i = offset
            while time.perf_counter() < until:
                path, body = bodies[i % len(bodies)]
                start = time.perf_counter()
                r = await client.post(path, json=body)
                if record:
                    latencies.append(time.perf_counter() - start)
                    errors += r.status_code != 200
                i += concurrency

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(k, warm, False) for k in range(concurrency)))
        begin = time.perf_counter()
        await asyncio.gather(*(worker(k, begin + seconds, True) for k in range(concurrency)))
        elapsed = time.perf_counter() - begin
    lat = np.array(latencies) * 1000
    return {
        "rps": len(lat) / elapsed,
        "images_per_s": len(lat) * batch / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": errors,
        "n": len(lat),
    }


def wrk(url: str, path: str, body: dict, concurrency: int, seconds: float) -> dict:
    "One wrk run (1 thread, `concurrency` connections) POSTing `body`."
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url + path],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def pct(p):
        return (lambda m: float(m.group(1)) * unit[m.group(2)])(re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)$", out, re.M))

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "errors": int(errors.group(1)) if errors else 0,
    }


def table(results: dict, title: str, images: bool) -> None:
    print(f"\n{title}\n")
    print(
        "| concurrency | images/request | server | requests/s |"
        + (" images/s |" if images else "")
        + " p50 ms | p99 ms | throughput ratio | p99 ratio |"
    )
    print("| ---: | ---: | --- | ---: |" + (" ---: |" if images else "") + " ---: | ---: | ---: | ---: |")
    for (concurrency, batch), r in results.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        ratio = med["mlops-serve:rps"] / med["mlflow models serve:rps"]
        p99 = med["mlops-serve:p99_ms"] / med["mlflow models serve:p99_ms"]
        for kind in ("mlops-serve", "mlflow models serve"):
            ours = kind == "mlops-serve"
            print(
                f"| {concurrency} | {batch} | {kind} | {med[kind + ':rps']:.0f} |"
                + (f" {med[kind + ':rps'] * batch:.0f} |" if images else "")
                + f" {med[kind + ':p50_ms']:.2f} | {med[kind + ':p99_ms']:.2f} | {f'{ratio:.2f}x' if ours else ''} | "
                f"{f'{p99:.2f}' if ours else ''} |"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serving benchmark")
    parser.add_argument("--config", default=str(ROOT / "configs" / "config.yaml"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, ["experiment_name=bench_serving", "tracking.run_name=bench_serving"])
    levels = [(1, 1), (4, 1), (16, 1), (4, 32)]  # (concurrency, images per request)

    tmp = tempfile.mkdtemp(prefix="bench-serving-")
    server = start_tracking_server(port=free_port(), root=tmp)
    results: dict[tuple, dict[str, list]] = {}
    wrk_results: dict[tuple, dict[str, list]] = {}
    has_wrk = shutil.which("wrk") is not None
    try:
        os.environ["MLFLOW_TRACKING_URI"] = server.uri
        mlflow.set_tracking_uri(server.uri)
        mlflow.set_experiment(cfg.experiment_name)
        trained = run_tracked_training(cfg, progress=False)
        version = mlflow.register_model(trained.model_uri, NAME).version
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
        uri = f"models:/{NAME}@champion"
        X = trained.job.splits.test.X
        order = ["mlops-serve", "mlflow models serve"]
        for rep in range(args.repeats):
            for kind in order if rep % 2 == 0 else order[::-1]:
                proc = start(kind, uri, Path(args.config), free_port())
                try:
                    path, body = request_for(kind, X[:16])
                    got = classes_from(kind, httpx.post(proc.url + path, json=body, timeout=60).json())
                    with torch.no_grad():
                        expected = trained.job.model(torch.from_numpy(X[:16])).argmax(1).tolist()
                    assert got == expected, f"{kind} predicts {got}, the trained model {expected}"
                    for concurrency, batch in levels:
                        r = asyncio.run(load(proc.url, kind, X, concurrency, batch, args.seconds))
                        assert r["errors"] == 0, f"{kind}: {r['errors']} failed requests"
                        for key, value in r.items():
                            results.setdefault((concurrency, batch), {}).setdefault(f"{kind}:{key}", []).append(value)
                        if has_wrk:
                            path, body = request_for(kind, X[:batch])
                            w = wrk(proc.url, path, body, concurrency, args.seconds)
                            assert w["errors"] == 0, f"{kind}: {w['errors']} failed requests under wrk"
                            for key, value in w.items():
                                wrk_results.setdefault((concurrency, batch), {}).setdefault(f"{kind}:{key}", []).append(
                                    value
                                )
                finally:
                    proc.stop()
    finally:
        stop_tracking_server(tmp)

    print(
        f"\nconfig {Path(args.config).name} ({cfg.model.architecture}); {args.seconds:g} s per level, {args.repeats} repeats "
        f"(medians); torch {torch.__version__}, mlflow {mlflow.__version__}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    table(results, "Load from httpx (asyncio, closed loop):", images=True)
    if has_wrk:
        table(wrk_results, "Load from wrk (1 thread, keep-alive connections):", images=True)
    else:
        print("\n(wrk is not installed: apt-get install wrk for the second table)")
    print(
        "\nthroughput ratio: mlops-serve / mlflow models serve (target: at least 2x); "
        "p99 ratio: mlops-serve / mlflow models serve (target: below 1)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
