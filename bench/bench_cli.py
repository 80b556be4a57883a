"""How fast the `mlops-*` commands answer `--help` and a bad argument, against what they used to pay.

Target (issue 9): `--help` and argument errors in under 1 s. Before, every command imported
torch, MLflow and scikit-learn before it looked at its arguments; the baseline here measures
exactly that import in the same run (`python -c "import mlops_day28.pipeline"`), next to an
empty interpreter (`python -c pass`). Each command runs as a fresh process, as from a shell;
medians over the repeats, variants in rotating order.

Run: `.venv/bin/python bench/bench_cli.py [--repeats 7]`; record the table in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = str(ROOT / "configs" / "tiny.yaml")

VARIANTS = {
    "python -c pass (the floor)": [sys.executable, "-c", "pass"],
    "baseline: import what the old CLI imported first": [sys.executable, "-c", "import mlops_day28.pipeline"],
    "mlops-train --help": [str(BIN / "mlops-train"), "--help"],
    "mlops-train with an unknown option (exit 2)": [str(BIN / "mlops-train"), "--config", TINY, "--frobnicate"],
    "mlops-sweep --n-jobs 0 (exit 2)": [str(BIN / "mlops-sweep"), "--config", TINY, "--n-jobs", "0"],
    "mlops-evaluate --threshold 85 (exit 2)": [str(BIN / "mlops-evaluate"), "--model", "m", "--threshold", "85"],
    "mlops-check-config configs/tiny.yaml (reads the config and its data)": [str(BIN / "mlops-check-config"), TINY],
}


def seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=120)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    names = list(VARIANTS)
    for name in names:  # warm the file cache
        seconds(VARIANTS[name])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(seconds(VARIANTS[name]))
    base = statistics.median(times[names[1]])
    print(f"{args.repeats} repeats; Python {platform.python_version()}, {platform.machine()}\n")
    print("| command | median s | min s | max s | ratio to the baseline |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in names:
        t = times[name]
        print(
            f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | {statistics.median(t) / base:.2f} |"
        )


if __name__ == "__main__":
    main()
