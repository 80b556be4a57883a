"""Every `mlops-*` command against the same four faults: one line, the right exit code, and nothing started.

The table is the contract of README's exit codes: 2 for bad input (a bad argument, a bad
config, missing data: found before anything starts), 1 for a tracking server that does not
answer. Each command runs in this process (`cli.<command>(argv)`), as its console script
does; each also has one end-to-end test of the real command in its own test file.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from paths import ROOT, TINY_CONFIG

from mlops_day28 import cli
from mlops_day28.reliability.processes import free_port

TINY = str(TINY_CONFIG)
COMMANDS = ["mlflow", "check_config", "train", "sweep", "evaluate", "deploy", "serve"]
FAULTS = ["bad argument", "bad config", "missing data", "server down"]
NOT_APPLICABLE = {  # why a command cannot meet a fault
    ("mlflow", "bad config"): "mlops-mlflow reads no config",
    ("mlflow", "missing data"): "mlops-mlflow reads no data",
    ("check_config", "server down"): "mlops-check-config talks to no server",
}
DOWN = "server is down"  # placeholder for a URI where nothing listens


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "A bad config, a config whose data is missing, and a model folder logged without an input profile."
    from mlops_day28.config import load_config
    from mlops_day28.tracking import save_torch_model
    from mlops_day28.training import prepare_training

    d = tmp_path_factory.mktemp("cli")
    (d / "bad.yaml").write_text("training: {learning_rat: 0.01}\n")
    (d / "nodata.yaml").write_text(Path(TINY).read_text() + f"\ndata:\n  dataset_path: {d / 'missing.csv'}\n")
    job = prepare_training(load_config(TINY))
    save_torch_model(job.model, job.splits.train.X[:5], d / "model")  # no profile: serving it needs the data
    return {"bad": str(d / "bad.yaml"), "nodata": str(d / "nodata.yaml"), "model": str(d / "model")}


def table(f: dict) -> dict:
    "(command, fault) -> (arguments, environment, exit code, the message that must be in the one line)."
    deploy = {"DEPLOY_MLFLOW_TRACKING_URI": DOWN}
    return {
        ("mlflow", "bad argument"): (["start", "--port", "0"], {}, 2, "Invalid value for '--port'"),
        ("mlflow", "server down"): (["status", "--port", "PORT"], {}, 1, "no MLflow server at http://127.0.0.1:"),
        ("check_config", "bad argument"): ([], {}, 2, "Missing argument 'PATH...'"),
        ("check_config", "bad config"): ([f["bad"]], {}, 2, "training.learning_rat: unknown key"),
        ("check_config", "missing data"): ([f["nodata"]], {}, 2, "data.dataset_path:"),
        ("train", "bad argument"): (["--config", TINY, "--frobnicate"], {}, 2, "No such option: --frobnicate"),
        ("train", "bad config"): (["--config", f["bad"]], {}, 2, "training.learning_rat: unknown key"),
        ("train", "missing data"): (["--config", f["nodata"]], {}, 2, "data.dataset_path:"),
        ("train", "server down"): (["--config", TINY], {"MLFLOW_TRACKING_URI": DOWN}, 1, "does not answer"),
        ("sweep", "bad argument"): (["--config", TINY, "--n-jobs", "0"], {}, 2, "Invalid value for '--n-jobs'"),
        ("sweep", "bad config"): (["--config", f["bad"]], {}, 2, "training.learning_rat: unknown key"),
        ("sweep", "missing data"): (["--config", f["nodata"]], {}, 2, "data.dataset_path:"),
        ("sweep", "server down"): (["--config", TINY], {"MLFLOW_TRACKING_URI": DOWN}, 1, "does not answer"),
        ("evaluate", "bad argument"): (["--model", f["model"], "--threshold", "85"], {}, 2, "'--threshold'"),
        ("evaluate", "bad config"): (["--model", f["model"], "--config", f["bad"]], {}, 2, "learning_rat"),
        ("evaluate", "missing data"): (["--model", f["model"], "--config", f["nodata"]], {}, 2, "data.dataset_path:"),
        ("evaluate", "server down"): (
            ["--model", "models:/digits-classifier@champion", "--config", TINY],
            {"MLFLOW_TRACKING_URI": DOWN},
            1,
            "does not answer",
        ),
        ("deploy", "bad argument"): ([], deploy, 2, "Missing option '--model'"),
        ("deploy", "bad config"): (["--model", f["model"], "--config", f["bad"]], deploy, 2, "learning_rat"),
        ("deploy", "missing data"): (["--model", f["model"], "--config", f["nodata"]], deploy, 2, "data.dataset_path:"),
        ("deploy", "server down"): (
            ["--model", f["model"], "--config", TINY],
            deploy,
            1,
            "DEPLOY_MLFLOW_TRACKING_URI=",
        ),
        ("serve", "bad argument"): (["--port", "70000"], {}, 2, "Invalid value for '--port'"),
        ("serve", "bad config"): (["--config", f["bad"]], {}, 2, "training.learning_rat: unknown key"),
        ("serve", "missing data"): (
            ["--config", f["nodata"], "--model", f["model"]],
            {},
            2,
            "logged without an input profile and the config's data cannot be read",
        ),
        ("serve", "server down"): (["--config", TINY], {"MLFLOW_TRACKING_URI": DOWN}, 1, "does not answer"),
    }


def test_the_table_covers_every_command_and_fault(files):
    cases = set(table(files)) | set(NOT_APPLICABLE)
    assert cases == {(c, f) for c in COMMANDS for f in FAULTS}
    assert not set(table(files)) & set(NOT_APPLICABLE)
    entry_points = (ROOT / "pyproject.toml").read_text()
    for command in COMMANDS:
        assert f'"mlops_day28.cli:{command}"' in entry_points


@pytest.mark.parametrize("command,fault", [(c, f) for c in COMMANDS for f in FAULTS if (c, f) not in NOT_APPLICABLE])
def test_each_command_meets_each_fault_with_one_line(files, monkeypatch, capsys, command, fault):
    args, env, code, message = table(files)[command, fault]
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = [a.replace("PORT", down.rsplit(":", 1)[1]) for a in args]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DEPLOY_MLFLOW_TRACKING_URI", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, down if value == DOWN else value)
    assert getattr(cli, command)(args) == code
    out, err = capsys.readouterr()
    if command == "mlflow" and fault == "server down":  # `status` answers the question on stdout
        assert message in out and err == ""
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err


def test_an_unexpected_failure_is_one_line_and_exit_1(monkeypatch, capsys):
    import mlops_day28.reliability.local_server as ts

    def boom(*args, **kwargs):
        raise KeyError("something nobody expected")

    monkeypatch.setattr(ts, "start_tracking_server", boom)
    assert cli.mlflow(["start"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: mlops-mlflow: unexpected KeyError: 'something nobody expected' (MLOPS_DEBUG=1 shows the traceback)"
    ]
    monkeypatch.setenv("MLOPS_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.mlflow(["start"])


HEAVY = ("torch", "mlflow", "sklearn", "pandas", "optuna", "fastapi")


def test_help_and_argument_errors_import_nothing_heavy():
    "`--help` and a bad argument answer before torch, MLflow and the rest are imported (bench/ has the seconds)."
    code = textwrap.dedent(f"""
        import sys
        from mlops_day28 import cli
        for command in {COMMANDS!r}:
            assert getattr(cli, command)(["--help"]) == 0, command
            assert getattr(cli, command)(["--no-such-option"]) == 2, command
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, heavy
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage: mlops-train [OPTIONS]" in r.stdout and "Usage: mlops-mlflow [OPTIONS] COMMAND" in r.stdout


@pytest.mark.parametrize(("stop", "code", "words"), [("ctrl-c", 130, "interrupted"), ("sigterm", 143, "terminated")])
def test_a_stopped_command_exits_130_or_143_with_one_line(capsys, stop, code, words):
    "Ctrl-C and SIGTERM unwind the command (so its run ends KILLED) and end it the way a shell expects."
    import os
    import signal

    @cli.command("mlops-demo")
    def demo() -> None:
        "Wait to be stopped."
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # raised in this (the main) thread as `Terminated`
        pytest.fail("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    assert demo([]) == code
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only while it runs
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {words}") and "KILLED" in line
