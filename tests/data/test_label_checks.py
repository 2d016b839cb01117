"""Float and implausible label columns (issue 25, item 5): small CSVs written here."""

import numpy as np
import pandas as pd
import pytest

import tfft  # noqa: F401
import tfft.data as td
from tfft.data.labels import class_labels


def _csv(tmp_path, labels, name="data.csv"):
    path = tmp_path / name
    pd.DataFrame({"text": [f"doc {i}" for i in range(len(labels))], "label": labels}).to_csv(
        path, index=False)
    return str(path)


def test_whole_float_labels_in_a_csv_are_class_ids_not_strings(tmp_path):
    path = _csv(tmp_path, [0.0, 1.0, 2.0, 1.0])
    assert pd.read_csv(path)["label"].dtype == np.float64  # what the user's CSV gave
    data = td.load(path)
    assert data.class_names == ["0", "1", "2"]
    assert data.y.tolist() == [0, 1, 2, 1]


def test_int_column_with_an_empty_cell_keeps_its_ids(tmp_path):
    # pandas reads an int column with a hole as floats: 0.0, NaN, 2.0, 1.0.
    path = tmp_path / "holes.csv"
    path.write_text("text,label\na,0\nb,\nc,2\nd,1\n")
    with pytest.raises(ValueError, match="Label at row 1 is missing"):
        td.load(str(path))
    data = td.load(str(path), on_error="skip")
    assert data.x.tolist() == ["a", "c", "d"]
    assert data.y.tolist() == [0, 2, 1] and data.class_names == ["0", "1", "2"]


def test_numeric_strings_read_from_a_csv_are_class_ids(tmp_path):
    frame = pd.read_csv(_csv(tmp_path, [0.0, 1.0, 2.0, 0.0]), dtype=str)
    assert frame["label"].tolist() == ["0.0", "1.0", "2.0", "0.0"]
    data = td.load(frame)
    assert data.class_names == ["0", "1", "2"]
    assert data.y.tolist() == [0, 1, 2, 0]
    assert class_labels(["1.0", " 2 ", None]) == [1, 2, None]
    assert class_labels(["neg", "pos", "1.0"]) == ["neg", "pos", "1.0"]


def test_whole_float_labels_against_declared_class_names(tmp_path):
    data = td.load(_csv(tmp_path, [1.0, 0.0]), class_names=["neg", "pos"])
    assert data.y.tolist() == [1, 0] and data.class_names == ["neg", "pos"]


def test_continuous_labels_are_refused_suggesting_regression(tmp_path):
    path = _csv(tmp_path, [0.5, 1.25, 3.0, 2.75])
    with pytest.raises(ValueError, match=r"look continuous.*0\.5 at row 0.*task=\"regression\""):
        td.load(path)
    with pytest.raises(ValueError, match="look continuous"):
        td.load((np.array(["a", "b"], dtype=object), np.array([0.1, 0.9])))


def test_implausible_class_count_is_refused_unless_declared(tmp_path):
    ids = [f"user{i}" for i in range(120)]
    path = _csv(tmp_path, ids)
    with pytest.raises(ValueError, match=r"120 classes for 120 rows.*class_names"):
        td.load(path)
    # Whole floats are ids: 0.0 .. 2360.0 would be 2,361 classes, nearly all empty.
    with pytest.raises(ValueError, match=r"2,361 classes for 60 rows"):
        td.load(_csv(tmp_path, [i * 40.0 for i in range(60)], "floats.csv"))
    declared = td.load(path, class_names=sorted(ids))
    assert declared.num_classes == 120


def test_many_classes_with_several_examples_each_are_accepted(tmp_path):
    labels = [f"c{i % 60}" for i in range(180)]   # 60 classes, 3 rows each
    data = td.load(_csv(tmp_path, labels))
    assert data.num_classes == 60 and np.bincount(data.y).tolist() == [3] * 60


def test_a_stray_huge_class_id_is_refused_before_any_class_is_named(tmp_path):
    # Found by tests/reliability/test_fuzz.py::test_csv_sources: the names of
    # 10^8 classes were made before the count was checked, and the test worker
    # was killed for memory (19 GB).
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"100,000,000 classes for 2 rows"):
        td.load(_csv(tmp_path, [99999999, 0]))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb
