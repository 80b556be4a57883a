"""A bad config is refused up front: exit code 2 and one line that names the key."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = str(Path(sys.executable).parent / "mlops-check-config")

BAD_CONFIGS = {
    "training: {learning_rat: 0.01}": "training.learning_rat: unknown key (did you mean 'learning_rate'?)",
    "training: {batch_size: '32'}": "training.batch_size:",
    "training: {num_epochs: 2.5}": "training.num_epochs:",
    "training: {num_epochs: true}": "training.num_epochs:",
    "training: {learning_rate: 0}": "training.learning_rate: Input should be greater than 0",
    "training: {num_epochs: -3}": "training.num_epochs: Input should be greater than 0",
    "data: {splits: {train: 0.6, val: 0.15, test: 0.15}}": "data.splits: train + val + test must sum to 1",
    "model: {architecture: vit}": "model.architecture:",
    "modle: {dropout: 0.1}": "modle: unknown key (did you mean 'model'?)",
    "seed: [1": "not valid YAML at line 1",
}


def run_check(*paths):
    return subprocess.run([CHECK, *map(str, paths)], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("text,expected", BAD_CONFIGS.items())
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = run_check(cfg)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {cfg}: ")
    assert expected in lines[0]


def test_shipped_configs_are_valid():
    r = run_check(ROOT / "configs" / "config.yaml", ROOT / "configs" / "tiny.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": ok (") == 2


def test_missing_config_file_is_named(tmp_path):
    r = run_check(tmp_path / "nope.yaml")
    assert r.returncode == 2
    assert "nope.yaml: config file not found" in r.stderr


def test_bad_cli_arguments_exit_2():
    r = subprocess.run([CHECK], capture_output=True, text=True)
    assert r.returncode == 2
    assert "the following arguments are required: PATH" in r.stderr


def test_make_workbook_refuses_a_bad_config_before_starting_anything(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training:\n  learning_rate: -1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    r = subprocess.run(["make", "-s", "workbook", f"CONFIG={cfg}"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=600)
    assert r.returncode != 0
    assert f"error: {cfg}: training.learning_rate: Input should be greater than 0" in r.stderr
    assert "MLflow server" not in r.stdout  # refused before any server was started or reused


def test_yaml_exponents_without_a_dot_are_floats(tmp_path):
    from mlops_day28.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("training: {learning_rate: 1e-3}\n")
    assert load_config(cfg).training.learning_rate == 0.001


def test_relative_paths_resolve_against_the_project_of_the_config(tmp_path):
    from mlops_day28.config import load_config

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "c.yaml"
    cfg.write_text("data: {dataset_path: data/mine.csv}\n")
    loaded = load_config(cfg)
    assert loaded.root == tmp_path
    assert loaded.resolve(loaded.data.dataset_path) == tmp_path / "data" / "mine.csv"
