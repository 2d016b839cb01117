"""build_model(): backbone + head -> keras.Sequential or functional Model."""

import keras
import numpy as np
import tensorflow as tf

from tfft.backbones import Backbone, load_backbone
from tfft.adapt.freeze import apply_freeze, parse_freeze
from tfft.layers import TASKS, BackboneLayer, Pooling, TaskHead
from tfft.training.presets import compile_model


def build_model(backbone, task="multiclass", num_classes=2, freeze="feature_extraction",
                preset="auto", pooling="mean", dropout=0.1, hidden_units=None,
                compile=True, total_steps=None, strategy=None, normalize_features=False,
                **backbone_kwargs):
    """Builds a trainable model for a task from any backbone, in one call.

    Returns `keras.Sequential([backbone, pooling, head])` when the backbone
    takes one input and gives one output (the classic Keras recipe), else a
    functional `keras.Model` (dict inputs such as token ids + padding mask).
    The backbone is the layer named `"backbone"`, pooling `"pooling"`, the
    task head `"head"`.

    Args:
        backbone: str, keras.Model or `tfft.Backbone`. A spec such as
            `"keras_hub:all_minilm_l6_v2"` (see `tfft.load_backbone`).
        task: str. One of `"binary"`, `"multiclass"`, `"multilabel"`,
            `"regression"`, `"token_classification"`.
        num_classes: int. Number of classes (outputs for regression).
        freeze: str or FreezePolicy. Defaults to `"feature_extraction"`.
        preset: str. Compile preset name or `"auto"`; see `tfft.list_presets()`.
        pooling: str. `"mean"` (masked for text), `"max"`, `"cls"` or `"none"`.
        dropout: float. Head dropout. Defaults to 0.1.
        hidden_units: int. Optional hidden layer in the head.
        normalize_features: bool. L2-normalise pooled features (cosine-style
            heads, e.g. zero-shot prompt heads). Defaults to False.
        compile: bool. Compile with the preset. Defaults to True.
        total_steps: int. Training steps, for warmup/decay schedules.
        strategy: tf.distribute.Strategy. Build and compile under
            `strategy.scope()` so `fit` trains on every replica (see
            `tfft.get_strategy`). A spec string is then loaded in the scope
            too; a backbone object must have been built in it.
        **backbone_kwargs: passed to `tfft.load_backbone` for spec strings.

    Example:

    >>> model = tfft.build_model("minilm", task="multiclass", num_classes=5)
    >>> model.fit(train_ds, epochs=3)
    """
    if strategy is None and tf.distribute.has_strategy():
        # Called inside `with strategy.scope():`: same checks and fixes as strategy=.
        strategy = tf.distribute.get_strategy()
    args = dict(task=task, num_classes=num_classes, freeze=freeze, preset=preset,
                pooling=pooling, dropout=dropout, hidden_units=hidden_units, compile=compile,
                total_steps=total_steps, normalize_features=normalize_features,
                **backbone_kwargs)
    if strategy is None:
        return _build_model(backbone, **args)
    from tfft.distribute.strategy import check_built_in_scope, prepare_model

    if not isinstance(backbone, str):
        check_built_in_scope(getattr(backbone, "model", backbone), strategy)
    with strategy.scope():
        model = _build_model(backbone, **args)
    check_built_in_scope(model, strategy)
    return prepare_model(model, strategy)


def _build_model(backbone, task, num_classes, freeze, preset, pooling, dropout, hidden_units,
                 compile, total_steps, normalize_features, **backbone_kwargs):
    if task not in TASKS:
        raise ValueError(f"Unknown task. Expected one of {list(TASKS)}. Received: task={task!r}")
    policy = parse_freeze(freeze)
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, **backbone_kwargs)
    if task == "token_classification":
        pooling = "none"
    wrapper = BackboneLayer(
        backbone.model, output_key=backbone.info.output_key,
        block_names=backbone.block_names, name="backbone",
    )
    head = TaskHead(task, num_classes, dropout=dropout, hidden_units=hidden_units, name="head")
    pool = Pooling(pooling, normalize=normalize_features, name="pooling")
    model_inputs = backbone.model.input
    if isinstance(model_inputs, dict):
        inputs = {
            k: keras.Input(shape=v.shape[1:], dtype=v.dtype, name=k)
            for k, v in model_inputs.items()
        }
        features = wrapper(inputs)
        _check_poolable(features, task, backbone)
        mask = inputs.get(backbone.info.mask_key) if backbone.info.mask_key else None
        pooled = pool(features, mask=mask)
        model = keras.Model(inputs, head(pooled), name=f"{backbone.name}_{task}")
    else:
        shape = backbone.model.input_shape[1:]
        model = keras.Sequential(
            [keras.Input(shape=shape, dtype=backbone.model.input.dtype), wrapper, pool, head],
            name=f"{backbone.name}_{task}",
        )
        _check_poolable(wrapper.output, task, backbone)
    model.tfft_backbone = backbone
    apply_freeze(model, policy)
    if compile:
        compile_model(model, preset=preset, task=task, family=backbone.info.family,
                      total_steps=total_steps, num_classes=num_classes)
    return model


def _check_poolable(features, task, backbone):
    rank = len(features.shape)
    if task == "token_classification" and rank != 3:
        raise ValueError(
            f"token_classification needs per-token features (batch, tokens, dim); the "
            f"backbone {backbone.name!r} gives shape {features.shape}."
        )
    if rank not in (2, 3, 4):
        raise ValueError(
            f"The backbone {backbone.name!r} gives features of shape {features.shape}, "
            "which cannot be pooled for a task head; expected (batch, dim), "
            "(batch, tokens, dim) or (batch, h, w, channels)."
        )


def check_labels(labels, task, num_classes):
    """Checks labels fit the task and `num_classes` before training starts."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("No labels: the training data is empty.")
    if task in ("multiclass", "binary", "token_classification"):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"task={task!r} needs integer class ids. Received labels of dtype "
                f"{labels.dtype}; encode them with tfft.data first."
            )
        high = 2 if task == "binary" else num_classes
        bad = labels[(labels < 0) | (labels >= high)]
        if bad.size:
            raise ValueError(
                f"Labels must be in [0, {high}) for task={task!r} with num_classes="
                f"{num_classes}. Received label(s) {sorted(set(bad.tolist()))[:10]}."
            )
    elif task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise ValueError(
                f"task='multilabel' needs multi-hot labels of shape (n, {num_classes}). "
                f"Received shape {labels.shape}."
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("Multilabel targets must be 0 or 1.")
    elif task == "regression" and not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"Regression targets must be numbers. Received dtype {labels.dtype}")
