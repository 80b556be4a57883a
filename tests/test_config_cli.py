"""A bad config is refused up front: exit code 2 and one line that names the key.

This is the one place where every kind of bad config is tested (the commands share the
loader; tests/test_cli.py checks that each command refuses one the same way).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT, TINY_CONFIG

from mlops_day28 import cli
from mlops_day28.config import Config, load_config

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
    # a key given twice: YAML would keep the last, silently
    "seed: 1\nmodel: {dropout: 0.1}\nseed: 2\n": (
        "seed is given twice, on lines 1 and 3 (YAML would silently keep the last): keep one of them"
    ),
    "training:\n  batch_size: 8\n  num_epochs: 2\n  batch_size: 16\n": "training.batch_size is given twice, on lines 2 and 4",
    "model: {dropout: 0.1, dropout: 0.2}": "model.dropout is given twice, on line 1 (",
    "sweep: {grid: {model.dropout: [0.1], model.dropout: [0.2]}}": "sweep.grid.model.dropout is given twice, on line 1",
    # MLflow's limits (core/01_config): names and values MLflow would refuse, or cut, once a run is under way
    f"experiment_name: {'e' * 257}": "experiment_name: 257 characters, over MLflow's limit of 256 for an experiment name",
    "experiment_name: ''": "experiment_name: String should have at least 1 character",
    f"tracking: {{run_name: {'r' * 251}}}": "tracking.run_name: 251 characters, over MLflow's limit of 250 for a run name",
    f"sweep: {{name: {'s' * 251}}}": "sweep.name: 251 characters, over MLflow's limit of 250 for a run name",
    f"registry: {{model_name: {'m' * 257}}}": (
        "registry.model_name: 257 characters, over MLflow's limit of 256 for a registered model name"
    ),
    "registry: {model_name: team/digits}": "registry.model_name: 'team/digits' has a '/' or ':', which MLflow refuses",
    "registry: {model_name: '..digits'}": "registry.model_name: '..digits': MLflow refuses a model name that is blank",
    f"data: {{dataset_path: {'d' * 6001}}}": (
        "data.dataset_path: 6,001 characters, over MLflow's limit of 6,000 for a param value"
    ),
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
    code, out, lines = check(capsys, ROOT / "configs" / "config.yaml", TINY_CONFIG)
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
    code, out, lines = check(capsys, TINY_CONFIG, tmp_path / "bad.yaml")
    assert code == 2 and out.count(": ok (") == 1 and len(lines) == 1


@pytest.mark.slow
def test_the_command_itself(tmp_path):
    "`mlops-check-config` end to end, as `make workbook` runs it."
    (tmp_path / "bad.yaml").write_text("training: {learning_rat: 0.01}")
    exe = Path(sys.executable).parent / "mlops-check-config"
    ok = subprocess.run([exe, TINY_CONFIG], capture_output=True, text=True, timeout=60)
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


# --- MLflow's limits: the schema's numbers are the installed MLflow's own ---


def test_the_schema_limits_are_the_installed_mlflows():
    "An MLflow upgrade that changes a limit fails here, not at a server 24 s into a run."
    from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModel
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from mlflow.utils import validation
    from optuna.storages._rdb.models import StudyModel

    from mlops_day28 import config as schema

    assert SqlExperiment.name.type.length == schema.MLFLOW_EXPERIMENT_NAME_MAX == 256
    assert validation.MAX_EXPERIMENT_NAME_LENGTH >= schema.MLFLOW_EXPERIMENT_NAME_MAX  # its own check allows 500
    assert SqlRun.name.type.length == schema.MLFLOW_RUN_NAME_MAX == 250
    assert SqlRegisteredModel.name.type.length == schema.MLFLOW_MODEL_NAME_MAX == 256
    assert validation.MAX_PARAM_VAL_LENGTH == schema.MLFLOW_PARAM_VALUE_MAX == 6000
    assert validation.MAX_TAG_VAL_LENGTH >= schema.MLFLOW_PARAM_VALUE_MAX  # a value logged as a tag fits too
    # a sweep's Optuna study is named experiment_name/sweep.name
    assert StudyModel.study_name.type.length >= schema.MLFLOW_EXPERIMENT_NAME_MAX + 1 + schema.MLFLOW_RUN_NAME_MAX


@pytest.mark.parametrize("name", ["digits-classifier", "a/b", "a:b", "..x", ".", " ", "x" * 300, "caf\u00e9 v2"])
def test_model_names_are_refused_exactly_when_mlflow_refuses_them(name):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name
    from pydantic import ValidationError

    try:
        _validate_model_name(name)
        mlflow_refuses = len(name) > 256  # the registered_models.name column (PostgreSQL refuses longer)
    except MlflowException:
        mlflow_refuses = True
    try:
        Config(registry={"model_name": name})
        refused = False
    except ValidationError:
        refused = True
    assert refused == mlflow_refuses


@pytest.mark.parametrize(
    "key,limit",
    [
        ("experiment_name", 256),
        ("tracking.run_name", 250),
        ("sweep.name", 250),
        ("registry.model_name", 256),
        ("tracking.wandb_project", 6000),
        ("serving.model_uri", 6000),
    ],
)
def test_a_string_at_the_limit_loads_and_one_over_is_named(tmp_path, capsys, key, limit):
    section, _, name = key.rpartition(".")
    cfg = tmp_path / "c.yaml"
    for n in (limit, limit + 1):
        value = "v" * n
        cfg.write_text(f"{section}: {{{name}: {value}}}\n" if section else f"{name}: {value}\n")
        if n == limit:
            assert load_config(cfg) is not None
            continue
        assert cli.check_config([str(cfg)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"error: {cfg}: {key}: {n:,} characters, over MLflow's limit of {limit:,}")


def test_a_million_character_experiment_name_is_refused_in_one_short_line(tmp_path, capsys):
    "The probe's case: a file under 1 MB whose experiment_name MLflow refused only at the server, 24 s later."
    cfg = tmp_path / "long.yaml"
    cfg.write_text("experiment_name: " + "e" * 1_000_000 + "\n")
    assert cfg.stat().st_size < 1 << 20
    assert cli.check_config([str(cfg)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"error: {cfg}: experiment_name: 1,000,000 characters, over MLflow's limit of 256 for an experiment name\n"
    )


# --- a key given twice ---


def test_a_key_given_twice_is_refused_by_train_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: it must not get that far
    cfg = tmp_path / "twice.yaml"
    cfg.write_text("seed: 1\ntraining:\n  num_epochs: 1\nseed: 2\n")
    line = f"error: {cfg}: seed is given twice, on lines 1 and 4 (YAML would silently keep the last): keep one of them"
    assert cli.check_config([str(cfg)]) == 2
    assert capsys.readouterr() == ("", line + "\n")
    assert cli.train(["--config", str(cfg)]) == 2
    assert capsys.readouterr() == ("", line + "\n")


def test_a_key_given_twice_in_a_set_value_is_refused(capsys):
    tiny = TINY_CONFIG
    assert cli.train(["--config", str(tiny), "--set", "sweep.grid={seed: [1], seed: [2]}"]) == 2
    assert (
        capsys.readouterr().err
        == "error: --set 'sweep.grid': seed is given twice, on line 1 (YAML would silently keep the last): keep one of them\n"
    )


def test_merges_and_the_same_key_in_two_sections_are_not_duplicates(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("sweep: {name: s}\ntracking: {run_name: s}\nmodel: {dropout: 0.1}\ntraining: {batch_size: 8}\n")
    assert load_config(cfg).sweep.name == "s"
    merged = tmp_path / "merged.yaml"  # a merge key's values, overridden by a later key: YAML's override
    merged.write_text("model:\n  <<: &b {dropout: 0.1, hidden_size: 16}\n  dropout: 0.3\n")
    loaded = load_config(merged)
    assert (loaded.model.dropout, loaded.model.hidden_size) == (0.3, 16)


# --- the data: check-config reads it as training does, so ok means training takes it ---

DIGITS = (ROOT / "data" / "digits.csv").read_text().splitlines()


def digits_with(tmp_path, name: str, change) -> Path:
    "A config whose data is the digits CSV with `change(lines)` applied, written to `name`."
    lines = list(DIGITS)
    change(lines)
    data = tmp_path / name
    data.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / f"{data.stem}.yaml"
    cfg.write_text(f"data: {{dataset_path: {data}}}\n")
    return cfg


def set_label(lines, line, label):
    lines[line - 1] = lines[line - 1].rsplit(",", 1)[0] + f",{label}"


def set_value(lines, line, column, value):
    values = lines[line - 1].split(",")
    values[column] = value
    lines[line - 1] = ",".join(values)


BAD_DATA = {  # name -> (change to the digits CSV, what the one line says after "error: {config}: {data}")
    "label42": (
        lambda lines: set_label(lines, 52, 42),
        " line 52 (the header is line 1): label 42; the config has 10 classes (model.num_classes), and no other row "
        "has this label: correct or remove the row",
    ),
    "header_only": (
        lambda lines: lines.__delitem__(slice(1, None)),
        ": no rows, only the header line; a CSV needs one row per example under it",
    ),
    "na": (
        lambda lines: set_value(lines, 8, 3, "n/a"),
        " line 8 (the header is line 1), column 'pixel_3': no value ('n/a')",
    ),
    "nan": (
        lambda lines: set_value(lines, 8, 3, "NaN"),
        " line 8 (the header is line 1), column 'pixel_3': no value ('NaN')",
    ),
    "empty_value": (
        lambda lines: (set_value(lines, 8, 3, ""), set_value(lines, 9, 5, "")),
        " line 8 (the header is line 1), column 'pixel_3': no value (empty); 1 more row has missing values",
    ),
    "short_row": (
        lambda lines: lines.__setitem__(9, ",".join(lines[9].split(",")[:-3])),
        " line 10 (the header is line 1): 62 values for the header's 65 columns, none for 'pixel_62' or after it",
    ),
    "long_row": (
        lambda lines: lines.__setitem__(9, lines[9] + ",7"),
        " line 10 (the header is line 1): 66 values for the header's 65 columns",
    ),
    "text": (
        lambda lines: set_value(lines, 20, 0, "abc"),
        " line 20 (the header is line 1), column 'pixel_0': 'abc' is not a number; feature columns must be numeric",
    ),
}


@pytest.mark.parametrize("name", BAD_DATA)
def test_bad_data_is_one_line_naming_row_and_column(tmp_path, capsys, name):
    change, expected = BAD_DATA[name]
    cfg = digits_with(tmp_path, f"{name}.csv", change)
    assert cli.check_config([str(cfg)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: {cfg}: {tmp_path / name}.csv{expected}\n"


def test_a_label_outside_the_classes_is_never_advice_to_change_num_classes(tmp_path, capsys):
    for label in (42, 10, -1, "ten"):
        cfg = digits_with(tmp_path, "one.csv", lambda lines, label=label: set_label(lines, 52, label))
        assert cli.check_config([str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"line 52 (the header is line 1): label {label}; the config has 10 classes" in err
        assert "set it to" not in err and "num_classes: 10," not in err


def test_a_real_difference_in_classes_still_says_how_many(tmp_path, capsys):
    cfg = tmp_path / "five.yaml"
    cfg.write_text(f"data: {{dataset_path: {ROOT / 'data' / 'digits.csv'}}}\nmodel: {{num_classes: 5}}\n")
    assert cli.check_config([str(cfg)]) == 2
    expected = f"model.num_classes: 5, but {ROOT / 'data' / 'digits.csv'} has 10 classes; set it to 10"
    assert capsys.readouterr().err == f"error: {cfg}: {expected}\n"


def test_ok_says_what_data_it_read(capsys):
    code, out, lines = check(capsys, TINY_CONFIG)
    assert code == 0 and lines == []
    assert out == (
        f"{ROOT / 'configs' / 'tiny.yaml'}: ok (mlp, 6 epochs, batch 32, lr 0.003; "
        "data/digits.csv: 1,797 rows, 10 classes, split 1,257/270/270)\n"
    )


def test_data_too_small_to_split_is_refused_by_check_config(tmp_path, capsys):
    "ok means training takes the data: a set the split refuses is refused here too."
    (tmp_path / "few.csv").write_text("x,label\n1,0\n2,0\n3,1\n4,1\n")
    cfg = tmp_path / "few.yaml"
    cfg.write_text(f"data: {{dataset_path: {tmp_path / 'few.csv'}}}\nmodel: {{num_classes: 2}}\n")
    assert cli.check_config([str(cfg)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {cfg}: cannot split 4 rows of 2 classes as 0.7/0.15/0.15")
