"""Training: compile presets, the `fine_tune` recipe, the feature cache, callbacks and
gradient checkpointing."""

from tfft.training.callbacks import (
    DivergenceGuard,
    EpochSeeding,
    MonitorCheck,
    TrainingDivergedError,
    default_callbacks,
)
from tfft.training.checkpointing import checkpoint_layers, is_checkpointed
from tfft.training.feature_cache import (
    CacheRefusedError,
    cached_features,
    clear_cache,
    features_dataset,
    fit_cached,
    list_cached,
)
from tfft.training.optimizers import FusedAdamW
from tfft.training.presets import (
    OPTIMIZER_PRESETS,
    TASK_PRESETS,
    compile_model,
    get_preset,
    has_batch_norm,
    list_presets,
    make_optimizer,
    preset_of,
    set_mixed_precision,
)
from tfft.training.recipes import EpochData, epoch_datasets, fine_tune
from tfft.training.tracing import (
    SingleTrainFunction,
    build_for_training,
    make_single_train_function,
    predict_batches,
    trace_predict_function,
)

__all__ = [
    "OPTIMIZER_PRESETS",
    "TASK_PRESETS",
    "CacheRefusedError",
    "DivergenceGuard",
    "EpochData",
    "EpochSeeding",
    "FusedAdamW",
    "MonitorCheck",
    "SingleTrainFunction",
    "TrainingDivergedError",
    "build_for_training",
    "cached_features",
    "checkpoint_layers",
    "clear_cache",
    "compile_model",
    "default_callbacks",
    "epoch_datasets",
    "features_dataset",
    "fine_tune",
    "fit_cached",
    "get_preset",
    "has_batch_norm",
    "is_checkpointed",
    "list_cached",
    "list_presets",
    "make_optimizer",
    "make_single_train_function",
    "predict_batches",
    "preset_of",
    "set_mixed_precision",
    "trace_predict_function",
]
