import json
import os

import numpy as np
import pytest

import tfft
from tfft.data import load_bbc_news, stratified_split
from tfft.export import load_serving_outputs_in_fresh_process
from tfft.jobs.finetune import ConfigError, JobConfig

MAJORITY_BASELINE_F1 = 0.23


@pytest.mark.slow
def test_main_job_learns_and_reports(finetune_run):
    report = finetune_run
    assert [s["name"] for s in report["stages"]] == ["head", "fine_tune"]
    for stage in report["stages"]:
        print(stage["name"], stage["test"], f"{stage['seconds']:.1f}s")
        assert stage["test"]["macro_f1"] > MAJORITY_BASELINE_F1 + 0.4
    assert report["stages"][0]["trainable_params"] < report["stages"][1]["trainable_params"]
    with open(os.path.join(report["run_dir"], "report.json")) as f:
        saved = json.load(f)
    assert saved["test"]["macro_f1"] == pytest.approx(report["test"]["macro_f1"])
    assert saved["export_path"] == report["export_path"]
    for png in ("confusion_matrix.png", "per_class_f1.png", "training_curves.png"):
        with open(os.path.join(report["run_dir"], png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_export_gives_the_same_predictions_in_a_fresh_process(finetune_run):
    path = finetune_run["export_path"]
    assert os.path.basename(path) == "1"
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    data = load_bbc_news()
    texts = np.asarray(data.x[::150][:12]).astype(str)
    model = finetune_run["model"]
    expected = model.predict(finetune_run["preprocessor"](texts), verbose=0)
    got = load_serving_outputs_in_fresh_process(path, texts)
    assert np.max(np.abs(got["probabilities"] - expected)) <= 1e-5
    names = np.array(data.class_names)[expected.argmax(-1)]
    assert got["class_names"].tolist() == names.tolist()
    with open(os.path.join(path, "tfft_metadata.json")) as f:
        meta = json.load(f)
    assert meta["class_names"] == data.class_names
    assert meta["backbone_spec"] == "keras_hub:all_minilm_l6_v2"


@pytest.mark.slow
def test_split_is_deterministic_and_stratified():
    data = load_bbc_news()
    a = stratified_split(data.y, 0.15, 0.15, seed=0)
    b = stratified_split(data.y, 0.15, 0.15, seed=0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert sum(len(s) for s in a) == len(data)
    assert not set(a[0]) & set(a[2])
    test_share = np.bincount(data.y[a[2]]) / len(a[2])
    np.testing.assert_allclose(test_share, np.bincount(data.y) / len(data), atol=0.02)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"head_epochs": 0}, "head_epochs: expected a positive integer"),
        ({"epochs": -1}, "epochs: expected a non-negative integer"),
        ({"dataset": "imdb_nope"}, "dataset: unknown dataset"),
        ({"backbone": "does-not-exist"}, "Unknown or malformed backbone spec"),
        ({"learning_rate": 0}, "learning_rate: expected a positive finite number"),
        ({"max_examples": 3}, "max_examples: expected an integer >= 10"),
        ({"distribution": "horovod"}, "distribution: unknown distribution strategy"),
        ({"method": "lora_magic"}, "method: unknown adaptation method"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "must leave examples for training"),
        ({"feature_cache": "yes"}, "feature_cache: expected true or false"),
    ],
)
def test_bad_settings_are_rejected_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        JobConfig(**overrides)


def test_unknown_config_keys_are_named():
    with pytest.raises(ConfigError, match=r"Unknown setting\(s\) \['epoch'\]"):
        JobConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match=r"Unknown setting\(s\) \['epoch'\]"):
        tfft.run_job(JobConfig(), epoch=3)


def test_strategy_key_is_a_deprecated_alias_of_method():
    with pytest.warns(DeprecationWarning, match="'strategy' is deprecated: use 'method'"):
        config = JobConfig.from_dict({"strategy": "prompt", "epochs": 0})
    assert config == JobConfig(method="prompt", epochs=0)
    assert "strategy" not in config.to_dict() and config.to_dict()["method"] == "prompt"
    # Both names with one value is fine; two different values are refused.
    with pytest.warns(DeprecationWarning):
        assert JobConfig.from_dict({"strategy": "prompt", "method": "prompt"}).method == "prompt"
    with pytest.raises(ConfigError, match="strategy is a deprecated alias of method, and "
                                          "they disagree"):
        JobConfig.from_dict({"strategy": "prompt", "method": "soft_prompt"})
    with pytest.warns(DeprecationWarning), pytest.raises(
            ConfigError, match="method: unknown adaptation method"):
        JobConfig.from_dict({"strategy": "mirrored"})


def test_unwritable_run_dir_fails_before_loading_anything(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="inside a file"):
        tfft.run_job(run_dir=str(blocker / "run"), export_dir=str(tmp_path / "e"))
    assert not (tmp_path / "e").exists()
