"""The course's own config.yaml, verbatim, is accepted: what it spells differently is read, what conflicts is named.

tests/data/course_config.yaml is the course's file, byte for byte. It loads (the course's
`train_split`/`val_split`/`test_split`, `dataset_path: "./data"` and `resnet18` are all
understood); `mlops-check-config` and `mlops-train` then name its two genuine conflicts, one
line each, exit 2: `num_classes: 2` against the 10 digits, and `pretrained: true`, which for
torchvision's resnet18 would mean downloading ImageNet weights. With those two lines changed
it checks clean and trains.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from paths import ROOT

from mlops_day28 import cli
from mlops_day28.config import Config, DataConfig, ModelConfig, load_config
from mlops_day28.data import DataError, find_dataset, load_dataset
from mlops_day28.models import ResNet18, build_model, count_parameters

COURSE = ROOT / "tests" / "data" / "course_config.yaml"  # the course's file, verbatim
NUM_CLASSES_LINE = "model.num_classes: 2, but data/digits.csv has 10 classes; set it to 10"
PRETRAINED_LINE = (
    "model.pretrained: true would mean ImageNet weights for resnet18, and ImageNet weights are not downloaded "
    "in this offline workbook; set model.pretrained: false"
)


def fixed_course_config(folder: Path) -> Path:
    "The course's config with its two conflicts fixed, in a throw-away project under `folder` that links our data/."
    (folder / "pyproject.toml").write_text("# a throw-away project for the course's config\n")
    (folder / "data").symlink_to(ROOT / "data", target_is_directory=True)
    text = (
        COURSE.read_text().replace("pretrained: true", "pretrained: false").replace("num_classes: 2", "num_classes: 10")
    )
    path = folder / "configs" / "course.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def errors(capsys) -> tuple[str, list[str]]:
    out, err = capsys.readouterr()
    return out, err.strip().splitlines()


# --- the verbatim file: exactly its two conflicts ---


def test_the_course_file_loads_with_its_splits_in_one_place():
    cfg = load_config(COURSE)
    assert (cfg.data.splits.train, cfg.data.splits.val, cfg.data.splits.test) == (0.7, 0.15, 0.15)
    assert cfg.model.architecture == "resnet18" and cfg.training.scheduler == "cosine"
    flat = [k for k in cfg.model_dump()["data"]]
    assert "train_split" not in flat and "splits" in flat  # the run's params get each fraction once


def test_check_config_names_exactly_the_two_conflicts(capsys):
    assert cli.check_config([str(COURSE)]) == 2
    out, lines = errors(capsys)
    assert out == ""
    assert lines == [f"error: {COURSE}: {NUM_CLASSES_LINE}", f"error: {COURSE}: {PRETRAINED_LINE}"]


def test_train_refuses_the_same_way_before_any_run(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: it must not get that far
    assert cli.train(["--config", str(COURSE)]) == 2
    out, lines = errors(capsys)
    assert out == ""
    assert lines == [f"error: {COURSE}: {NUM_CLASSES_LINE}", f"error: {COURSE}: {PRETRAINED_LINE}"]


def test_train_refuses_too_few_classes_with_the_check_config_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    cfg = fixed_course_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("num_classes: 10", "num_classes: 2"))
    assert cli.check_config([str(cfg)]) == 2
    _, check_lines = errors(capsys)
    assert cli.train(["--config", str(cfg)]) == 2
    _, train_lines = errors(capsys)
    assert train_lines == check_lines == [f"error: {cfg}: {NUM_CLASSES_LINE}"]


def test_the_fixed_course_file_passes_check_config(tmp_path, capsys):
    cfg = fixed_course_config(tmp_path)
    assert cli.check_config([str(cfg)]) == 0
    out, lines = errors(capsys)
    assert lines == []
    assert out.strip() == (
        f"{cfg}: ok (resnet18, 20 epochs, batch 32, lr 0.001; data/digits.csv: 1,797 rows, 10 classes, split 1,257/270/270)"
    )


# --- data.train_split / val_split / test_split ---


def test_both_spellings_of_a_split_are_one_line_error(tmp_path, capsys):
    bad = tmp_path / "both.yaml"
    bad.write_text("data:\n  train_split: 0.7\n  splits: {train: 0.7}\n")
    assert cli.check_config([str(bad)]) == 2
    _, lines = errors(capsys)
    assert lines == [f"error: {bad}: data: train_split and splits.train both give the train fraction: keep one of them"]


def test_course_split_keys_are_the_splits():
    cfg = Config(data={"train_split": 0.8, "val_split": 0.1, "test_split": 0.1, "splits": {}})
    assert cfg.data.splits.model_dump() == {"train": 0.8, "val": 0.1, "test": 0.1}
    mixed = Config(data={"train_split": 0.6, "splits": {"val": 0.2, "test": 0.2}})  # different fractions, each once
    assert mixed.data.splits.model_dump() == {"train": 0.6, "val": 0.2, "test": 0.2}
    with pytest.raises(ValueError, match="must sum to 1"):
        Config(data={"train_split": 0.8})


# --- data.dataset_path: a folder holding one CSV ---


def test_a_folder_holding_one_csv_is_that_csv(tmp_path):
    assert find_dataset(ROOT / "data") == ROOT / "data" / "digits.csv"  # beside its README.md
    assert load_dataset(DataConfig(dataset_path="./data"), ROOT).digest == load_dataset(Config(), ROOT).digest
    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(DataError, match="holds neither a CSV file nor class sub-folders of images"):
        find_dataset(tmp_path)
    (tmp_path / "a.csv").write_text("x,label\n1,0\n")
    assert find_dataset(tmp_path) == tmp_path / "a.csv"
    (tmp_path / "b.csv").write_text("x,label\n1,0\n")
    with pytest.raises(DataError, match=r"holds 2 CSV files \(a.csv, b.csv\); name the one to use"):
        find_dataset(tmp_path)


def test_class_sub_folders_of_images_still_win(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("L", (4, 4), 9).save(tmp_path / cls / "0.png")
    (tmp_path / "labels.csv").write_text("x,label\n1,0\n")
    assert find_dataset(tmp_path) == tmp_path


# --- model.architecture: resnet18, torchvision's layout without torchvision ---


def torchvision_resnet18_layout(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    "state_dict key -> shape of torchvision.models.resnet18(weights=None, num_classes=...), written out from its source."
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name, c):
        shapes.update({f"{name}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for i, planes in enumerate([64, 128, 256, 512], start=1):
        for b in range(2):
            block, cin = f"layer{i}.{b}", inplanes if b == 0 else planes
            shapes[f"{block}.conv1.weight"] = (planes, cin, 3, 3)
            bn(f"{block}.bn1", planes)
            shapes[f"{block}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{block}.bn2", planes)
            if b == 0 and i > 1:
                shapes[f"{block}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{block}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"], shapes["fc.bias"] = (num_classes, 512), (num_classes,)
    return shapes


def test_resnet18_has_torchvisions_parameter_count_and_state_dict():
    model = ResNet18()  # 3 channels, 1000 classes: torchvision's defaults
    assert count_parameters(model) == 11_689_512
    sd = model.state_dict()
    assert list(sd) == list(torchvision_resnet18_layout())  # the same keys, in torchvision's order
    assert {k: tuple(v.shape) for k, v in sd.items()} == torchvision_resnet18_layout()
    assert len(sd) == 122
    for key, shape in {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer4.1.bn2.weight": (512,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in sd  # layer1 keeps 64 channels at stride 1: no downsample


def test_resnet18_for_grey_digits_keeps_the_layout():
    grey = ResNet18((1, 8, 8), num_classes=10)
    assert {k: tuple(v.shape) for k, v in grey.state_dict().items()} == torchvision_resnet18_layout(10)
    assert count_parameters(grey) == 11_689_512 - 1000 * 513 + 10 * 513  # the channel adapter adds nothing
    grey.load_state_dict(ResNet18((3, 32, 32), 10).state_dict())  # weights move between channel counts
    x = torch.rand(5, 64) * 16
    assert grey.eval()(x).shape == (5, 10)
    img = x.reshape(5, 1, 8, 8)
    assert torch.equal(grey(img), grey(img.repeat(1, 3, 1, 1)))  # greyscale is fed as three equal channels


def test_build_model_puts_standardize_in_front_of_resnet18():
    X = (torch.rand(32, 64) * 16).numpy()
    model = build_model(ModelConfig(architecture="resnet18"), X, (1, 8, 8))
    assert type(model[0]).__name__ == "Standardize" and isinstance(model[1], ResNet18)
    assert count_parameters(model) == 11_689_512 - 1000 * 513 + 10 * 513  # Standardize holds buffers only
    assert model.eval()(torch.from_numpy(X[:2])).shape == (2, 10)


def test_pretrained_resnet18_is_refused_but_our_pretrained_is_unchanged():
    X = (torch.rand(32, 64) * 16).numpy()
    with pytest.raises(ValueError, match="ImageNet weights are not downloaded in this offline workbook"):
        build_model(ModelConfig(architecture="resnet18", pretrained=True), X, (1, 8, 8))
    for arch in ("mlp", "cnn", "resnet"):  # pretrained: the champion's weights, applied by the pipeline
        build_model(ModelConfig(architecture=arch, pretrained=True), X, (1, 8, 8))


# --- end to end: the fixed course config trains against a server of the test's own ---


@pytest.mark.server
@pytest.mark.slow
def test_the_fixed_course_config_trains(tmp_path):
    import psutil

    from mlops_day28.reliability.local_server import start_tracking_server
    from mlops_day28.reliability.processes import free_port, stop_process

    cfg = fixed_course_config(tmp_path)
    srv = start_tracking_server(port=free_port(), root=tmp_path, timeout=120)
    pids = {srv.pid, *(c.pid for c in psutil.Process(srv.pid).children(recursive=True))}
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": srv.uri, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
        r = subprocess.run(
            [str(Path(sys.executable).parent / "mlops-train"), "--config", str(cfg), "--set", "training.num_epochs=1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"Run: {srv.uri}/#/experiments/" in r.stdout
    finally:
        for pid in pids:
            stop_process(pid, timeout=5)
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"server processes left running: {left}"
