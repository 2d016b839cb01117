import tfft

EXPECTED = [
    "Backbone", "BackboneInfo", "BackboneLayer", "FeatureExtraction", "FinetuneConfig",
    "FreezePolicy", "Full", "Pooling", "Regex", "TaskHead", "TopK", "apply_freeze",
    "build_model", "compile_model", "default_callbacks", "evaluate", "export", "finetune",
    "get_preset",
    "list_backbones", "list_presets", "load_backbone", "parse_freeze",
    "set_mixed_precision", "trainable_summary", "HubLayer", "ImagePreprocessor",
    "EvaluationReport", "report_from_predictions", "load_imagenet_classifier",
    "StrategyError", "get_strategy", "global_batch_size", "per_replica_batch_size",
    "scale_learning_rate", "distribute_dataset", "is_chief", "chief_only_path",
    "chief_writes", "data", "prompting", "Gradual", "GradualUnfreezing", "gradual_callback",
    "LoRA", "merge_lora", "LayerwiseOptimizer", "layerwise_lr", "fine_tune", "recommend",
    "select", "to_tflite", "CacheRefusedError", "fit_cached",
]


def test_public_api_is_pinned_and_sorted():
    assert tfft.__all__ == sorted(tfft.__all__)
    missing = sorted(set(EXPECTED) - set(tfft.__all__))
    assert not missing, f"public names dropped: {missing}"
    for name in tfft.__all__:
        assert hasattr(tfft, name), name


def test_keras_runs_on_tensorflow():
    import keras

    assert keras.backend.backend() == "tensorflow"
    assert int(keras.__version__.split(".")[0]) == 3
