"""`tfft finetune --data ...` on a user's own files, with tiny KerasHub presets.

The settings path (config-file keys, a given validation file, a carved
stratified test split, a binary head) runs on a tiny BERT saved as a KerasHub
preset folder; bad input must exit with status 2 and write nothing. The real
backbones on real data, every task, are in test_own_data_real.py.
"""

import json
import os

import numpy as np
import pytest

from tfft.cli.main import main


def _read_report(run_dir):
    with open(os.path.join(run_dir, "report.json")) as f:
        return json.load(f)


def test_binary_job_from_yaml_data_keys_with_a_given_validation_file(
        tiny_presets, tmp_path, kit):
    """Every data option as a config-file key; the test split is carved, stratified."""
    rng = np.random.default_rng(2)

    def rows(n):
        return [(kit.topic_text(rng, [topic]), "pos" if topic == "sport" else "neg")
                for topic in ["sport", "money"] * (n // 2)]

    train = kit.write_csv(tmp_path / "reviews.csv", ["review", "verdict"], rows(40))
    val = kit.write_csv(tmp_path / "reviews_val.csv", ["review", "verdict"], rows(10))
    config = tmp_path / "job.yaml"
    config.write_text(
        f"data: {train}\nval_data: {val}\ntext_column: review\nlabel_column: verdict\n"
        "task: binary\nclass_names: [neg, pos]\non_error: raise\ntest_fraction: 0.25\n"
        f"backbone: keras_hub:{tiny_presets['text']}\nsequence_length: 16\n"
        "head_epochs: 2\nepochs: 0\nbatch_size: 16\n")
    run_dir = tmp_path / "run"
    assert main(["finetune", "--config", str(config), "--run-dir", str(run_dir),
                 "--no-export"]) == 0
    report = _read_report(run_dir)
    assert report["config"]["task"] == "binary" and report["config"]["text_column"] == "review"
    assert report["data"]["class_names"] == ["neg", "pos"]
    assert report["data"]["splits_given"] == ["train", "val"]
    assert report["data"]["sizes"] == {"train": 30, "val": 10, "test": 10}
    assert sorted(report["test"]) == ["accuracy", "macro_f1"]
    # One sigmoid unit on the 16-wide features: 16 weights and a bias train.
    assert report["stages"][0]["trainable_params"] == 17
    assert report["export_path"] is None and not (tmp_path / "saved_models").exists()


def _bad_inputs(root, kit, tiny_presets):
    """(name, extra arguments, text the error must hold) for each kind of bad input."""
    rng = np.random.default_rng(4)
    rows = [(kit.topic_text(rng, [t]), t) for t in ["sport", "money", "arts"] * 10]
    good = kit.write_csv(root / "good.csv", ["text", "label"], rows)
    one = kit.write_csv(root / "one.csv", ["text", "label"],
                        [(kit.topic_text(rng, ["sport"]), "sport")] * 12)
    (root / "empty.csv").write_text("")
    classes = {"a": [np.zeros((8, 8, 3))] * 3, "b": [np.full((8, 8, 3), 255)] * 3}
    photos = kit.write_image_folders(root / "photos", classes)
    broken = kit.write_image_folders(root / "broken", classes)
    (root / "broken" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    return [
        ("missing column", ["--data", good, "--label-column", "topic"],
         "Available columns: ['text', 'label']"),
        ("one class", ["--data", one], "one class only ('sport'"),
        ("empty file", ["--data", str(root / "empty.csv")], "is empty"),
        ("outside class names", ["--data", good, "--class-names", "sport,money"], "arts"),
        ("unreadable image", ["--data", broken], "broken.png"),
        ("multilabel folder", ["--data", photos, "--task", "multilabel"], "multiclass"),
        ("regression on classes", ["--data", good, "--task", "regression"],
         "is not a finite number: 'sport'"),
        ("image backbone, texts", ["--data", good, "--backbone",
                                   f"keras_hub:{tiny_presets['image']}"], "takes images"),
        ("no such file", ["--data", str(root / "nope" / "x.csv")], "does not exist"),
    ]


def test_bad_input_exits_2_names_the_problem_and_writes_nothing(
        tmp_path, kit, tiny_presets, monkeypatch, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    # No --run-dir and no --export-dir: the defaults (runs/..., saved_models/...) must
    # not appear either.
    monkeypatch.chdir(work)
    for name, args, message in _bad_inputs(inputs, kit, tiny_presets):
        code = main(["finetune", *args])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert message in err, (name, err)
        assert os.listdir(work) == [], name


def test_run_dirs_written_before_own_data_still_resume(tmp_path):
    """A run directory from before `data` (its config names the bundled defaults) resumes."""
    from tfft.jobs.config import ConfigError, JobConfig
    from tfft.jobs.state import RunState

    new_keys = {"data", "val_data", "test_data", "text_column", "label_column", "task",
                "label_separator", "class_names", "on_error", "image_size", "encoding",
                "threshold"}
    old = {k: v for k, v in JobConfig(epochs=2).to_dict().items() if k not in new_keys}
    old.update(dataset="bbc_news", backbone="keras_hub:all_minilm_l6_v2",
               export_dir="saved_models/bbc_news_minilm")
    (tmp_path / "state.json").write_text(json.dumps({"config": old, "stages": []}))
    RunState(str(tmp_path), JobConfig(epochs=2))
    RunState(str(tmp_path), JobConfig(epochs=2, dataset="bbc_news",
                                      backbone="keras_hub:all_minilm_l6_v2"))
    with pytest.raises(ConfigError, match="data, dataset differ"):
        RunState(str(tmp_path), JobConfig(epochs=2, data="mine.csv"))


def test_export_jit_compile_setting_and_flag():
    import argparse

    from tfft.jobs import cli as job_cli
    from tfft.jobs.config import ConfigError, JobConfig

    assert JobConfig.from_dict({"export_jit_compile": True}).export_jit_compile is True
    assert JobConfig().export_jit_compile is False
    with pytest.raises(ConfigError, match="export_jit_compile"):
        JobConfig.from_dict({"export_jit_compile": "yes"})
    parser = argparse.ArgumentParser()
    job_cli.add_parser(parser.add_subparsers())
    assert parser.parse_args(["finetune", "--export-jit-compile"]).export_jit_compile is True
    assert parser.parse_args(["finetune"]).export_jit_compile is False
