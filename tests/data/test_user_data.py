"""tfft.data.user_data: DataSpec, load_data_spec and the shared --data flags (issue 24)."""

import argparse
import json
import logging

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfft.data import user_data as ud
from tfft.data.user_data import DataSpec, load_data_spec

TEXTS = ["good film", "bad film", "great plot", "dull plot", "fine", "awful"]
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg"]


def _csv(path, **columns):
    pd.DataFrame(columns).to_csv(path, index=False)
    return str(path)


def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def _parse(argv):
    parser = argparse.ArgumentParser()
    ud.add_data_arguments(parser)
    return parser.parse_args(argv)


# --- DataSpec validation -------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"task": "ranking"}, r"Unknown task.*'multiclass'.*task='ranking'"),
    ({"on_error": "ignore"}, r"on_error in \['raise', 'skip'\].*'ignore'"),
    ({"label_separator": "|"}, r"label_separator is only for task='multilabel'"),
    ({"task": "multilabel", "label_separator": ""}, "label_separator must be a non-empty"),
    ({"class_names": ("a", "a", "b")}, r"distinct.*\['a'\]"),
    ({"class_names": ("a",)}, r"needs at least 2 class_names"),
    ({"task": "binary", "class_names": ("a", "b", "c")}, "needs exactly 2 class_names"),
    ({"task": "regression", "class_names": ("a", "b")}, "regression target has no classes"),
    ({"image_size": (0, 4)}, r"image_size must be two positive integers.*\(0, 4\)"),
    ({"text_column": "y", "label_column": "y"}, "must differ"),
    ({"source": ""}, "source must be a file, a folder or a TFDS"),
    ({"encoding": "klingon"}, r"Unknown encoding='klingon'.*latin-1"),
])
def test_spec_refuses_bad_values_naming_field_and_valid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataSpec(**{"source": "data.csv", **kwargs})


def test_spec_defaults_and_dict_round_trip():
    spec = DataSpec("data.csv", task="multilabel", class_names=["a", "b"], image_size=[8, 9])
    assert spec.label_separator == "|"            # multilabel default
    assert spec.class_names == ("a", "b") and spec.image_size == (8, 9)
    as_json = json.loads(json.dumps(spec.to_dict()))
    assert DataSpec.from_dict(as_json) == spec
    with pytest.raises(ValueError, match=r"Unknown data keys \['colour'\].*'text_column'"):
        DataSpec.from_dict({"source": "x.csv", "colour": "red"})


# --- sources: each kind, every task --------------------------------------------------

def test_csv_all_when_no_split_is_given(tmp_path):
    path = _csv(tmp_path / "r.csv", review=TEXTS, stars=LABELS)
    splits = load_data_spec(DataSpec(path, text_column="review", label_column="stars"))
    assert list(splits) == ["all"]
    data = splits["all"]
    assert data.x.tolist() == TEXTS and data.class_names == ["neg", "pos"]
    assert data.y.tolist() == [1, 0, 1, 0, 1, 0]


def test_given_splits_share_the_training_classes(tmp_path):
    train = _csv(tmp_path / "train.csv", text=TEXTS, label=LABELS)
    test = _csv(tmp_path / "test.csv", text=["ok", "meh"], label=["pos", "pos"])
    splits = load_data_spec(DataSpec(train, test_source=test))
    assert list(splits) == ["train", "test"]
    # One class only is fine in a test split; its ids index the training classes.
    assert splits["test"].class_names == ["neg", "pos"] and splits["test"].y.tolist() == [1, 1]
    other = _csv(tmp_path / "val.csv", text=["x"], label=["mixed"])
    with pytest.raises(ValueError, match=r"'mixed' at row 0 .*\['neg', 'pos'\]"):
        load_data_spec(DataSpec(train, val_source=other))


def test_jsonl_file_and_bad_line(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    lines = [json.dumps({"text": t, "label": y}) for t, y in zip(TEXTS, LABELS, strict=True)]
    path.write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n")
    data = load_data_spec(DataSpec(str(path)))["all"]
    assert data.x.tolist() == TEXTS and data.y.tolist() == [1, 0, 1, 0, 1, 0]
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=rf"Line 2 of the JSONL file {path} is not a JSON"):
        load_data_spec(DataSpec(str(path)))
    with caplog.at_level(logging.WARNING, logger="tfft.data"):
        data = load_data_spec(DataSpec(str(path), on_error="skip"))["all"]
    assert data.x.tolist() == TEXTS and data.skipped == 1
    assert "skipped 1 bad record" in caplog.text


def test_regression_targets_are_floats_and_a_word_names_its_row(tmp_path):
    path = _csv(tmp_path / "prices.csv", text=TEXTS, label=[1.5, 2, -0.25, 3, 4, 5])
    data = load_data_spec(DataSpec(path, task="regression"))["all"]
    assert data.y.dtype == np.float32 and data.class_names == []
    np.testing.assert_allclose(data.y, [1.5, 2, -0.25, 3, 4, 5])
    bad = _csv(tmp_path / "bad.csv", text=TEXTS, label=["1", "2", "cheap", "3", "4", "5"])
    with pytest.raises(ValueError, match=r"Target at row 2 of CSV file .*bad.csv "
                                         r"\(column 'label'\) is not a finite number: 'cheap'"):
        load_data_spec(DataSpec(bad, task="regression"))
    skipped = load_data_spec(DataSpec(bad, task="regression", on_error="skip"))["all"]
    assert len(skipped) == 5 and skipped.skipped == 1


def test_binary_needs_exactly_two_classes(tmp_path):
    path = _csv(tmp_path / "three.csv", text=TEXTS, label=["a", "b", "c", "a", "b", "c"])
    with pytest.raises(ValueError, match=r"task='binary' needs exactly two classes.*3: "
                                         r"\['a', 'b', 'c'\]"):
        load_data_spec(DataSpec(path, task="binary"))
    two = _csv(tmp_path / "two.csv", text=TEXTS, label=LABELS)
    assert load_data_spec(DataSpec(two, task="binary"))["all"].class_names == ["neg", "pos"]


def test_multilabel_cells_become_multi_hot(tmp_path):
    path = _csv(tmp_path / "tags.csv", text=TEXTS[:3], label=["sport;politics", "tech", "sport"])
    data = load_data_spec(DataSpec(path, task="multilabel", label_separator=";"))["all"]
    assert data.class_names == ["politics", "sport", "tech"]
    np.testing.assert_array_equal(data.y, [[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    folder = tmp_path / "folder"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "1.txt").write_text("words")
    with pytest.raises(ValueError, match="task='multilabel' needs label cells"):
        load_data_spec(DataSpec(str(folder), task="multilabel"))


def test_image_folder_unreadable_file_named_or_counted(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for i, cls in enumerate(["cat", "cat", "dog", "dog"]):
        _png(tmp_path / cls / f"{i}.png", rng.integers(0, 255, (6, 5, 3), dtype=np.uint8))
    broken = tmp_path / "dog" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"{broken} is unreadable"):
        load_data_spec(DataSpec(str(tmp_path)))
    with caplog.at_level(logging.WARNING, logger="tfft.data"):
        data = load_data_spec(DataSpec(str(tmp_path), on_error="skip",
                                       image_size=(4, 4)))["all"]
    assert data.x.shape == (4, 4, 4, 3) and data.skipped == 1 and data.modality == "image"
    assert "skipped 1 bad record" in caplog.text and "broken.png" in caplog.text


def test_csv_column_of_image_paths(tmp_path):
    pixels = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    _png(tmp_path / "img" / "a.png", pixels[0])
    _png(tmp_path / "img" / "b.png", pixels[1])
    path = _csv(tmp_path / "images.csv", file=["img/a.png", "img/b.png", "img/gone.png"],
                label=["x", "y", "y"])
    with pytest.raises(ValueError, match=r"gone.png \(row 2 of .*images.csv\) does not exist"):
        load_data_spec(DataSpec(path, text_column="file"))
    data = load_data_spec(DataSpec(path, text_column="file", on_error="skip"))["all"]
    np.testing.assert_array_equal(data.x, pixels)
    assert data.y.tolist() == [0, 1] and data.skipped == 1


def test_tfds_source_uses_its_own_splits(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    splits = load_data_spec(DataSpec("lfw_subset"))
    # lfw_subset's builder has train, validation and test splits: all count as given.
    assert list(splits) == ["train", "val", "test"]
    assert splits["train"].class_names == ["face", "not_face"]
    assert sum(len(s) for s in splits.values()) == 200


# --- bad input ------------------------------------------------------------------------

def test_bad_input_errors(tmp_path):
    frame = _csv(tmp_path / "cols.csv", review=TEXTS, stars=LABELS)
    with pytest.raises(ValueError, match=r"'text' \(text_column\).*\['review', 'stars'\]"):
        load_data_spec(DataSpec(frame))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv is empty"):
        load_data_spec(DataSpec(str(empty)))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        load_data_spec(DataSpec(str(tmp_path / "empty.jsonl")))
    one = _csv(tmp_path / "one.csv", text=TEXTS, label=["pos"] * 6)
    with pytest.raises(ValueError, match=r"one class only \('pos', 6 rows\)"):
        load_data_spec(DataSpec(one))
    with pytest.raises(ValueError, match=r"Label 'neg' at row 1 is not one of the declared "
                                         r"classes \['pos', 'meh'\]"):
        load_data_spec(DataSpec(_csv(tmp_path / "l.csv", text=TEXTS, label=LABELS),
                                class_names=("pos", "meh")))
    with pytest.raises(ValueError, match="does not exist"):
        load_data_spec(DataSpec(str(tmp_path / "nope.csv")))


# --- command-line flags ----------------------------------------------------------------

def test_flags_map_onto_the_spec():
    args = _parse(["--data", "d.csv", "--test-data", "t.csv", "--text-column", "review",
                   "--task", "multilabel", "--label-separator", ";", "--class-names", "a, b",
                   "--on-error", "skip", "--image-size", "32x48", "--encoding", "latin-1"])
    assert ud.data_spec_from_args(args) == DataSpec(
        "d.csv", test_source="t.csv", text_column="review", task="multilabel",
        label_separator=";", class_names=("a", "b"), on_error="skip", image_size=(32, 48),
        encoding="latin-1",
    )
    # Absent flags stay out, so a config file's values are not overridden by defaults.
    assert ud.data_overrides(_parse(["--data", "d.csv"])) == {"source": "d.csv"}
    assert ud.data_spec_from_args(_parse([])) is None
    with pytest.raises(ValueError, match="--val-data need --data"):
        ud.data_spec_from_args(_parse(["--val-data", "v.csv"]))


def test_bad_flag_values_are_usage_errors(capsys):
    for argv in (["--image-size", "big"], ["--task", "ranking"], ["--class-names", ","]):
        with pytest.raises(SystemExit) as info:
            _parse(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "HEIGHTxWIDTH" in err and "invalid choice: 'ranking'" in err


def test_flag_message_names_the_flags():
    message = ud.flag_message(
        "Column 'text' (text_column) is missing; pass on_error='skip' or encoding=... or "
        "image_size=(height, width); a classification task stays prose"
    )
    assert message == (
        "Column 'text' (--text-column) is missing; pass --on-error 'skip' or --encoding ... "
        "or --image-size HxW; a classification task stays prose"
    )


def test_split_indices_per_task():
    labels = np.repeat([0, 1], 10)
    train, val, test = ud.split_indices(labels, "multiclass", 0.2, 0.2, seed=1)
    # Classification: stratified, so each split holds both classes.
    assert all(set(labels[s]) == {0, 1} for s in (train, val, test))
    targets = np.linspace(0.0, 1.0, 20)
    train, val, test = ud.split_indices(targets, "regression", 0.2, 0.3, seed=1)
    assert (len(train), len(val), len(test)) == (10, 4, 6)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(20))
    again = ud.split_indices(targets, "regression", 0.2, 0.3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = ud.split_indices(targets, "regression", 0.2, 0.3, seed=2)
    assert not np.array_equal(test, other[2])
    multi_hot = np.eye(4)[np.arange(20) % 4]
    assert len(ud.split_indices(multi_hot, "multilabel", 0.25, 0.25)[2]) == 5
    with pytest.raises(ValueError, match="val_fraction must be in"):
        ud.split_indices(targets, "regression", 1.5, 0.0)


def test_split_indices_fraction_edge():
    # 20 * 0.3 is 6.000000000000001 in floating point: still 6 test rows, not 7.
    _, val, test = ud.split_indices(np.zeros(20), "regression", 0.1, 0.3, seed=0)
    assert (len(val), len(test)) == (2, 6)
    with pytest.raises(ValueError, match="no training example would be left"):
        ud.split_indices(np.zeros(4), "regression", 0.5, 0.4)
