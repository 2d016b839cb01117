"""What a run directory records, so that a killed job resumes where it stopped."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import tempfile

from tfft.jobs.config import (
    AUTO,
    DEFAULT_BACKBONES,
    DEFAULT_DATASET,
    DEPRECATED_SETTINGS,
    ConfigError,
    JobConfig,
)
from tfft.utils.files import write_json_atomic

logger = logging.getLogger(__name__)


def new_run_dir(root: str = "runs", now: datetime.datetime | None = None) -> str:
    """Creates and returns a new, empty run directory `root/<YYYYmmdd-HHMMSS-ffffff>`.

    The folder is created with an exclusive `mkdir`; when the name is taken
    (two jobs started in the same microsecond, or a clock set back) `-1`,
    `-2`, ... is appended, so two jobs never share a default run directory.

    Args:
        root: str. The folder that holds the runs; created if missing.
            Defaults to `"runs"`.
        now: datetime. The time the name is made from. Defaults to now.

    Example:

    >>> new_run_dir()
    'runs/20250102-030405-123456'
    """
    stem = os.path.join(root, (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S-%f"))
    os.makedirs(root, exist_ok=True)
    path, attempt = stem, 0
    while True:
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            attempt += 1
            path = f"{stem}-{attempt}"


class RunState:
    """What a run directory records about finished stages, for resuming."""

    def __init__(self, run_dir, config):
        self.path = os.path.join(run_dir, "state.json")
        self.weights_dir = os.path.join(run_dir, "stage_weights")
        self.data = {"config": config.to_dict(), "stages": []}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            # Run directories written before the rename keep resuming.
            for old, new in DEPRECATED_SETTINGS.items():
                if old in saved["config"]:
                    saved["config"].setdefault(new, saved["config"].pop(old))
            ignore = {"run_dir", "export_dir"}
            old = {k: v for k, v in _effective(saved["config"]).items() if k not in ignore}
            new = {k: v for k, v in _effective(config.to_dict()).items() if k not in ignore}
            if old != new:
                changed = sorted(k for k in new if old.get(k) != new[k])
                raise ConfigError(
                    f"The run directory {run_dir!r} holds a run with other settings "
                    f"({', '.join(changed)} differ). Resume it with the same settings, or "
                    "pass a new --run-dir."
                )
            self.data = saved

    def stage(self, name):
        return next((s for s in self.data["stages"] if s["name"] == name), None)

    def weights_path(self, name):
        return os.path.join(self.weights_dir, f"{name}.weights.h5")

    def finish_stage(self, record, model):
        os.makedirs(self.weights_dir, exist_ok=True)
        # Weights first, then the record that points at them: a kill in between
        # only means the stage runs again. The temporary name is unique (Keras wants
        # the .weights.h5 ending), so another writer's file is never overwritten.
        fd, tmp = tempfile.mkstemp(dir=self.weights_dir, prefix=f".tmp-{record['name']}-",
                                   suffix=".weights.h5")
        os.close(fd)
        try:
            model.save_weights(tmp)
            os.replace(tmp, self.weights_path(record["name"]))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        # A stage run again (another worker had not finished it) replaces its record.
        self.data["stages"] = [s for s in self.data["stages"] if s["name"] != record["name"]]
        self.data["stages"].append(record)
        self._write()

    def _write(self):
        write_json_atomic(self.path, self.data, default=str)


def _effective(settings):
    """Settings as the job uses them, for comparing a run directory's with new ones.

    A run directory written before a setting existed lacks it (it ran with the
    default), and one written before `dataset` and `backbone` followed the
    data names the bundled defaults they now stand for.
    """
    defaults = JobConfig().to_dict()
    out = {**defaults, **settings}
    if out.get("data") is None:
        if out.get("dataset") is None:
            out["dataset"] = DEFAULT_DATASET
        if out.get("backbone") == AUTO:
            out["backbone"] = DEFAULT_BACKBONES["text"]
    return out


def resumable_stage(state, name, label, model, run, on_reload=None, rerun=False):
    """Runs a stage, or reloads its weights when the run directory says it finished.

    `on_reload()` is called after a reload (the weights changed outside any stage).
    `rerun=True` runs the stage even if this run directory finished it: in a
    multi-worker job another worker had not (a kill can land between two
    workers' records), and every worker must run the same stages.
    """
    done = state.stage(name)
    if done and rerun:
        logger.warning("%s: finished here but not on every worker; running it again", label)
        done = None
    if done:
        model.load_weights(state.weights_path(name))
        if on_reload is not None:
            on_reload()
        print(f"{label}: already finished in {os.path.dirname(state.path)}, weights reloaded")
    else:
        done = run()
        state.finish_stage(done, model)
    print(f"{label}: {describe_test_metrics(done['test'])}")
    return done


def describe_test_metrics(test):
    """One line for a stage's test metrics: accuracy and macro F1, or the regression errors."""
    if "accuracy" in test:
        return f"test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}"
    r2 = "n/a" if test.get("r2") is None else f"{test['r2']:.4f}"
    return f"test MAE {test['mae']:.4g}, RMSE {test['rmse']:.4g}, R^2 {r2}"
