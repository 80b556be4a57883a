"""A bad config is refused up front: exit code 2 and one line that names the key.

This is the one place where every kind of bad config is tested (the commands share the
loader; tests/test_cli.py checks that each command refuses one the same way).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_day28 import cli
from mlops_day28.config import load_config

ROOT = Path(__file__).resolve().parents[1]

BAD_CONFIGS = {
    "training: {learning_rat: 0.01}": "training.learning_rat: unknown key (did you mean 'learning_rate'?)",
    "training: {batch_size: '32'}": "training.batch_size:",
    "training: {batch_size: 3.5}": "training.batch_size: Input should be a valid integer",
    "training: {num_epochs: 2.5}": "training.num_epochs:",
    "training: {num_epochs: true}": "training.num_epochs:",
    "training: {learning_rate: 0}": "training.learning_rate: Input should be greater than 0",
    "training: {num_epochs: -3}": "training.num_epochs: Input should be greater than 0",
    "training: {optimizer: adamw}": "training.optimizer: Input should be 'adam' or 'sgd'",
    "data: {splits: {train: 0.6, val: 0.15, test: 0.15}}": "data.splits: train + val + test must sum to 1",
    "data: {train_split: 0.6, val_split: 0.15, test_split: 0.15}": "data.splits: train + val + test must sum to 1",
    "data: {test_split: 0.2, splits: {test: 0.2}}": "data: test_split and splits.test both give the test fraction",
    "data: {dataset_path: ./data, train_split: 0.7, split: 0.1}": "data.split: unknown key",
    "model: {architecture: resnet34}": "model.architecture: Input should be 'mlp', 'cnn', 'resnet' or 'resnet18'",
    "model: {architecture: vit}": "model.architecture:",
    "modle: {dropout: 0.1}": "modle: unknown key (did you mean 'model'?)",
    "seed: [1": "not valid YAML at line 1",
    "sweep: {grid: {training.learning_rat: [0.1]}}": (
        "sweep.grid: unknown parameter 'training.learning_rat' (did you mean 'training.learning_rate'?)"
    ),
    "sweep: {grid: {training.batch_size: [16, big]}}": "sweep.grid: training.batch_size value 'big' is not valid",
    "sweep: {grid: {}}": "sweep.grid: is empty",
    "sweep: {grid: {model.dropout: []}}": "sweep.grid: model.dropout has no values",
    "sweep: {grid: {model.dropout: [0.3, 1.5]}}": "sweep.grid: model.dropout value 1.5 is not valid: Input should be less than 1",
    "sweep: {worker_grace: 1}": "sweep.worker_grace: Input should be greater than or equal to 2",
}


def check(capsys, *paths):
    "Run `mlops-check-config` in this process: (exit code, stdout, stderr lines)."
    code = cli.check_config([str(p) for p in paths])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.mark.parametrize("text,expected", BAD_CONFIGS.items())
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, capsys, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, out, lines = check(capsys, cfg)
    assert code == 2
    assert out == ""
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {cfg}: ")
    assert expected in lines[0]


def test_shipped_configs_are_valid(capsys):
    code, out, lines = check(capsys, ROOT / "configs" / "config.yaml", ROOT / "configs" / "tiny.yaml")
    assert code == 0, lines
    assert out.count(": ok (") == 2


def test_missing_config_file_and_data_are_named(tmp_path, capsys):
    code, _, lines = check(capsys, tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml: config file not found" in lines[0]
    (tmp_path / "cfg.yaml").write_text("data: {dataset_path: /nowhere/digits.csv}")
    code, _, lines = check(capsys, tmp_path / "cfg.yaml")
    assert code == 2 and lines == [
        f"error: {tmp_path / 'cfg.yaml'}: data.dataset_path: /nowhere/digits.csv does not exist"
    ]


def test_one_bad_file_among_good_ones(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("training: {num_epochs: 0}")
    code, out, lines = check(capsys, ROOT / "configs" / "tiny.yaml", tmp_path / "bad.yaml")
    assert code == 2 and out.count(": ok (") == 1 and len(lines) == 1


@pytest.mark.slow
def test_the_command_itself(tmp_path):
    "`mlops-check-config` end to end, as `make workbook` runs it."
    (tmp_path / "bad.yaml").write_text("training: {learning_rat: 0.01}")
    exe = Path(sys.executable).parent / "mlops-check-config"
    ok = subprocess.run([exe, ROOT / "configs" / "tiny.yaml"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ": ok (mlp, " in ok.stdout
    bad = subprocess.run([exe, tmp_path / "bad.yaml"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "did you mean 'learning_rate'" in bad.stderr


@pytest.mark.slow
def test_make_workbook_refuses_a_bad_config_before_starting_anything(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training:\n  learning_rate: -1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    r = subprocess.run(
        ["make", "-s", "workbook", f"CONFIG={cfg}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert r.returncode != 0
    assert f"error: {cfg}: training.learning_rate: Input should be greater than 0" in r.stderr
    assert "MLflow server" not in r.stdout  # refused before any server was started or reused


def test_yaml_exponents_without_a_dot_are_floats(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training: {learning_rate: 1e-3}\n")
    assert load_config(cfg).training.learning_rate == 0.001


def test_relative_paths_resolve_against_the_project_of_the_config(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "c.yaml"
    cfg.write_text("data: {dataset_path: data/mine.csv}\n")
    loaded = load_config(cfg)
    assert loaded.root == tmp_path
    assert loaded.resolve(loaded.data.dataset_path) == tmp_path / "data" / "mine.csv"
