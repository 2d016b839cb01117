"""Atomic versioned writes: failures leave existing versions and no debris."""

import os
import shutil

import keras
import pytest

from tfft.export import export_saved_model, saved_model
from tfft.export.saved_model import ExportError

CLASSES = ["a", "b", "c"]


def snapshot(directory):
    """Every file under `directory` with its bytes."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


@pytest.fixture(scope="module")
def first_export(make_text_model, tmp_path_factory):
    model = make_text_model()
    directory = str(tmp_path_factory.mktemp("atomic") / "m")
    export_saved_model(model, directory, class_names=CLASSES, verify=False)
    return model, directory


@pytest.fixture
def existing(first_export, tmp_path):
    """A model directory holding version 1 (a copy per test)."""
    model, source = first_export
    directory = str(tmp_path / "m")
    shutil.copytree(source, directory)
    return model, directory, snapshot(directory)


def test_failed_verification_leaves_existing_versions(existing, monkeypatch):
    model, directory, before = existing

    def fail(path, *args, **kwargs):
        # The staging directory is complete at this point; it must still vanish.
        assert os.path.exists(os.path.join(path, "saved_model.pb"))
        raise ExportError("injected verification failure")

    monkeypatch.setattr(saved_model, "verify_in_fresh_process", fail)
    with pytest.raises(ExportError, match="injected"):
        export_saved_model(model, directory, class_names=CLASSES)
    assert sorted(os.listdir(directory)) == ["1"]
    assert snapshot(directory) == before


def test_failure_while_writing_leaves_no_partial_version(existing, monkeypatch):
    model, directory, before = existing
    # keras.export.ExportArchive() returns the backend's subclass.
    archive_class = type(keras.export.ExportArchive())
    original = archive_class.write_out

    def write_half_then_fail(self, filepath, **kwargs):
        original(self, filepath, **kwargs)
        os.remove(os.path.join(filepath, "saved_model.pb"))
        raise OSError("disk full (injected)")

    monkeypatch.setattr(archive_class, "write_out", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, directory, class_names=CLASSES, verify=False)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(model, directory, class_names=CLASSES, version=1, overwrite=True,
                    verify=False)
    assert sorted(os.listdir(directory)) == ["1"]
    assert snapshot(directory) == before


def test_existing_version_needs_overwrite(existing):
    model, directory, before = existing
    with pytest.raises(FileExistsError, match=r"already exists\. Pass overwrite=True"):
        export_saved_model(model, directory, class_names=CLASSES, version=1, verify=False)
    assert snapshot(directory) == before


def test_overwrite_replaces_the_version(existing):
    model, directory, before = existing
    path = export_saved_model(model, directory, class_names=["x", "y", "z"], version=1,
                       overwrite=True, verify=False)
    assert sorted(os.listdir(directory)) == ["1"]
    assert saved_model.read_metadata(path)["class_names"] == ["x", "y", "z"]
    assert snapshot(directory) != before


def test_export_into_a_file_is_refused(make_text_model, tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match="is a file"):
        export_saved_model(make_text_model(), str(target), class_names=CLASSES, verify=False)
