"""Models under a strategy: variables created in its scope, and `fit` under multi-worker."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfft import _compat
from tfft.distribute.errors import StrategyError


def check_built_in_scope(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Raises `StrategyError` unless every variable of `model` belongs to `strategy`.

    A layer built outside `strategy.scope()` keeps plain variables: replicas
    would not share its updates. Build (or load) it inside the scope.
    """
    extended = strategy.extended
    outside = [w.path if hasattr(w, "path") else w.name for w in model.weights
               if not extended.variable_created_in_scope(_compat.variable_value(w))]
    if outside:
        raise StrategyError(
            f"{len(outside)} of {len(model.weights)} variables of {model.name!r} were created "
            f"outside the scope of the {type(strategy).__name__} (e.g. {outside[0]!r}), so the "
            "replicas would not share their updates. Pass the backbone as a spec string to "
            "tfft.build_model(..., strategy=strategy), or create it inside "
            "`with strategy.scope():`."
        )


def prepare_model(model: keras.Model, strategy: tf.distribute.Strategy) -> keras.Model:
    """Lets `model.fit` run under `strategy`; returns `model`.

    Keras 3.15's `fit` under MultiWorkerMirroredStrategy first all-reduces one
    input batch to build the model, which fails for (x, y) tuples and dict
    inputs ("Attempt to convert a value ... PerReplica", keras-team/keras#20329).
    For that strategy the build uses this worker's local batch instead: only
    its shapes and dtypes matter. Other strategies are left alone.
    `tfft.build_model(..., strategy=...)` calls this.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model

    _compat.set_symbolic_build_batch(
        model, lambda batch: tf.nest.map_structure(_local_value, batch)
    )
    return model


def _local_value(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value
