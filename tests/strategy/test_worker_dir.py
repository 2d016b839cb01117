"""Each worker's own run folder: the same on every launch, inside the shared run directory."""

import json
import os

import pytest
import tensorflow as tf

from tfft import distribute

TWO_WORKERS = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}
WITH_CHIEF = {"chief": ["127.0.0.1:2221"], **TWO_WORKERS}


@pytest.mark.parametrize("cluster, task_type, index, expected", [
    (None, None, None, ""),
    (TWO_WORKERS, "worker", 0, ""),
    (TWO_WORKERS, "worker", 1, "workers/worker-1"),
    (WITH_CHIEF, "chief", 0, ""),
    (WITH_CHIEF, "worker", 0, "workers/worker-0"),
])
def test_worker_dir_is_one_folder_per_task_that_outlives_the_call(monkeypatch, tmp_path,
                                                                  cluster, task_type, index,
                                                                  expected):
    for name in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE",
                 "TPU_WORKER_ID"):
        monkeypatch.delenv(name, raising=False)
    if cluster is not None:
        monkeypatch.setenv("TF_CONFIG", json.dumps(
            {"cluster": cluster, "task": {"type": task_type, "index": index}}))
    run_dir = str(tmp_path / "run")
    mine = distribute.worker_dir(run_dir)
    assert mine == os.path.join(run_dir, expected) if expected else mine == run_dir
    # A restart (another call, another process) finds the same folder...
    assert distribute.worker_dir(run_dir) == mine
    # ...where the scratch copy for final outputs is new each time on a non-chief.
    if expected:
        scratch = [distribute.chief_only_path(run_dir) for _ in range(2)]
        for path in scratch:
            distribute.discard_worker_path(path)
        assert scratch[0] != scratch[1]


def test_gather_from_workers_outside_a_cluster_is_this_process_alone(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)  # (two processes: test_worker_resume.py)
    strategy = tf.distribute.get_strategy()
    assert distribute.gather_from_workers([1, 0, 3], strategy) == [(1, 0, 3)]
