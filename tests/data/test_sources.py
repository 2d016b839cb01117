import logging
import os

import numpy as np
import pandas as pd
import pytest

import tfft  # noqa: F401
import tfft.data as td
from tfft.data import sources


def _write_png(path, image):
    import tensorflow as tf

    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image).numpy())


def test_csv_with_user_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["great", "awful", "fine"], "stars": ["pos", "neg", "pos"]}).to_csv(
        path, index=False
    )
    data = td.load(str(path), text_column="review", label_column="stars")
    assert data.x.tolist() == ["great", "awful", "fine"]
    assert data.class_names == ["neg", "pos"]
    assert data.y.tolist() == [1, 0, 1]
    assert data.name == "reviews" and data.modality == "text" and data.skipped == 0


def test_compressed_tsv(tmp_path):
    path = tmp_path / "data.tsv.bz2"
    pd.DataFrame({"text": ["a b", "c"], "label": [1, 0]}).to_csv(path, sep="\t", index=False)
    data = td.load(path)
    assert data.x.tolist() == ["a b", "c"]
    assert data.y.tolist() == [1, 0] and data.class_names == ["0", "1"]


def test_missing_column_names_column_and_available(tmp_path):
    frame = pd.DataFrame({"review": ["x"], "label": ["a"]})
    with pytest.raises(ValueError, match=r"'text' \(text_column\).*\['review', 'label'\]"):
        td.load(frame)
    path = tmp_path / "f.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"'stars' \(label_column\) is not in CSV file {path}"):
        td.load(str(path), text_column="review", label_column="stars")


def test_empty_sources(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.csv is empty"):
        td.load(str(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match="is empty: it has no rows"):
        td.load(str(header_only))
    with pytest.raises(ValueError, match="0 examples"):
        td.load((np.zeros((0, 2)), np.zeros(0, dtype=int)))
    (tmp_path / "nofolders").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        td.load(str(tmp_path / "nofolders"))


def test_labels_outside_declared_classes_raise_or_skip(tmp_path, caplog):
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["pos", "meh", "neg", "pos"]})
    with pytest.raises(ValueError, match=r"'meh' at row 1 .*\['neg', 'pos'\]"):
        td.load(frame, class_names=["neg", "pos"])
    with caplog.at_level(logging.WARNING, logger="tfft.data"):
        data = td.load(frame, class_names=["neg", "pos"], on_error="skip", name="reviews")
    assert data.x.tolist() == ["a", "c", "d"]
    assert data.y.tolist() == [1, 0, 1]
    assert data.skipped == 1
    assert "reviews: skipped 1 bad record" in caplog.text and "'meh' at row 1" in caplog.text


def test_missing_text_and_label_cells(tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("text,label\nfine,a\n,b\nok,\ngood,b\n")
    with pytest.raises(ValueError, match=rf"Text at row 1 of CSV file {path}.*missing"):
        td.load(str(path))
    data = td.load(str(path), on_error="skip")
    assert data.x.tolist() == ["fine", "good"] and data.skipped == 2


def test_integer_labels_checked_against_class_names():
    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 2]})
    with pytest.raises(ValueError, match="Label id 2 at row 1"):
        td.load(frame, class_names=["x", "y"])


def test_multilabel_csv(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["tech|sports", "tech", "art"]})
    data = td.load(frame, label_separator="|")
    assert data.class_names == ["art", "sports", "tech"]
    np.testing.assert_array_equal(data.y, [[0, 1, 1], [0, 0, 1], [1, 0, 0]])


def test_non_utf8_csv_names_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{path} is not valid utf-8"):
        td.load(str(path))
    assert td.load(str(path), encoding="latin-1").x.tolist() == ["café"]


def test_text_directory_sorted_classes(tmp_path):
    for cls, docs in {"sport": ["goal", "match"], "art": ["paint"]}.items():
        (tmp_path / cls).mkdir()
        for i, doc in enumerate(docs):
            (tmp_path / cls / f"{i}.txt").write_text(doc + "\n")
    (tmp_path / "sport" / "notes.md").write_text("ignored: not a .txt")
    data = td.load(str(tmp_path))
    assert data.class_names == ["art", "sport"]
    assert data.x.tolist() == ["paint", "goal", "match"]
    assert data.y.tolist() == [0, 1, 1]


def test_non_utf8_text_file_named_and_skippable(tmp_path, caplog):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "ok.txt").write_text("fine")
    bad = tmp_path / "b" / "bad.txt"
    bad.write_bytes(b"caf\xe9 \xff")
    with pytest.raises(ValueError, match=rf"{bad} is not valid utf-8"):
        td.load(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="tfft.data"):
        data = td.load(str(tmp_path), on_error="skip")
    assert data.skipped == 1 and len(data) == 2
    assert "skipped 1 bad record" in caplog.text


def test_empty_class_folder_raises(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="Class 'b' has no examples"):
        td.load(str(tmp_path))


def test_image_directory_and_corrupt_file(tmp_path, caplog):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(4, 6, 5, 3), dtype=np.uint8)
    for i, cls in enumerate(["cat", "cat", "dog", "dog"]):
        (tmp_path / cls).mkdir(exist_ok=True)
        _write_png(str(tmp_path / cls / f"{i}.png"), images[i])
    data = td.load(str(tmp_path))
    assert data.x.shape == (4, 6, 5, 3) and data.x.dtype == np.uint8
    np.testing.assert_array_equal(data.x, images)
    assert data.y.tolist() == [0, 0, 1, 1] and data.modality == "image"

    gray = td.load(str(tmp_path), channels=1, image_size=(3, 3))
    assert gray.x.shape == (4, 3, 3, 1)

    corrupt = tmp_path / "dog" / "broken.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=rf"{corrupt} is unreadable or corrupt"):
        td.load(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="tfft.data"):
        data = td.load(str(tmp_path), on_error="skip")
    assert len(data) == 4 and data.skipped == 1
    assert "broken.png" in caplog.text


def test_images_of_different_sizes_need_image_size(tmp_path):
    for cls, shape in (("a", (4, 4, 3)), ("b", (5, 4, 3))):
        (tmp_path / cls).mkdir()
        _write_png(str(tmp_path / cls / "x.png"), np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"differ in size.*image_size"):
        td.load(str(tmp_path))
    assert td.load(str(tmp_path), image_size=(4, 4)).x.shape == (2, 4, 4, 3)


def test_numpy_arrays():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = td.load((x, np.array(["b", "a", "b", "a"])))
    assert data.class_names == ["a", "b"] and data.y.tolist() == [1, 0, 1, 0]
    same = td.load(x, labels=[1, 0, 1, 0], class_names=["a", "b"])
    np.testing.assert_array_equal(same.y, data.y)
    with pytest.raises(ValueError, match="needs its labels"):
        td.load(x)
    with pytest.raises(ValueError, match="differ in length"):
        td.load((x, [0, 1]))
    with pytest.raises(TypeError, match="source must be"):
        td.load(42)


def test_nonexistent_path_and_unknown_name():
    with pytest.raises(ValueError, match="does not exist"):
        td.load("/no/such/file.csv")
    with pytest.raises(ValueError, match=r"nor a TFDS dataset.*bbc_news"):
        td.load("no_such_dataset_xyz")


def test_unprepared_tfds_dataset_offline_names_data_dir(tmp_path, monkeypatch):
    # The network boundary: pretend the TFDS download host does not answer.
    monkeypatch.setattr(sources, "network_reachable", lambda *a, **k: False)
    with pytest.raises(td.DatasetUnavailableError) as info:
        td.load("mnist", split="train", data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "unreachable" in message
    assert "bbc_news" in message and "lfw_subset" in message
    with pytest.raises(td.DatasetUnavailableError, match="download=False"):
        td.load("mnist", split="train", data_dir=str(tmp_path), download=False)
    assert not os.path.exists(tmp_path / "mnist" / "3.0.1" / "dataset_info.json")
