"""Serving throughput and tail latency: `mlops-serve` against `mlflow models serve`, same model, same inputs.

    .venv/bin/python bench/bench_serving.py [--seconds 5] [--repeats 3] [--workers 1] [--rate 0] [--quick]

Trains the config's model, registers it on a throwaway MLflow server (free port, temporary
folder), and serves `models:/bench-digits@champion` with both servers at once, each with
`--workers` uvicorn workers and one torch thread (OMP_NUM_THREADS=1 for both), on loopback.
Both stay up for the whole run; only one is under load at a time. Before anything is
timed, both servers' predictions are checked against the trained model's.

The load comes from `bench/load_gen.py`, a process of its own for each measurement: keep-alive
HTTP/1.1 on uvloop, requests prepared in advance, 25 to 100 µs of client CPU per request
(httpx's asyncio client took 831 µs at 8 connections, 2,776 at 32; on 2 cores the client's CPU is taken
from the server it measures). One single image per request, cycling over 200 test images:
- closed loop at 1, 8 and 32 connections (each sends its next request when answered), and
  at 4 connections with batches of 32 images;
- open loop: requests due at a fixed rate both servers sustain (`--rate`, or by default half
  the lower of the two servers' closed-loop throughput at 8 connections in this run), on up to
  32 connections; latency counts from when a request was due (no coordinated omission).

Each measurement is --seconds long after a 1 s warm-up, and the two servers are measured back
to back at each level, in alternating order, --repeats times; the tables give medians, and
the ratios are the medians of the ratios of each back-to-back pair. With each result: the
servers' CPU time per request (the server's processes, from /proc) and the machine's 1-minute
load average (which counts this benchmark's own client and server too).

--quick: 2 s per measurement, one repeat, one training epoch (a smoke run, under 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
import psutil
import torch

from mlops_day28.config import load_config
from mlops_day28.reliability.local_server import start_tracking_server, stop_tracking_server
from mlops_day28.reliability.processes import Process, free_port, http_get, start_process
from mlops_day28.tracking import run_tracked_training

BIN = Path(sys.executable).parent
NAME = "bench-digits"
SERVERS = ("mlops-serve", "mlflow models serve")
LOAD_GEN = Path(__file__).with_name("load_gen.py")


def start(kind: str, uri: str, config: Path, port: int, workers: int = 1) -> Process:
    if kind == "mlops-serve":
        cmd = [BIN / "mlops-serve", "--config", config, "--model", uri, "--port", port, "--workers", workers]
        url_health = f"http://127.0.0.1:{port}/health"
    else:
        cmd = [BIN / "mlflow", "models", "serve", "-m", uri, "-p", port, "-h", "127.0.0.1", "-w", workers]
        cmd += ["--env-manager", "local"]
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


def cpu_seconds(pid: int) -> float:
    "User and system CPU time of process `pid` and its descendants (a server's workers)."
    total = 0.0
    parent = psutil.Process(pid)
    for p in [parent, *parent.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(proc: Process, kind: str, X: np.ndarray, mode: str, connections: int, batch: int, args) -> dict:
    "One measurement by `bench/load_gen.py` in a process of its own, with the server's CPU time per request."
    port = int(proc.url.rsplit(":", 1)[1])
    rows = [X[np.arange(i * batch, (i + 1) * batch) % len(X)] for i in range(200)]  # 200 bodies, wrapping around X
    bodies = [json.dumps(request_for(kind, r)[1]) for r in rows]
    spec = {
        "host": "127.0.0.1",
        "port": port,
        "path": request_for(kind, X[:1])[0],
        "bodies": bodies,
        "mode": mode,
        "connections": connections,
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": args.warmup,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    load, cpu = os.getloadavg()[0], cpu_seconds(proc.popen.pid)
    out = subprocess.run(
        [sys.executable, str(LOAD_GEN), f.name], capture_output=True, text=True, timeout=args.seconds + 120
    )
    cpu = cpu_seconds(proc.popen.pid) - cpu
    os.unlink(f.name)
    if out.returncode:
        raise RuntimeError(f"load_gen failed against {kind}: {out.stderr[-2000:]}")
    r = json.loads(out.stdout)
    assert r["errors"] == 0, f"{kind}: {r['errors']} failed requests"
    return r | {"load": load, "server_cpu_us": 1e6 * cpu / max(r["answered"], 1)}


def rounds(servers: dict, X: np.ndarray, levels: list, mode: str, args, results: dict) -> None:
    "Each level, each repeat: both servers back to back, the one that goes first alternating."
    for rep in range(args.repeats):
        for i, (connections, batch) in enumerate(levels):
            order = SERVERS if (rep + i) % 2 == 0 else SERVERS[::-1]
            for kind in order:
                r = measure(servers[kind], kind, X, mode, connections, batch, args)
                results.setdefault((mode, connections, batch, args.rate), {}).setdefault(kind, []).append(r)
                print(
                    f"  {mode} {connections:>2} conn x{batch} {kind:<19} {r['rps']:7.0f}/s p50 {r['p50_ms']:6.2f} "
                    f"p99 {r['p99_ms']:7.2f} p99.9 {r['p999_ms']:7.2f} ms, {r['server_cpu_us']:5.0f} µs CPU/req, "
                    f"load {r['load']:.2f}",
                    flush=True,
                )


def table(results: dict) -> None:
    "Medians per server; ratios: the median, and the worst, of the back-to-back pairs' ratios."
    print(
        "\n| loop | connections | images/request | offered rate/s | server | requests/s | p50 ms | p99 ms | p99.9 ms "
        "| server CPU µs/request | load (1 min) | throughput ratio (worst) | p99 ratio (worst) |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (mode, connections, batch, rate), by in results.items():
        ours, theirs = by["mlops-serve"], by["mlflow models serve"]
        tp = [a["rps"] / b["rps"] for a, b in zip(ours, theirs, strict=True)]
        p99 = [a["p99_ms"] / b["p99_ms"] for a, b in zip(ours, theirs, strict=True)]
        for kind in SERVERS:
            rs = by[kind]
            med = {
                k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "server_cpu_us")
            }
            loads = [r["load"] for r in rs]
            first = kind == "mlops-serve"
            print(
                f"| {mode} | {connections} | {batch} | {f'{rate:.0f}' if mode == 'open' else ''} | {kind} "
                f"| {med['rps']:.0f} | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} "
                f"| {med['p999_ms']:.2f} | {med['server_cpu_us']:.0f} | {min(loads):.1f}-{max(loads):.1f} "
                f"| {f'{statistics.median(tp):.2f}x ({min(tp):.2f}x)' if first else ''} "
                f"| {f'{statistics.median(p99):.2f} ({max(p99):.2f})' if first else ''} |"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serving benchmark: mlops-serve against mlflow models serve")
    parser.add_argument("--config", default=str(ROOT / "configs" / "config.yaml"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement, after the warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of each server")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop, requests/s (0: half the lower 8-conn rate)")
    parser.add_argument("--quick", action="store_true", help="2 s per measurement, 1 repeat, 1 training epoch")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args(argv)
    args.warmup = 1.0
    overrides = ["experiment_name=bench_serving", "tracking.run_name=bench_serving"]
    if args.quick:
        args.seconds, args.repeats, args.warmup = 2.0, 1, 0.5
        overrides.append("training.num_epochs=1")
    cfg = load_config(args.config, overrides)

    tmp = tempfile.mkdtemp(prefix="bench-serving-")
    tracking = start_tracking_server(port=free_port(), root=tmp)
    results: dict[tuple, dict[str, list]] = {}
    servers: dict[str, Process] = {}
    began = time.time()
    try:
        os.environ["MLFLOW_TRACKING_URI"] = tracking.uri
        mlflow.set_tracking_uri(tracking.uri)
        mlflow.set_experiment(cfg.experiment_name)
        trained = run_tracked_training(cfg, progress=False)
        version = mlflow.register_model(trained.model_uri, NAME).version
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
        uri = f"models:/{NAME}@champion"
        X = trained.job.splits.test.X
        assert len(X) >= 200, "the test split has fewer than 200 images"
        for kind in SERVERS:
            servers[kind] = start(kind, uri, Path(args.config), free_port(), args.workers)
            path, body = request_for(kind, X[:16])
            got = classes_from(kind, httpx.post(servers[kind].url + path, json=body, timeout=60).json())
            with torch.no_grad():
                expected = trained.job.model(torch.from_numpy(X[:16])).argmax(1).tolist()
            assert got == expected, f"{kind} predicts {got}, the trained model {expected}"
        print(f"closed loop ({args.repeats} repeats, {args.seconds:g} s each):", flush=True)
        rounds(servers, X, [(1, 1), (8, 1), (32, 1), (4, 32)], "closed", args, results)
        if not args.rate:
            at8 = results[("closed", 8, 1, 0.0)]
            args.rate = 0.5 * min(statistics.median(r["rps"] for r in at8[kind]) for kind in SERVERS)
        print(f"open loop at {args.rate:.0f} requests/s, up to 32 connections:", flush=True)
        rounds(servers, X, [(32, 1)], "open", args, results)
    finally:
        for proc in servers.values():
            proc.stop()
        stop_tracking_server(tmp)

    print(
        f"\nconfig {Path(args.config).name} ({cfg.model.architecture}); {args.workers} worker(s) each; "
        f"{args.seconds:g} s per measurement, {args.repeats} repeats (medians); {time.time() - began:.0f} s in all; "
        f"torch {torch.__version__}, mlflow {mlflow.__version__}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    table(results)
    print(
        "\nthroughput ratio: mlops-serve / mlflow models serve, requests/s (target: at least 2x); "
        "p99 ratio: mlops-serve / mlflow models serve (target: below 1); (worst): the worst back-to-back pair"
    )
    if args.json:
        rows = [
            {"mode": k[0], "connections": k[1], "batch": k[2], "rate": k[3], "server": s, "runs": v}
            for k, by in results.items()
            for s, v in by.items()
        ]
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
