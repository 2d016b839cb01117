"""build_model(): backbone + pooling + head -> a `tfft.Task`, frozen and compiled."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.adapt import FreezePolicy, apply_freeze, parse_freeze
from tfft.backbones import Backbone, load_backbone
from tfft.distribute import check_built_in_scope, prepare_model
from tfft.layers import TASKS, BackboneLayer, Pooling, TaskHead
from tfft.models.causal_lm import build_causal_lm
from tfft.models.detection import DETECTION_TASK, build_detection_model
from tfft.models.segmentation import SEGMENTATION_TASK, build_segmentation_model
from tfft.models.task import Task, backbone_input_spec
from tfft.training.presets import compile_model

CAUSAL_LM_TASK = "causal_lm"


def build_model(backbone: str | keras.Model | Backbone, task: str = "multiclass",
                num_classes: int = 2, freeze: str | FreezePolicy | None = None,
                preset: str = "auto", pooling: str = "mean", dropout: float = 0.1,
                hidden_units: int | None = None, compile: bool = True,
                total_steps: int | None = None,
                strategy: tf.distribute.Strategy | None = None,
                normalize_features: bool = False, class_names: list[str] | None = None,
                **backbone_kwargs: Any) -> Task:
    """Builds a `tfft.Task` for a task from any backbone, in one call.

    The task is a functional `keras.Model` whose layers are `"backbone"`
    (a `BackboneLayer`), `"pooling"` and `"head"`; it carries the
    backbone's preprocessor, so `fit`/`predict`/`evaluate` take raw inputs,
    and it saves and reloads whole through `.keras` files. For the seed
    recipe's `keras.Sequential([backbone, pooling, head])` form (single-input
    backbones) use `task.to_sequential()`.

    Args:
        backbone: str, keras.Model or `tfft.Backbone`. A spec such as
            `"keras_hub:all_minilm_l6_v2"` (see `tfft.load_backbone`).
        task: str. One of `"binary"`, `"multiclass"`, `"multilabel"`,
            `"regression"`, `"token_classification"`, `"semantic_segmentation"`,
            `"object_detection"` (a `DetectionTask`; see
            `tfft.models.detection.build_detection_model`), or `"causal_lm"` (a
            `tfft.CausalLMTask` from a causal LM spec such as
            `"offline:smollm2"`; see `tfft.build_causal_lm` for its options,
            passed as keyword arguments).
        num_classes: int. Number of classes (outputs for regression).
        freeze: str or FreezePolicy. Defaults to `"feature_extraction"`
            (`"lora:8"` for `task="causal_lm"`).
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
        class_names: list of str. Names of the classes in label order, kept
            with the task (exports and reports use them). Defaults to None.
        **backbone_kwargs: passed to `tfft.load_backbone` for spec strings.

    Returns:
        A `tfft.Task`.

    Example:

    >>> task = tfft.build_model("minilm", task="multiclass", num_classes=5)
    >>> task.fit(train_texts, train_labels, epochs=3)
    """
    if task == CAUSAL_LM_TASK:
        if strategy is not None:
            raise ValueError("task='causal_lm' does not take a strategy yet. Received: "
                             f"strategy={strategy!r}")
        return build_causal_lm(backbone, freeze="lora:8" if freeze is None else freeze,
                               compile=compile, **backbone_kwargs)
    if freeze is None:
        freeze = "feature_extraction"
    if task == SEGMENTATION_TASK:  # pooling and head options do not apply
        return build_segmentation_model(backbone, num_classes, freeze=freeze, compile=compile,
                                        class_names=class_names, **backbone_kwargs)
    if task == DETECTION_TASK:  # likewise; see tfft.models.detection for its options
        return build_detection_model(backbone, num_classes, freeze=freeze, compile=compile,
                                     class_names=class_names, **backbone_kwargs)
    if strategy is None and tf.distribute.has_strategy():
        # Called inside `with strategy.scope():`: same checks and fixes as strategy=.
        strategy = tf.distribute.get_strategy()
    args = dict(task=task, num_classes=num_classes, freeze=freeze, preset=preset,
                pooling=pooling, dropout=dropout, hidden_units=hidden_units, compile=compile,
                total_steps=total_steps, normalize_features=normalize_features,
                class_names=class_names, **backbone_kwargs)
    if strategy is None:
        return _build_model(backbone, **args)
    if not isinstance(backbone, str):
        check_built_in_scope(getattr(backbone, "model", backbone), strategy)
    with strategy.scope():
        model = _build_model(backbone, **args)
    check_built_in_scope(model, strategy)
    return prepare_model(model, strategy)


def _build_model(backbone, task, num_classes, freeze, preset, pooling, dropout, hidden_units,
                 compile, total_steps, normalize_features, class_names, **backbone_kwargs):
    if task not in TASKS:
        raise ValueError(f"Unknown task. Expected one of "
                         f"{[*TASKS, SEGMENTATION_TASK, DETECTION_TASK, CAUSAL_LM_TASK]}. "
                         f"Received: task={task!r}")
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
    _check_poolable(wrapper.compute_output_spec(backbone_input_spec(backbone.model)), task,
                    backbone)
    model = Task(wrapper, pool, head, preprocessor=backbone.preprocessor,
                 backbone_info=backbone.info, class_names=class_names,
                 name=f"{backbone.name}_{task}")
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


def check_labels(labels: Any, task: str, num_classes: int) -> None:
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
