"""Files that are not configs at all: too big, binary, not UTF-8, or a YAML bomb.

Each is refused before it is parsed (or, for a bomb, before its aliases are expanded),
with exit code 2 and one short line that names the file and the problem.

Then configs that parse but would fail later, or silently do something else: a name over
MLflow's limit (a 1,000,000-character experiment name once failed at the server, 24 s in), a
key given twice (YAML keeps the last, silently), and data with a stray label. The real
commands refuse each in one line, exit 2, and the test's own tracking server is left with
nothing: no experiment, no run, no registered model.
"""

from itertools import pairwise
from pathlib import Path

import pytest
from paths import ROOT

from mlops_day28 import cli
from mlops_day28.config import MAX_CONFIG_BYTES, ConfigError, apply_overrides, load_config

LETTERS = "abcdefghi"
BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]\n""" + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in pairwise(LETTERS)
)  # 9 levels of 9 aliases: 9**9 strings once expanded
ALIASES = "".join(f"k{i}: *x\n" for i in range(101))  # harmless each, but no config needs 101 aliases

FAULTS = {  # name -> (file content, what the one line must say)
    "huge": (b"seed: 1\n" + b"#" * MAX_CONFIG_BYTES, "over the 1,048,576-byte limit for a config"),
    "binary": (b"PK\x03\x04\x14\x00\x00\x00\x08\x00model weights", "a binary file, not YAML (NUL byte at offset 5)"),
    "latin1": ("model: {architecture: caf\xe9}\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 25)"),
    "bomb": (BOMB.encode(), "YAML aliases expand to over 10,000 values at line 5"),
    "bomb in a key": ((BOMB + "seed: *i\n").encode(), "is this a YAML bomb?"),
    "many aliases": (("x: &x 1\n" + ALIASES).encode(), "too many YAML aliases (over 100) at line 102"),
    "recursive alias": (b"seed: &s [*s]\n", "refers to the node that contains it"),
}


@pytest.fixture(params=FAULTS, ids=str)
def fault(request, tmp_path):
    "(a bad config file, the words its one line must contain)"
    content, expected = FAULTS[request.param]
    path = tmp_path / f"{request.param.replace(' ', '_')}.yaml"
    path.write_bytes(content)
    return path, expected


def one_line(capsys, path: Path, expected: str) -> str:
    "The single `error:` line on stderr, checked: it names the file, says `expected`, and is short."
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err[:1000]
    line = lines[0]
    assert line.startswith(f"error: {path}: "), line
    assert expected in line and len(line) < 300, line
    assert "Traceback" not in err
    return line


def test_the_bomb_is_small():
    assert len(BOMB) < 400 and BOMB.count("*") == 72  # under the alias limit: the expansion limit catches it


def test_load_config_refuses_it(fault):
    path, expected = fault
    with pytest.raises(ConfigError, match=r"YAML|UTF-8|byte") as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and expected in msg and len(msg) < 300 and "\n" not in msg


def test_check_config_exits_2_with_one_short_line(fault, capsys):
    path, expected = fault
    assert cli.check_config([str(path)]) == 2
    one_line(capsys, path, expected)


def test_train_refuses_a_bomb_the_same_way(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + "seed: *i\n")
    assert cli.train(["--config", str(path)]) == 2
    one_line(capsys, path, "is this a YAML bomb?")


def test_a_file_just_under_the_limit_is_read(tmp_path):
    path = tmp_path / "padded.yaml"
    path.write_bytes(b"seed: 3\n" + b"#" * (MAX_CONFIG_BYTES - 9) + b"\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(path).seed == 3


def test_utf8_with_a_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffexperiment_name: café\n".encode())
    assert load_config(path).experiment_name == "café"


def test_a_huge_bad_value_is_shown_cut(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(f"model: {{architecture: {'x' * 500_000}}}\n")
    assert cli.check_config([str(path)]) == 2
    line = one_line(capsys, path, "model.architecture: Input should be")
    assert line.endswith("(got 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx')"), line


def test_many_bad_keys_make_one_bounded_message(tmp_path, capsys):
    path = tmp_path / "many.yaml"
    path.write_text("".join(f"key{i}: 1\n" for i in range(5000)))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).endswith("; and 4995 more") and len(str(e.value)) < 1000
    assert cli.check_config([str(path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {path}: key0: unknown key") and len(line) <= len("error: ") + 500


def test_an_absurdly_long_override_is_refused(tmp_path, capsys):
    tiny = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError, match="over the 10,000-character limit") as e:
        load_config(tiny, ["experiment_name=" + "x" * 20_000])
    assert str(e.value) == "--set 'experiment_name'=...: 20,016 characters, over the 10,000-character limit"
    with pytest.raises(ConfigError, match=r"^--set 'x{27}\.\.\.x{28}': 20,000 characters"):
        apply_overrides({}, ["x" * 20_000])
    with pytest.raises(ConfigError, match=r"^--set 'sweep\.grid': YAML aliases expand"):
        apply_overrides({}, ["sweep.grid={" + ", ".join(BOMB.splitlines()) + "}"])
    assert cli.train(["--config", str(tiny), "--set", "seed=" + "1" * 20_000]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --set 'seed'=...: 20,005 characters, over the 10,000-character limit"]


# --- configs and data that MLflow or training would refuse later: refused first, nothing reaches the server ---


def bad_inputs(project) -> dict[str, tuple[Path, str]]:
    "Configs in `project` that must be refused up front -> (the config, its one line after `error: {config}: `)."
    long = project.config("long_name", experiment_name="e" * 1_000_000)  # under 1 MB: MLflow refused it 24 s in
    assert long.stat().st_size < MAX_CONFIG_BYTES
    twice = project.config("twice")
    text = twice.read_text()
    first = text.splitlines().index("seed: 42") + 1
    twice.write_text(text + "seed: 7\n")  # the later one would win, silently
    lines = (ROOT / "data" / "digits.csv").read_text().splitlines()
    lines[51] = lines[51].rsplit(",", 1)[0] + ",42"  # line 52: one mistyped label
    typo = project.path / "data" / "typo.csv"
    typo.parent.mkdir(exist_ok=True)
    typo.write_text("\n".join(lines) + "\n")
    return {
        "long_name": (long, "experiment_name: 1,000,000 characters, over MLflow's limit of 256 for an experiment name"),
        "twice": (
            twice,
            f"seed is given twice, on lines {first} and {len(text.splitlines()) + 1} "
            "(YAML would silently keep the last): keep one of them",
        ),
        "label42": (
            project.config("label42", data={"dataset_path": str(typo)}),
            f"{typo} line 52 (the header is line 1): label 42; the config has 10 classes (model.num_classes), "
            "and no other row has this label: correct or remove the row",
        ),
    }


@pytest.mark.server
@pytest.mark.slow
def test_train_refuses_them_in_one_line_and_the_server_gets_nothing(project, server):
    from mlflow import MlflowClient

    cases = bad_inputs(project)
    checked = project.run("mlops-check-config", *(str(path) for path, _ in cases.values()), timeout=120)
    assert checked.returncode == 2 and checked.stdout == ""
    assert checked.stderr.splitlines() == [f"error: {path}: {line}" for path, line in cases.values()]
    for name, (path, line) in cases.items():
        r = project.run("mlops-train", "--config", str(path), timeout=120)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"error: {path}: {line}\n"), name
    path, line = cases["label42"]
    r = project.run("mlops-sweep", "--config", str(path), timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"error: {path}: {line}\n")
    client = MlflowClient(server.uri)
    experiments = client.search_experiments()
    assert [e.name for e in experiments] == ["Default"]
    assert client.search_runs([e.experiment_id for e in experiments]) == []
    assert client.search_registered_models() == []
