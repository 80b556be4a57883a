"""The bundled dataset matches its datasheet, and the loaders accept a learner's own data."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from paths import ROOT
from PIL import Image

from mlops_day28.config import Config, DataConfig, SplitsConfig
from mlops_day28.data import (
    DataError,
    check_classes,
    config_conflicts,
    csv_line,
    load_csv_dataset,
    load_dataset,
    split_dataset,
)
from mlops_day28.training import prepare_training

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


# --- errors that name the line (the file's, the header is line 1) and the column ---


def write(tmp_path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(path: Path) -> str:
    "What `load_csv_dataset` says of `path`, the path itself left out."
    with pytest.raises(DataError) as e:
        load_csv_dataset(path)
    return str(e.value).removeprefix(str(path))


def test_csv_line_is_the_line_an_editor_shows(tmp_path):
    path = write(tmp_path, '\nx,label\n1,a\n\n   \n2,"b\nc"\n3,d\n')  # blank lines, a value on two lines
    assert len(pd.read_csv(path)) == 3
    assert [csv_line(path, row) for row in range(3)] == [3, 6, 8]


def test_an_empty_file_and_a_header_only_file_say_so(tmp_path):
    assert refusal(write(tmp_path, "")) == ": the file is empty; a CSV needs a header line and one row per example"
    assert refusal(write(tmp_path, "\n\n")) == ": the file is empty; a CSV needs a header line and one row per example"
    header = refusal(write(tmp_path, "a,b,label\n"))
    assert header == ": no rows, only the header line; a CSV needs one row per example under it"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a,b,label\n1,2,0\n3,,1\n", " line 3 (the header is line 1), column 'b': no value (empty)"),
        ("a,b,label\n1,2,0\n3,NaN,1\n", " line 3 (the header is line 1), column 'b': no value ('NaN')"),
        ("a,b,label\n1,2,\n", " line 2 (the header is line 1), column 'label': no value (empty)"),
        (
            "a,b,label\n1,2,0\n\n3\n",
            " line 4 (the header is line 1): 1 values for the header's 3 columns, none for 'b' or after it",
        ),
        (
            "a,b,label\n1,2,0\n3,4\n",
            " line 3 (the header is line 1): 2 values for the header's 3 columns, none for 'label'",
        ),
        ("a,b,label\n1,2,0\n3,4,1,5\n", " line 3 (the header is line 1): 4 values for the header's 3 columns"),
        (
            "a,b,label\n1,2,0\n3,x,1\n",
            " line 3 (the header is line 1), column 'b': 'x' is not a number; feature columns must be numeric",
        ),
        (
            "a,b,label\n1,2,0\n3,inf,1\n",
            " line 3 (the header is line 1), column 'b': inf is not a finite float32 number",
        ),
        (
            "a,b,label\n1,2,0\n3,4e40,1\n",
            " line 3 (the header is line 1), column 'b': 4e+40 is not a finite float32 number",
        ),
        (
            "a,b,label\n1,,0\n2,,0\n3,,1\n",
            " line 2 (the header is line 1), column 'b': no value (empty); 2 more rows have missing values",
        ),
    ],
)
def test_a_bad_value_or_row_is_named_by_line_and_column(tmp_path, text, expected):
    assert refusal(write(tmp_path, text)) == expected


def test_a_file_that_is_not_utf8_or_a_folder_of_broken_images_is_one_line(tmp_path):
    assert refusal(write(tmp_path, "")) != ""
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("x,label\n1,caf\xe9\n".encode("latin-1"))
    assert refusal(bad) == ": not UTF-8 text on line 2 (byte 0xe9); save it as UTF-8"
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("L", (4, 4)).save(tmp_path / "imgs" / cls / "0.png")
    (tmp_path / "imgs" / "b" / "1.png").write_text("not a png")
    with pytest.raises(DataError, match=r"imgs/b/1\.png: not a readable image \(UnidentifiedImageError\)$"):
        load_dataset(DataConfig(dataset_path=str(tmp_path / "imgs")))


# --- labels against model.num_classes ---


def digits_with_labels(tmp_path, labels: dict[int, object]) -> Path:
    "The bundled digits, with the label on each line in `labels` (the file's line numbers) changed."
    lines = CSV.read_text().splitlines()
    for line, label in labels.items():
        lines[line - 1] = lines[line - 1].rsplit(",", 1)[0] + f",{label}"
    return write(tmp_path, "\n".join(lines) + "\n", "digits.csv")


def test_one_stray_label_is_named_by_line_never_as_a_new_class(tmp_path):
    path = digits_with_labels(tmp_path, {52: 42})
    cfg = Config.model_validate({"data": {"dataset_path": str(path)}})
    expected = (
        f"{path} line 52 (the header is line 1): label 42; the config has 10 classes (model.num_classes), "
        "and no other row has this label: correct or remove the row"
    )
    with pytest.raises(DataError) as e:
        load_dataset(cfg)
    assert str(e.value) == expected
    with pytest.raises(DataError) as e:  # training refuses it with the same line
        prepare_training(cfg)
    assert str(e.value) == expected
    assert config_conflicts(cfg) == [expected]  # and so does mlops-check-config (core/01_config)


def test_a_few_stray_rows_are_counted(tmp_path):
    path = digits_with_labels(tmp_path, {30: 11, 40: 12, 50: 12})
    with pytest.raises(DataError) as e:
        check_classes(load_csv_dataset(path), 10)
    assert str(e.value) == (
        f"{path} line 30 (the header is line 1): label 11; the config has 10 classes (model.num_classes), "
        "and no other row has this label: correct or remove the row; 3 rows in all have labels this rare"
    )


def test_strays_depend_on_the_split_fractions():
    "A label on fewer rows than `ceil(1 / smallest fraction)` cannot have a row in every split."
    ds = load_csv_dataset(CSV)
    rows = np.flatnonzero(ds.y == 9)[:9]  # nine rows of 9, the rest of 9 made into 8
    y = ds.y.copy()
    y[(ds.y == 9)] = 8
    y[rows] = 9
    small = type(ds)(**{**ds.__dict__, "y": y})
    with pytest.raises(DataError, match="set it to 10"):  # 9 rows: a class at 15% (7 are enough)
        check_classes(small, 11)
    with pytest.raises(DataError, match=r"label 9; the config has 11 classes .* only 9 rows have this label"):
        check_classes(small, 11, SplitsConfig(train=0.8, val=0.1, test=0.1))  # 10 are needed at 10%


def test_the_split_refuses_what_check_classes_lets_through(tmp_path):
    "Data with the config's number of labels, one of them on a single row: the split names the problem."
    path = digits_with_labels(tmp_path, {52: 42})
    cfg = Config.model_validate({"data": {"dataset_path": str(path)}, "model": {"num_classes": 11}})
    ds = load_dataset(cfg)  # 11 labels for 11 classes
    with pytest.raises(DataError, match="cannot split 1797 rows of 11 classes"):
        split_dataset(ds, cfg.data.splits, seed=cfg.data.split_seed)
