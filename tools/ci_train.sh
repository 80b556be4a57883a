#!/usr/bin/env bash
# CI's train job, and `make ci-train`: a throwaway MLflow server, the pipeline on the tiny
# config, the evaluation gate, and the model exported. Everything lands in ci-artifacts/
# (git-ignored); the server's state too, and the server is stopped by its pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=ci-artifacts
MODEL=models:/digits-classifier@challenger

rm -rf "$OUT"
mkdir -p "$OUT"
PORT=$("$BIN/python" -c "from mlops_day28.reliability.processes import free_port; print(free_port())")
"$BIN/mlops-mlflow" start --root "$OUT" --port "$PORT"
trap '"$BIN/mlops-mlflow" stop --root "$OUT"' EXIT
export MLFLOW_TRACKING_URI="http://127.0.0.1:$PORT" MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

echo "== train (configs/tiny.yaml)"
"$BIN/mlops-train" --config configs/tiny.yaml --no-progress
echo "== evaluation gate"
"$BIN/mlops-evaluate" --model "$MODEL" --config configs/tiny.yaml --threshold 0.85 \
  --output "$OUT/metrics.json" --markdown "$OUT/metrics.md"
echo "== export the model"
"$BIN/mlflow" artifacts download --artifact-uri "$MODEL" --dst-path "$OUT/model" >/dev/null
test -f "$OUT/model/MLmodel"
echo "model and metrics in $OUT/"
