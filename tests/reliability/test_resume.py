"""Resume after SIGKILL, determinism and numerical faults, on the real finetune path."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfft
from tfft.jobs.finetune import NumericalError

SETTINGS = dict(max_examples=1000, epochs=2, head_epochs=2, sequence_length=128,
                batch_size=8, unfreeze_top=1)


def _cli_args(preset, run_dir):
    args = ["finetune", "--backbone", f"keras_hub:{preset}", "--no-export",
            "--run-dir", str(run_dir)]
    for key, value in SETTINGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return [sys.executable, "-m", "tfft.cli.main", *args]


def _recorded_epoch(metadata):
    try:
        return json.loads(metadata.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_killed_run_resumes_from_last_epoch_and_matches_uninterrupted(small_preset, tmp_path,
                                                                      read_weights_file):
    run_dir = tmp_path / "run"
    command = _cli_args(small_preset, run_dir)
    metadata = run_dir / "backup" / "fine_tune" / "training_metadata.json"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        # Kill the moment Keras has recorded the first fine-tuning epoch: its weights
        # are written before the metadata, so a parseable record means a complete
        # checkpoint. A fixed sleep after it was not safe: on a fast machine the
        # second epoch finished inside the sleep and Keras removed the backup.
        deadline = time.time() + 600
        while _recorded_epoch(metadata) is None and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before its first fine-tuning epoch"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads(metadata.read_text())["epoch"] == 1
    assert not (run_dir / "report.json").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already finished" in resumed.stdout  # the head stage is reloaded
    assert "resumed after epoch 1" in resumed.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["stages"][1]["resumed_from_epoch"] == 1

    reference = tfft.run_job(backbone=f"keras_hub:{small_preset}", export_dir=None,
                              run_dir=str(tmp_path / "reference"), verbose=0, **SETTINGS)
    got = read_weights_file(run_dir / "final.weights.h5")
    want = read_weights_file(tmp_path / "reference" / "final.weights.h5")
    assert got.keys() == want.keys() and len(got) > 10
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
    assert report["test"] == pytest.approx(reference["test"])


@pytest.mark.slow
def test_same_seed_and_config_give_the_same_split_and_metrics(small_preset, tmp_path):
    settings = dict(SETTINGS, epochs=0, max_examples=200)
    runs = [
        tfft.run_job(backbone=f"keras_hub:{small_preset}", export_dir=None,
                      run_dir=str(tmp_path / name), verbose=0, **settings)
        for name in ("a", "b")
    ]
    assert runs[0]["test_report"]["metrics"] == runs[1]["test_report"]["metrics"]
    assert runs[0]["stages"][0]["history"] == runs[1]["stages"][0]["history"]


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_checkpoints(small_preset, tmp_path):
    # The head trains normally; the fine-tuning stage's rate blows the loss up.
    run = tmp_path / "run"
    with pytest.raises(NumericalError, match="learning rate too high") as info:
        tfft.run_job(backbone=f"keras_hub:{small_preset}", export_dir=None,
                      run_dir=str(run), verbose=0, learning_rate=1e38,
                      **dict(SETTINGS, max_examples=200, epochs=2, head_epochs=1))
    message = str(info.value)
    assert "fine_tune stage stopped" in message and "mixed precision" in message
    assert not (run / "report.json").exists()
    # The weights the message names are on disk, from before the fault, and load
    # into a fresh task: the head stage's, with finite values that match its record.
    kept = run / "stage_weights" / "head.weights.h5"
    assert f"kept in {kept}" in message
    task = tfft.build_model(f"keras_hub:{small_preset}", num_classes=5,
                            sequence_length=SETTINGS["sequence_length"], compile=False)
    task.load_weights(kept)
    head_kernel = task.get_layer("head").weights[0].numpy()
    assert np.isfinite(head_kernel).all() and np.abs(head_kernel).max() < 100
    state = json.loads((run / "state.json").read_text())
    assert [s["name"] for s in state["stages"]] == ["head"]


def test_resuming_with_other_settings_is_refused(tmp_path):
    from tfft.jobs.config import ConfigError, JobConfig
    from tfft.jobs.state import RunState

    first = JobConfig(epochs=1, run_dir=str(tmp_path))
    tmp_path.mkdir(exist_ok=True)
    RunState(str(tmp_path), first)._write()
    with pytest.raises(ConfigError, match="epochs differ"):
        RunState(str(tmp_path), JobConfig(epochs=2, run_dir=str(tmp_path)))
    RunState(str(tmp_path), JobConfig(epochs=1, run_dir=str(tmp_path), export_dir="x"))


def test_run_dirs_from_before_the_method_rename_still_resume(tmp_path):
    from tfft.jobs.config import ConfigError, JobConfig
    from tfft.jobs.state import RunState

    state = RunState(str(tmp_path), JobConfig(method="prompt", run_dir=str(tmp_path)))
    saved = dict(state.data, config={
        ("strategy" if k == "method" else k): v for k, v in state.data["config"].items()})
    (tmp_path / "state.json").write_text(json.dumps(saved))
    RunState(str(tmp_path), JobConfig(method="prompt", run_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="method differ"):
        RunState(str(tmp_path), JobConfig(method="fine_tune", run_dir=str(tmp_path)))
