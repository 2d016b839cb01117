"""tfft: fine-tune pretrained models with Keras 3 on TensorFlow.

The classic Keras recipe, one library: load a pretrained backbone, add a task
head, freeze, compile, fit, evaluate, export.

Example:

>>> import tfft
>>> model = tfft.build_model("minilm", task="multiclass", num_classes=5)
>>> report = tfft.finetune(max_examples=300)   # the main job, end to end
"""

from tfft._backend import ensure_tensorflow_backend

ensure_tensorflow_backend()

# The backend must be chosen before anything below imports Keras.
from tfft import data, prompting  # noqa: E402  data registers the offline TFDS datasets
from tfft.backbones import (  # noqa: E402
    Backbone,
    BackboneInfo,
    list_backbones,
    load_backbone,
)
from tfft.backbones.applications import ImagePreprocessor  # noqa: E402
from tfft.backbones.offline_vision import load_imagenet_classifier  # noqa: E402
from tfft.backbones.tf_hub import HubLayer  # noqa: E402
from tfft.builders import build_model  # noqa: E402
from tfft.discriminative import LayerwiseOptimizer, layerwise_lr  # noqa: E402
from tfft.evaluation import (  # noqa: E402
    EvaluationReport,
    default_callbacks,
    evaluate,  # noqa: E402
    report_from_predictions,
)
from tfft.export import export, to_tflite  # noqa: E402
from tfft.feature_cache import CacheRefusedError, fit_cached  # noqa: E402
from tfft.finetune import FinetuneConfig, finetune  # noqa: E402
from tfft.freeze import (  # noqa: E402
    FeatureExtraction,
    FreezePolicy,
    Full,
    Regex,
    TopK,
    apply_freeze,
    parse_freeze,
    trainable_summary,
)
from tfft.gradual import Gradual, GradualUnfreezing, gradual_callback  # noqa: E402
from tfft.heads import BackboneLayer, Pooling, TaskHead  # noqa: E402
from tfft.lora import LoRA, merge_lora  # noqa: E402
from tfft.presets import compile_model, get_preset, list_presets, set_mixed_precision  # noqa: E402
from tfft.recipes import fine_tune  # noqa: E402
from tfft.selection import recommend, select  # noqa: E402
from tfft.strategy import (  # noqa: E402
    StrategyError,
    chief_only_path,
    chief_writes,
    distribute_dataset,
    get_strategy,
    global_batch_size,
    is_chief,
    per_replica_batch_size,
    scale_learning_rate,
)

__version__ = "0.1.0"


__all__ = [
    "Backbone",
    "BackboneInfo",
    "BackboneLayer",
    "CacheRefusedError",
    "EvaluationReport",
    "FeatureExtraction",
    "FinetuneConfig",
    "FreezePolicy",
    "Full",
    "Gradual",
    "GradualUnfreezing",
    "HubLayer",
    "ImagePreprocessor",
    "LayerwiseOptimizer",
    "LoRA",
    "Pooling",
    "Regex",
    "StrategyError",
    "TaskHead",
    "TopK",
    "apply_freeze",
    "build_model",
    "chief_only_path",
    "chief_writes",
    "compile_model",
    "data",
    "default_callbacks",
    "distribute_dataset",
    "evaluate",
    "export",
    "fine_tune",
    "finetune",
    "fit_cached",
    "get_preset",
    "get_strategy",
    "global_batch_size",
    "gradual_callback",
    "is_chief",
    "layerwise_lr",
    "list_backbones",
    "list_presets",
    "load_backbone",
    "load_imagenet_classifier",
    "merge_lora",
    "parse_freeze",
    "per_replica_batch_size",
    "prompting",
    "recommend",
    "report_from_predictions",
    "scale_learning_rate",
    "select",
    "set_mixed_precision",
    "to_tflite",
    "trainable_summary",
]
