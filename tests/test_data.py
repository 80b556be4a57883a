"""The bundled dataset matches its datasheet, and the loaders accept a learner's own data."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlops_day28.data import load_csv_dataset, load_dataset, split_dataset
from mlops_day28.schema import Config, DataConfig
from mlops_day28.training import prepare_training

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "data" / "digits.csv"
SHEET = (ROOT / "data" / "README.md").read_text()


def test_datasheet_sha256_and_size_match_the_file():
    sha = re.search(r"sha256 \| `([0-9a-f]{64})`", SHEET).group(1)
    size = int(re.search(r"Size \| ([\d,]+) bytes", SHEET).group(1).replace(",", ""))
    assert hashlib.sha256(CSV.read_bytes()).hexdigest() == sha
    assert CSV.stat().st_size == size


def test_datasheet_schema_and_class_counts_match_the_file():
    ds = load_csv_dataset(CSV)
    assert ds.X.shape == (1797, 64)
    assert ds.feature_names == [f"pixel_{i}" for i in range(64)]
    assert ds.X.min() == 0 and ds.X.max() == 16 and np.all(np.round(ds.X) == ds.X)
    counts = dict(zip(*np.unique(ds.y, return_counts=True), strict=False))
    for digit, n in re.findall(r"(\d): (\d{3})", SHEET):
        assert counts[int(digit)] == int(n)


def test_dataset_digest_is_the_file_sha256():
    assert load_dataset(Config()).digest == hashlib.sha256(CSV.read_bytes()).hexdigest()


def test_own_csv_with_text_labels_trains(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,b,c,species"]
    for i in range(150):
        k = i % 3
        rows.append(",".join(f"{v:.3f}" for v in rng.normal(k * 5, 1, 3)) + f",{['ant', 'bee', 'cat'][k]}")
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    cfg = Config.model_validate(
        {
            "data": {"dataset_path": str(tmp_path / "mine.csv"), "label_column": "species"},
            "model": {"num_classes": 3, "hidden_size": 16},
            "training": {"num_epochs": 15, "learning_rate": 0.01},
        }
    )
    job = prepare_training(cfg)
    assert job.dataset.class_names == ["ant", "bee", "cat"]
    assert job.dataset.image_shape is None  # 3 features: not an image
    job.fit(progress=False)
    assert job.test_metrics()["test_accuracy"] > 0.8


def test_wrong_num_classes_is_named(tmp_path):
    cfg = Config.model_validate({"model": {"num_classes": 5}})
    with pytest.raises(ValueError, match=r"model\.num_classes: 5, but .*digits\.csv has 10 classes; set it to 10"):
        prepare_training(cfg)


def test_image_folder_trains_a_cnn(tmp_path):
    rng = np.random.default_rng(0)
    for cls, row in [("top", 1), ("bottom", 6)]:
        (tmp_path / cls).mkdir()
        for i in range(20):
            img = rng.integers(0, 30, (8, 8)).astype(np.uint8)
            img[row] = 255
            Image.fromarray(img).resize((16, 16)).save(tmp_path / cls / f"{i}.png")
    cfg = Config.model_validate(
        {
            "data": {"dataset_path": str(tmp_path), "image_size": 8},
            "model": {"architecture": "cnn", "num_classes": 2, "hidden_size": 8},
            "training": {"num_epochs": 10, "learning_rate": 0.01},
        }
    )
    job = prepare_training(cfg)
    assert job.dataset.image_shape == (1, 8, 8)
    job.fit(progress=False)
    assert job.test_metrics()["test_accuracy"] >= 0.8


def test_mixed_image_sizes_need_image_size(tmp_path):
    for cls, size in [("a", 8), ("b", 9)]:
        (tmp_path / cls).mkdir()
        Image.new("L", (size, size)).save(tmp_path / cls / "0.png")
    with pytest.raises(ValueError, match=r"set data\.image_size to resize"):
        load_dataset(DataConfig(dataset_path=str(tmp_path)))


def test_too_few_rows_to_stratify_is_explained(tmp_path):
    (tmp_path / "few.csv").write_text("x,label\n1,0\n2,0\n3,1\n4,1\n")
    ds = load_csv_dataset(tmp_path / "few.csv")
    with pytest.raises(ValueError, match="cannot split 4 rows of 2 classes"):
        split_dataset(ds)
