"""tfft: fine-tune pretrained models with Keras 3 on TensorFlow.

The classic Keras recipe, one library: load a pretrained backbone, add a task
head, freeze, compile, fit, evaluate, export.

`import tfft` loads the core path only: Keras on TensorFlow and tfft's Keras
classes (layers, `Task`, adaptation, presets), so `keras.saving.load_model`
finds them in any process that imported tfft. The other subpackages
(`tfft.data` and TFDS, `tfft.evaluation`, `tfft.export`, `tfft.prompting`,
`tfft.selection`, `tfft.jobs` ...) load when first touched (PEP 562).

Example:

>>> import tfft
>>> task = tfft.build_model("minilm", task="multiclass", num_classes=5)
>>> task.fit(["a text", "another"], [0, 3], epochs=1)
>>> result = tfft.run_job(max_examples=300)   # the main job, end to end
"""

import importlib

from tfft._backend import check_environment, ensure_tensorflow_backend
from tfft.utils.version import __version__  # noqa: F401  (tfft.__version__)

check_environment()
ensure_tensorflow_backend()

# Registers tfft's Keras classes (layers, Task, LoRA state, schedules, the
# layer-wise optimizer) with Keras' serialisation, for `.keras` reloads.
import tfft.models  # noqa: E402, F401

# The core path a user meets first, each name -> the module that defines it.
_EXPORTS = {
    # backbones
    "Backbone": "tfft.backbones",
    "BackboneInfo": "tfft.backbones",
    "list_backbones": "tfft.backbones",
    "load_backbone": "tfft.backbones",
    "load_imagenet_classifier": "tfft.backbones.offline_vision",
    # layers
    "BackboneLayer": "tfft.layers",
    "HubLayer": "tfft.layers",
    "ImagePreprocessor": "tfft.layers",
    "Pooling": "tfft.layers",
    "TaskHead": "tfft.layers",
    # adaptation
    "FeatureExtraction": "tfft.adapt",
    "FreezePolicy": "tfft.adapt",
    "Full": "tfft.adapt",
    "Gradual": "tfft.adapt",
    "GradualUnfreezing": "tfft.adapt",
    "LayerwiseOptimizer": "tfft.adapt",
    "LoRA": "tfft.adapt",
    "Regex": "tfft.adapt",
    "TopK": "tfft.adapt",
    "apply_freeze": "tfft.adapt",
    "gradual_callback": "tfft.adapt",
    "layerwise_lr": "tfft.adapt",
    "merge_lora": "tfft.adapt",
    "parse_freeze": "tfft.adapt",
    "trainable_summary": "tfft.adapt",
    # training
    "CacheRefusedError": "tfft.training",
    "DivergenceGuard": "tfft.training",
    "TrainingDivergedError": "tfft.training",
    "compile_model": "tfft.training",
    "default_callbacks": "tfft.training",
    "fine_tune": "tfft.training",
    "fit_cached": "tfft.training",
    "get_preset": "tfft.training",
    "list_presets": "tfft.training",
    "set_mixed_precision": "tfft.training",
    # models
    "CausalLMTask": "tfft.models",
    "Task": "tfft.models",
    "build_causal_lm": "tfft.models",
    "build_model": "tfft.models",
    # evaluation and export
    "EvaluationReport": "tfft.evaluation",
    "evaluate": "tfft.evaluation",
    "report_from_predictions": "tfft.evaluation",
    "export_saved_model": "tfft.export",
    # few-shot learning
    "few_shot_fit": "tfft.prompting",
    "to_tflite": "tfft.export",
    # tf.distribute
    "get_strategy": "tfft.distribute",
    # the main job
    "JobConfig": "tfft.jobs.config",
    "run_job": "tfft.jobs.finetune",
}

_SUBPACKAGES = (
    "adapt", "backbones", "data", "distribute", "evaluation", "export", "jobs", "layers",
    "models", "prompting", "selection", "training",
)

__all__ = sorted([*_EXPORTS, *_SUBPACKAGES])


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tfft.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tfft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
