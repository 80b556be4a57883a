"""Sweep parallelism: the 18-trial grid on the tiny config, sequential against 2 worker processes.

    .venv/bin/python bench/bench_sweep.py [--config configs/tiny.yaml] [--repeats 3] [--jobs 2]

Starts its own MLflow server (free port, temporary folder; stopped by process id at the
end). Each repeat runs the whole grid as a new sweep (a fresh name, so nothing is
resumed) once with `n_jobs=1` and once with `n_jobs=--jobs`, in alternating order, and
checks that both found the same results. Reports the medians and their ratio, and, for
context, one trial's training time with 1 and 2 torch threads (the sweep gives each
trial one thread).
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
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import mlflow
import torch

from mlops_day28.config import (
    load_config,
    with_values,
)
from mlops_day28.reliability.local_server import start_tracking_server, stop_tracking_server
from mlops_day28.reliability.processes import free_port
from mlops_day28.sweep import grid_points, results_table, run_grid_sweep
from mlops_day28.training import prepare_training


def timed_sweep(cfg, name, n_jobs):
    c = cfg.model_copy(deep=True)
    c.sweep.name = name
    t = time.perf_counter()
    result = run_grid_sweep(c, n_jobs=n_jobs, progress=False)
    seconds = time.perf_counter() - t
    table = results_table(result.parent_run_id)
    assert len(table) == len(grid_points(cfg.sweep.grid)) and (table.state == "complete").all()
    return seconds, sorted(zip(table.run_name, table.final_val_accuracy, strict=False))


def one_trial_seconds(cfg, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for _ in range(3):
            job = prepare_training(with_values(cfg, grid_points(cfg.sweep.grid)[0]))
            job.fit(progress=False)
            times.append(job.fit(progress=False).seconds)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Sweep parallelism benchmark")
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, ["experiment_name=bench_sweep"])

    tmp = tempfile.mkdtemp(prefix="bench-sweep-")
    server = start_tracking_server(port=free_port(), root=tmp)
    try:
        mlflow.set_tracking_uri(server.uri)
        timed_sweep(cfg, "warmup", 1)  # imports, first kernels, experiment creation
        seq, par = [], []
        for i in range(args.repeats):
            order = [(1, seq), (args.jobs, par)] if i % 2 == 0 else [(args.jobs, par), (1, seq)]
            outcomes = []
            for jobs, times in order:
                seconds, outcome = timed_sweep(cfg, f"r{i}_j{jobs}", jobs)
                times.append(seconds)
                outcomes.append(outcome)
            assert outcomes[0] == outcomes[1], "parallel and sequential sweeps found different results"
        one, two = one_trial_seconds(cfg, 1), one_trial_seconds(cfg, 2)
    finally:
        stop_tracking_server(tmp)

    n = len(grid_points(cfg.sweep.grid))
    print(
        f"\nconfig {Path(args.config).name}: {n} trials of {cfg.model.architecture}, {cfg.training.num_epochs} epochs; "
        f"{args.repeats} repeats; torch {torch.__version__}, mlflow {mlflow.__version__}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n"
    )
    print("| sweep | median s | min s | max s |")
    print("| --- | ---: | ---: | ---: |")
    for label, ts in (("sequential (n_jobs=1)", seq), (f"{args.jobs} workers (n_jobs={args.jobs})", par)):
        print(f"| {label} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |")
    print(
        f"\nspeed-up with {args.jobs} workers: {statistics.median(seq) / statistics.median(par):.2f}x "
        f"(target: at least 1.6x with 2 workers on 2 cores); results identical in every repeat"
    )
    print(f"one trial's training (first grid point): {one:.3f} s with 1 torch thread, {two:.3f} s with 2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
