import subprocess
import sys

import tfft

EXPECTED = [
    "Backbone", "BackboneInfo", "BackboneLayer", "CacheRefusedError", "CausalLMTask",
    "DivergenceGuard",
    "EvaluationReport",
    "FeatureExtraction", "FreezePolicy", "Full", "Gradual", "GradualUnfreezing", "HubLayer",
    "ImagePreprocessor", "JobConfig", "LayerwiseOptimizer", "LoRA", "Pooling", "Regex", "Task",
    "TaskHead", "TopK", "TrainingDivergedError", "apply_freeze", "build_causal_lm", "build_model",
    "compile_model",
    "default_callbacks",
    "evaluate", "export_saved_model", "few_shot_fit", "fine_tune", "fit_cached", "get_preset",
    "get_strategy",
    "gradual_callback", "layerwise_lr", "list_backbones", "list_presets", "load_backbone",
    "load_imagenet_classifier", "merge_lora", "parse_freeze", "report_from_predictions",
    "run_job", "set_mixed_precision", "to_tflite", "trainable_summary",
    # subpackages, loaded on first use
    "adapt", "backbones", "data", "distribute", "evaluation", "export", "jobs", "layers",
    "models", "prompting", "selection", "training",
]


def test_public_api_is_pinned_and_sorted():
    assert tfft.__all__ == sorted(tfft.__all__)
    assert sorted(EXPECTED) == tfft.__all__
    for name in tfft.__all__:
        assert getattr(tfft, name) is not None, name


def test_one_meaning_per_word():
    # The main job and the two-stage recipe are different things with different names;
    # "strategy" at the top level means tf.distribute only.
    assert not hasattr(tfft, "finetune")
    assert callable(tfft.fine_tune) and callable(tfft.run_job)
    assert tfft.get_strategy.__module__.startswith("tfft.distribute")


def test_unknown_name_is_an_attribute_error():
    try:
        tfft.does_not_exist  # noqa: B018
    except AttributeError as error:
        assert "does_not_exist" in str(error)
    else:
        raise AssertionError("tfft.does_not_exist did not raise AttributeError")


def test_import_tfft_loads_only_the_core_path():
    code = (
        "import sys, tfft; "
        "heavy = [m for m in ('tensorflow_datasets', 'tfft.prompting', 'tfft.selection', "
        "'tfft.jobs', 'tfft.data', 'tfft.evaluation', 'tfft.export', 'tfft.cli') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_keras_runs_on_tensorflow():
    import keras

    assert keras.backend.backend() == "tensorflow"
    assert int(keras.__version__.split(".")[0]) == 3
