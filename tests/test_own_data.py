"""Your own data: tables, arrays, image folders and datasets read, tokenised and trained on by ``recipes/own_data.py``,
with clear errors for bad files. Every file here is written by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fpt_peft.data import own_data

from .training_utils import ROOT, load_recipe, quick_args, save_tiny_backbone


def write_table(path: Path, rows: int = 60) -> Path:
    """A CSV of 5 numeric features, a text feature column and a text ``target`` column."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 5))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    frame["colour"] = np.where(x[:, 0] > 0, "red", "blue")
    frame["target"] = np.where(x[:, 1] + x[:, 2] > 0, "yes", "no")
    frame.to_csv(path, index=False)
    return path


def write_series(folder: Path) -> Path:
    """A folder of .npy arrays: 2-channel sines of 3 frequencies, 72 train and 18 test series."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 6.28, 40)
    y = np.arange(90) % 3
    x = np.sin((y[:, None, None] + 1) * t + rng.uniform(0, 6, (90, 1, 1))) + 0.1 * rng.normal(size=(90, 2, 40))
    folder.mkdir()
    np.save(folder / "X_train.npy", x[:72].astype(np.float32))
    np.save(folder / "y_train.npy", y[:72])
    np.save(folder / "X_test.npy", x[72:].astype(np.float32))
    np.save(folder / "y_test.npy", y[72:])
    return folder


def _images(folder: Path, size: int = 12) -> Path:
    rng = np.random.default_rng(2)
    for split, count in (("train", 12), ("test", 4)):
        for name, level in (("dark", 40), ("light", 200)):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / split / name / f"{i}.png")
    return folder


def test_a_table_is_one_standardised_feature_per_token_with_text_one_hot(tmp_path: Path) -> None:
    task = own_data(write_table(tmp_path / "t.csv"), label_column="target")
    assert task.spec.max_tokens == 7 and task.spec.input_dim == 1  # 5 numbers + colour=blue, colour=red
    assert task.label_names == ("no", "yes") and (len(task.train), len(task.eval)) == (48, 12)
    train = np.asarray(task.train.with_format("numpy")["inputs_embeds"])[:, :, 0]
    assert np.allclose(train.mean(0), 0, atol=1e-5) and np.allclose(train.std(0), 1, atol=1e-4)  # train statistics
    assert "CSV table `t.csv`, read as kind table" in (task.description or "") and str(tmp_path) not in task.source


def test_series_arrays_are_inferred_and_patched(tmp_path: Path) -> None:
    task = own_data(write_series(tmp_path / "lab"))
    assert "kind series" in (task.description or "") and task.label_names == ("0", "1", "2")
    assert task.spec.input_dim == 8 * 2 and (len(task.train), len(task.eval)) == (72, 18)  # patches of 8 x 2 channels
    table = own_data(tmp_path / "lab", kind="table")
    assert table.spec.max_tokens == 80 and table.spec.input_dim == 1  # --kind overrides: 2 x 40 features


def test_an_image_folder_keeps_its_classes_and_size(tmp_path: Path) -> None:
    task = own_data(_images(tmp_path / "pics"))
    assert task.label_names == ("dark", "light") and task.spec.num_classes == 2
    assert task.spec.max_tokens == 36 and task.spec.input_dim == 2 * 2 * 3  # 12 px: the divisor nearest 12 / 8 is 2
    resized = own_data(tmp_path / "pics", image_size=16, patch_size=4)
    assert resized.spec.max_tokens == 16 and resized.spec.input_dim == 48


def test_a_saved_dataset_and_an_npz_file_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 2
    np.savez(tmp_path / "d.npz", X=x, y=y)
    assert len(own_data(tmp_path / "d.npz", kind="table").eval) == 8
    labels = datasets.ClassLabel(names=["cat", "dog"])
    features = datasets.Features({"a": datasets.Value("float32"), "b": datasets.Value("float32"), "label": labels})
    data = datasets.Dataset.from_dict({"a": x[:, 0], "b": x[:, 1], "label": y}, features=features)
    datasets.DatasetDict({"train": data.select(range(30)), "test": data.select(range(30, 40))}).save_to_disk(
        str(tmp_path / "saved")
    )
    task = own_data(tmp_path / "saved")
    assert task.label_names == ("cat", "dog") and (len(task.train), len(task.eval)) == (30, 10)


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda p: p.write_text(""), "the file is empty"),
        (lambda p: p.write_text("a,b,label\n1,2,x\n3\n"), "missing or non-finite value.*row 2"),
        (lambda p: p.write_text("a,b,label\n1,nan,x\n3,4,y\n"), "row 1.*column 'b'"),
        (lambda p: p.write_text("a,b,klass\n1,2,x\n3,4,y\n"), "no label column 'label'"),
        (lambda p: p.write_text("a,label\n" + "".join(f"{i},x\n" for i in range(9))), "one class only"),
        (lambda p: p.write_text("a,label\n" + "".join(f"{i},{i / 7:.3f}\n" for i in range(9))), "regression target"),
        (lambda p: p.write_text("name,label\n" + "".join(f"n{i},{i % 2}\n" for i in range(30))), "'name' holds text"),
    ],
    ids=["empty", "ragged", "nan", "no label", "one class", "regression", "string feature"],
)
def test_bad_tables_fail_with_one_line_naming_the_problem(tmp_path: Path, write: object, match: str) -> None:
    path = tmp_path / "bad.csv"
    write(path)  # type: ignore[operator]
    with pytest.raises(ValueError, match=match) as raised:
        own_data(path)
    assert "\n" not in str(raised.value) and str(tmp_path) not in str(raised.value)


def test_bad_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "nan.npz", X=np.array([[1.0, np.nan]] * 4), y=np.arange(4) % 2)
    with pytest.raises(ValueError, match="NaN or infinite values, the first at index 0"):
        own_data(tmp_path / "nan.npz")
    np.savez(tmp_path / "short.npz", X=np.zeros((4, 3)), y=np.zeros(3))
    with pytest.raises(ValueError, match=r"y has shape \(3,\); expected \(4,\)"):
        own_data(tmp_path / "short.npz")
    np.save(tmp_path / "X.npy", np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"one \.npy file holds no labels"):
        own_data(tmp_path / "X.npy")


def test_the_recipe_trains_a_table_keeps_class_names_and_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = save_tiny_backbone(tmp_path / "tiny")
    out = tmp_path / "run"
    (tmp_path / "data").mkdir()
    data = write_table(tmp_path / "data" / "heart.csv")
    argv = [*quick_args(tiny, out, steps=4), "--data", str(data), "--label-column", "target"]
    metrics = load_recipe("own_data").main(argv)
    assert metrics["step"] == 4 and "kept_step" in metrics
    printed = capsys.readouterr().out
    assert "CSV table `heart.csv`, read as kind table (inferred: a CSV table)" in printed
    assert "differs from the paper" not in printed
    assert json.loads((out / "adapter" / "labels.json").read_text()) == {"id2label": {"0": "no", "1": "yes"}}
    card = (out / "adapter" / "README.md").read_text()
    assert "heart.csv (local)" in card and "## Data" in card and str(data.parent) not in card
    assert "(generated)" not in card


def test_the_recipe_refuses_bad_data_in_one_line_with_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "own_data.py"),
            "--data",
            str(bad),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("own_data.py: error: --data bad.csv: no label column")
