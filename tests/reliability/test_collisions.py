"""Two jobs, or two writers, never share a file or folder by name."""

import datetime
import json
import os

import keras
import numpy as np
import pytest

from tfft.jobs.config import JobConfig
from tfft.jobs.state import RunState, new_run_dir

NOW = datetime.datetime(2025, 1, 2, 3, 4, 5, 678901)


def test_jobs_started_at_the_same_moment_get_their_own_run_directory(tmp_path):
    root = str(tmp_path / "runs")
    first = new_run_dir(root, now=NOW)
    with open(os.path.join(first, "state.json"), "w") as f:
        f.write("{}")
    second = new_run_dir(root, now=NOW)
    third = new_run_dir(root, now=NOW)
    assert len({first, second, third}) == 3
    assert os.path.basename(first) == "20250102-030405-678901"
    assert os.listdir(second) == [] and os.listdir(third) == []
    # The name carries microseconds: a microsecond later is another name.
    later = new_run_dir(root, now=NOW + datetime.timedelta(microseconds=1))
    assert os.path.basename(later) == "20250102-030405-678902"


class _Writer:
    """A model as `finish_stage` sees it; `during_save` runs between its save and the rename."""

    def __init__(self, model, during_save=None):
        self.model = model
        self.during_save = during_save

    def save_weights(self, path):
        self.model.save_weights(path)
        if self.during_save is not None:
            self.during_save()


def _dense(value):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.set_weights([np.full(w.shape, value, "float32") for w in model.get_weights()])
    return model


def test_two_writers_of_a_stage_each_use_their_own_temporary_file(tmp_path):
    config = JobConfig(run_dir=str(tmp_path))
    first, second = RunState(str(tmp_path), config), RunState(str(tmp_path), config)
    record = {"name": "head", "test": {"accuracy": 1.0, "macro_f1": 1.0}}
    mine, theirs = _dense(1.0), _dense(2.0)
    # The second writer saves and renames while the first is between its save and
    # its rename: with one fixed temporary name, it moves the first's file away.
    first.finish_stage(dict(record), _Writer(
        mine, during_save=lambda: second.finish_stage(dict(record), _Writer(theirs))))

    reloaded = _dense(0.0)
    reloaded.load_weights(first.weights_path("head"))
    for got, want in zip(reloaded.get_weights(), mine.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)  # the last rename wins, whole
    assert os.listdir(first.weights_dir) == ["head.weights.h5"]  # no temporary left
    saved = json.loads((tmp_path / "state.json").read_text())
    assert [s["name"] for s in saved["stages"]] == ["head"]


def test_a_failed_stage_save_leaves_no_temporary_file_and_no_record(tmp_path):
    state = RunState(str(tmp_path), JobConfig(run_dir=str(tmp_path)))

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        state.finish_stage({"name": "head"}, _Writer(_dense(1.0), during_save=fail))
    assert os.listdir(state.weights_dir) == []
    assert state.stage("head") is None


def test_a_job_that_fails_on_its_input_leaves_no_run_directory(tmp_path, monkeypatch):
    """The default run directory is made only once data and backbone have loaded."""
    from tfft.jobs.finetune import run_job

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="does-not-exist"):
        run_job(backbone="keras_hub:./does-not-exist", max_examples=60, export_dir=None,
                verbose=0)
    assert not (tmp_path / "runs").exists() or os.listdir(tmp_path / "runs") == []
