"""A multi-worker job killed mid-way resumes on every worker from the same epoch.

Two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy) run
`worker_resume_script.py`: a job that both workers leave abruptly before their
second fine-tuning epoch; a second launch of the same job on the same
`run_dir` must resume on both workers from the same epoch and finish in step.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
KILLED = 3  # worker_resume_script.KILLED (the script cannot be imported: it starts a cluster)


def _launch(preset, out_dir, names, label, ports, timeout=600):
    """Runs the two workers on `ports` to the end; returns their exit codes and logs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR")}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(HERE))] + [p for p in [env.get("PYTHONPATH")] if p])
    procs = []
    for index in range(2):
        env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                       "task": {"type": "worker", "index": index}})
        log = open(out_dir / f"{label}-{index}.log", "w")  # noqa: SIM115  closed below
        procs.append((subprocess.Popen(
            [sys.executable, os.path.join(HERE, "worker_resume_script.py"), preset,
             str(out_dir), *names], env=dict(env), stdout=log, stderr=subprocess.STDOUT,
        ), log))
    try:
        codes = [proc.wait(timeout=timeout) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = [(out_dir / f"{label}-{i}.log").read_text() for i in range(2)]
    return codes, logs


@pytest.mark.slow
def test_killed_multi_worker_job_resumes_on_every_worker_from_the_same_epoch(
        small_preset, tmp_path, free_ports, read_weights_file):
    codes, logs = _launch(small_preset, tmp_path, ["run!"], "killed", free_ports(2))
    assert codes == [KILLED, KILLED], "\n\n".join(log[-4000:] for log in logs)
    run = tmp_path / "run"
    worker = run / "workers" / "worker-1"
    # Each worker's backup of epoch 1 is in a folder that outlives the process.
    for folder in (run, worker):
        metadata = folder / "backup" / "fine_tune" / "training_metadata.json"
        assert json.loads(metadata.read_text())["epoch"] == 1, folder
        assert json.loads((folder / "state.json").read_text())["stages"][0]["name"] == "head"

    codes, logs = _launch(small_preset, tmp_path, ["run"], "restarted", free_ports(2))
    assert codes == [0, 0], "\n\n".join(log[-4000:] for log in logs)
    for log in logs:
        assert "Stage 1/2 head: already finished" in log
        assert "resumed after epoch 1" in log
    resumed = [np.load(tmp_path / f"run_{i}.npz") for i in range(2)]
    assert [json.loads(str(r["resumed"]))["fine_tune"] for r in resumed] == [1, 1]
    # Both workers resumed from the same epoch and stayed in step: a worker that
    # started over would have run mismatched collective ops or other weights. (That
    # a resumed run ends with an uninterrupted run's weights is checked in one
    # process by test_resume.py, which is much cheaper than a third launch here.)
    keys = [k for k in resumed[0].files if k.startswith("w")]
    assert len(keys) > 10
    for key in keys:
        np.testing.assert_array_equal(resumed[1][key], resumed[0][key], err_msg=key)
    # The epoch trained after the restart moved the weights: equality above is earned.
    head = read_weights_file(run / "stage_weights" / "head.weights.h5")
    final = read_weights_file(run / "final.weights.h5")  # the model's, then the optimizer's
    assert head.keys() <= final.keys() and len(head) > 10
    assert any(not np.array_equal(head[k], final[k]) for k in head)
    # The report and final weights are the chief's alone.
    assert json.loads((run / "report.json").read_text())["stages"][1]["resumed_from_epoch"] == 1
    assert not {"report.json", "final.weights.h5"} & set(os.listdir(worker))


# A kill can land between two workers' writes. What the other worker reports comes
# through `gather_from_workers` (the collective op): stood in for here, the one
# network boundary, by appending its row to this process's own.


def _agree(monkeypatch, tmp_path, finished_here, epoch_here, other_row):
    from tfft.jobs import finetune
    from tfft.jobs.config import JobConfig
    from tfft.jobs.state import RunState

    state = RunState(str(tmp_path), JobConfig(run_dir=str(tmp_path)))
    state.data["stages"] = [{"name": name} for name in finished_here]
    backup = tmp_path / "backup" / "fine_tune"
    if epoch_here:
        backup.mkdir(parents=True)
        (backup / "training_metadata.json").write_text(json.dumps({"epoch": epoch_here}))
    monkeypatch.setattr(finetune, "gather_from_workers",
                        lambda values, strategy: [tuple(int(v) for v in values), other_row])
    return finetune._agree_on_progress(state, str(tmp_path), strategy=None), backup


def test_a_stage_one_worker_did_not_record_runs_again_on_every_worker(monkeypatch, tmp_path):
    # Here both stages finished; the other worker was killed before recording fine_tune.
    rerun, _ = _agree(monkeypatch, tmp_path, ["head", "fine_tune"], 0, (1, 0, 0))
    assert rerun == {"fine_tune"}
    rerun, _ = _agree(monkeypatch, tmp_path, ["head", "fine_tune"], 0, (1, 1, 0))
    assert rerun == set()


def test_backups_of_different_epochs_are_dropped_so_the_stage_starts_over(monkeypatch,
                                                                         tmp_path, caplog):
    rerun, backup = _agree(monkeypatch, tmp_path, ["head"], 2, (1, 0, 1))
    assert rerun == set()
    assert not backup.exists()  # a worker cannot go back to epoch 1: all start at 0
    assert "stop after different epochs ([1, 2])" in caplog.text
    rerun, backup = _agree(monkeypatch, tmp_path, ["head"], 1, (1, 0, 1))
    assert (backup / "training_metadata.json").exists()  # the same epoch everywhere: kept
