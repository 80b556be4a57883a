"""Tracking overhead: the same training run, untracked and tracked against a local MLflow server.

    .venv/bin/python bench/bench_tracking.py [--config configs/config.yaml] [--repeats 7]

Starts its own MLflow server (free port, temporary folder; stopped by process id at the
end). Each repeat trains the same config, same seed, in every variant, in rotating
order so drift on a shared machine hits all variants alike. Reports medians and the
ratio of each variant to the untracked baseline measured in the same run.

Variants (each tracked one: start a run, log the params, train with a per-epoch callback, end the run)
- untracked:                 `fit` alone (the baseline)
- batched (workbook default): `MLflowEpochLogger()`: one `log_batch` at most every second, and at the end
- one call per epoch:        `MLflowEpochLogger(flush_every=0)`: one synchronous `log_batch` per epoch
- MLflow async:              `mlflow.log_metrics(..., synchronous=False)` per epoch, flushed at the end
- per-metric calls:          one synchronous `log_metric` per metric per epoch (the pattern to avoid)
- full run:                  `run_tracked_training` (adds the dataset input, test metrics, two plots, the
                             config and the model in pt2 format) against untracked fit + test evaluation;
                             for information: it does more work than tracking alone
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import torch

from mlops_day28.config import load_config
from mlops_day28.reliability.local_server import start_tracking_server, stop_tracking_server
from mlops_day28.reliability.processes import free_port
from mlops_day28.tracking import MLflowEpochLogger, run_params, run_tracked_training
from mlops_day28.training import prepare_training


def untracked(cfg):
    job = prepare_training(cfg)
    t = time.perf_counter()
    job.fit(progress=False)
    return time.perf_counter() - t


def tracked(cfg, make_callback):
    job = prepare_training(cfg)
    t = time.perf_counter()
    with mlflow.start_run(run_name="bench_tracked"):
        mlflow.log_params(run_params(cfg, job.dataset))
        callback = make_callback()
        job.fit(callbacks=[callback], progress=False)
        if hasattr(callback, "flush"):
            callback.flush()
        mlflow.flush_async_logging()
    return time.perf_counter() - t


def mlflow_async(epoch, metrics):
    mlflow.log_metrics(metrics, step=epoch, synchronous=False)


def per_metric_sync(epoch, metrics):
    for k, v in metrics.items():
        mlflow.log_metric(k, v, step=epoch, synchronous=True)


def full_untracked(cfg):
    t = time.perf_counter()
    job = prepare_training(cfg)
    job.fit(progress=False)
    job.test_metrics()
    return time.perf_counter() - t


def full_tracked(cfg):
    t = time.perf_counter()
    run_tracked_training(cfg, run_name="bench_full", progress=False)
    return time.perf_counter() - t


VARIANTS = {
    "untracked": untracked,
    "batched, <= 1 call/s (workbook default)": lambda cfg: tracked(cfg, MLflowEpochLogger),
    "one call per epoch": lambda cfg: tracked(cfg, lambda: MLflowEpochLogger(flush_every=0)),
    "MLflow async log_metrics": lambda cfg: tracked(cfg, lambda: mlflow_async),
    "per-metric sync calls": lambda cfg: tracked(cfg, lambda: per_metric_sync),
}
FULL = {"full: untracked fit + test": full_untracked, "full: run_tracked_training": full_tracked}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Tracking overhead benchmark")
    parser.add_argument("--config", default=str(ROOT / "configs" / "config.yaml"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)

    tmp = tempfile.mkdtemp(prefix="bench-mlflow-")
    server = start_tracking_server(port=free_port(), root=tmp)
    try:
        mlflow.set_tracking_uri(server.uri)
        mlflow.set_experiment("bench_tracking_overhead")
        for fn in (*VARIANTS.values(), *FULL.values()):  # warm-up: imports, torch kernels, first export
            fn(cfg)
        times = {name: [] for name in (*VARIANTS, *FULL)}
        for i in range(args.repeats):
            names = list(VARIANTS)
            names = names[i % len(names) :] + names[: i % len(names)]  # rotate the order
            for name in names:
                times[name].append(VARIANTS[name](cfg))
            for name in list(FULL) if i % 2 == 0 else list(FULL)[::-1]:
                times[name].append(FULL[name](cfg))
    finally:
        stop_tracking_server(tmp)

    med = {k: statistics.median(v) for k, v in times.items()}
    base, full_base = med["untracked"], med["full: untracked fit + test"]
    print(
        f"\nconfig {Path(args.config).name}: {cfg.model.architecture}, {cfg.training.num_epochs} epochs, "
        f"batch {cfg.training.batch_size}; {args.repeats} repeats; torch {torch.__version__}, "
        f"mlflow {mlflow.__version__}, {os.cpu_count()} CPUs, {platform.python_version()}\n"
    )
    print("| variant | median s | min s | max s | ratio to baseline |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, ts in times.items():
        ref = full_base if name.startswith("full") else base
        print(f"| {name} | {med[name]:.3f} | {min(ts):.3f} | {max(ts):.3f} | {med[name] / ref:.3f} |")
    overhead = med["batched, <= 1 call/s (workbook default)"] / base - 1
    print(f"\ntracking overhead of the workbook's logger: {overhead:+.1%} (target: at most +5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
