"""`tfft finetune --method few_shot --shots K`: the few-shot method through the main job.

A tiny BERT saved as a KerasHub preset (tests/jobs/conftest.py) stands in for MiniLM;
the real encoder is in tests/prompting/test_few_shot_real.py.
"""

import json
import os

import numpy as np
import pytest

from tfft.cli.main import main
from tfft.jobs.config import ConfigError, JobConfig


def _rows(kit, rng, counts):
    return [(kit.topic_text(rng, [topic]), topic)
            for topic, n in counts.items() for _ in range(n)]


def test_few_shot_job_trains_on_k_per_class_evaluates_and_exports(tiny_presets, tmp_path, kit):
    rng = np.random.default_rng(0)
    data = kit.write_csv(tmp_path / "topics.csv", ["text", "label"],
                         _rows(kit, rng, {"sport": 14, "money": 14, "arts": 14}))
    run_dir, export_dir = tmp_path / "run", tmp_path / "saved"
    code = main(["finetune", "--method", "few_shot", "--shots", "4", "--data", data,
                 "--backbone", f"keras_hub:{tiny_presets['text']}", "--sequence-length", "16",
                 "--epochs", "1", "--learning-rate", "0.001", "--run-dir", str(run_dir),
                 "--export-dir", str(export_dir),
                 "--prompt-template", "the {label}"])
    assert code == 0
    with open(run_dir / "report.json") as f:
        report = json.load(f)
    assert report["config"]["method"] == "few_shot" and report["config"]["shots"] == 4
    # 4 training examples of each of the 3 classes, drawn from the stratified train split.
    assert report["data"]["sizes"]["train"] == 12
    [stage] = report["stages"]
    assert stage["name"] == "few_shot" and stage["shots"] == 4
    assert stage["trainable_params"] > 1000        # the whole encoder trained
    assert report["test"]["macro_f1"] == stage["test"]["macro_f1"]
    assert os.path.isdir(report["export_path"])
    with open(os.path.join(report["export_path"], "tfft_metadata.json")) as f:
        assert json.load(f)["class_names"] == report["data"]["class_names"]


def test_a_class_short_of_examples_exits_2_naming_it(tiny_presets, tmp_path, kit, monkeypatch,
                                                      capsys):
    rng = np.random.default_rng(1)
    train = kit.write_csv(tmp_path / "train.csv", ["text", "label"],
                          _rows(kit, rng, {"sport": 6, "money": 6, "arts": 1}))
    held = kit.write_csv(tmp_path / "held.csv", ["text", "label"],
                         _rows(kit, rng, {"sport": 2, "money": 2, "arts": 2}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = main(["finetune", "--method", "few_shot", "--shots", "4", "--data", train,
                 "--val-data", held, "--test-data", held,
                 "--backbone", f"keras_hub:{tiny_presets['text']}", "--sequence-length", "16"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Class 'arts' has 1 example" in err and "at least 2 per class" in err, err
    assert os.listdir(work) == []


def test_shots_below_two_are_refused(capsys):
    with pytest.raises(ConfigError, match=r"shots: expected an integer >= 2\. Received: 1"):
        JobConfig(method="few_shot", shots=1)
    with pytest.raises(SystemExit) as stop:
        main(["finetune", "--method", "few_shot", "--shots", "1"])
    assert stop.value.code == 2
    assert "expected an integer >= 2" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"must contain the \{label\} slot"):
        JobConfig(method="few_shot", prompt_template="no slot")
