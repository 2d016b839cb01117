"""One-call training recipes on a model built by `tfft.build_model`.

`fine_tune` is fastai's `fine_tune(epochs, freeze_epochs=1)` for Keras 3:
train the new head on the frozen backbone, then unfreeze and train on with a
lower learning rate, recompiling between the stages so the train step and the
optimizer see the right variables.
"""

import numpy as np
import tensorflow as tf

from tfft.adapt.freeze import (
    FeatureExtraction,
    apply_freeze,
    find_backbone_layer,
    parse_freeze,
    trainable_summary,
)
from tfft.adapt.gradual import Gradual, GradualUnfreezing
from tfft.training.presets import (
    OPTIMIZER_PRESETS,
    TASK_PRESETS,
    compile_model,
    make_optimizer,
    resolve_preset,
    task_metrics,
)

VERBOSE = ("auto", 0, 1, 2)


def fine_tune(model, train, val=None, epochs=3, freeze_epochs=1, unfreeze="full", lr=None,
              base_lr_divisor=10, callbacks=None, verbose="auto", batch_size=32,
              lr_decay=None, preset="auto"):
    """Trains the head on the frozen backbone, then fine-tunes, in one call.

    Stage "head": `freeze_epochs` epochs with the backbone frozen
    (`feature_extraction`) and the `"head"` preset (Adam). Stage
    "fine_tune": the `unfreeze` policy and `epochs` epochs with the backbone
    family's preset (`"transformer"`: AdamW with warmup and linear decay;
    `"cnn"`: SGD with momentum and cosine decay) over exactly that stage's
    steps. Each stage recompiles, so no stale train step or optimizer
    carries over.

    Args:
        model: keras.Model. Built by `tfft.build_model`.
        train: tf.data.Dataset of `(inputs, labels)` batches, or an
            `(inputs, labels)` tuple of arrays (batched by `batch_size`).
        val: same forms, or None. Validation data for both stages.
        epochs: int. Epochs after unfreezing. Defaults to 3.
        freeze_epochs: int. Head-only epochs first (0 skips). Defaults to 1.
        unfreeze: str or FreezePolicy. Policy of the second stage: `"full"`,
            `"top_k:K"`, `"regex:..."`, `"lora:R"` or `"gradual[:N]"` (its
            callback is added). Defaults to `"full"`.
        lr: float. Head-stage learning rate; the second stage uses
            `lr / base_lr_divisor`. None uses each preset's own rate.
        base_lr_divisor: float. See `lr`. Defaults to 10.
        callbacks: list of keras.callbacks.Callback, for both stages.
        verbose: "auto", 0, 1 or 2. Passed to `fit`.
        batch_size: int. For array inputs. Defaults to 32.
        lr_decay: float in (0, 1]. Layer-wise learning-rate decay for the
            second stage (`tfft.layerwise_lr`); None for one rate. With
            `unfreeze="gradual"` the second stage always uses a
            `LayerwiseOptimizer` (decay 1.0 by default) so each block gets
            its own Adam clock when it opens.
        preset: str. Optimizer preset of the second stage; `"auto"` picks
            the backbone family's. Defaults to `"auto"`.

    Returns:
        list of `(stage_name, keras.callbacks.History)`.

    Example:

    >>> model = tfft.build_model(backbone, num_classes=5)
    >>> histories = tfft.fine_tune(model, train_ds, val_ds, epochs=2, unfreeze="top_k:2")
    """
    _check_int("epochs", epochs, low=0)
    _check_int("freeze_epochs", freeze_epochs, low=0)
    if epochs + freeze_epochs == 0:
        raise ValueError("fine_tune needs epochs + freeze_epochs > 0. Received: 0 and 0.")
    _check_int("batch_size", batch_size, low=1)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise ValueError(f"lr must be None or a positive number. Received: lr={lr!r}")
    if (isinstance(base_lr_divisor, bool) or not isinstance(base_lr_divisor, (int, float))
            or base_lr_divisor <= 0):
        raise ValueError(
            f"base_lr_divisor must be a positive number. Received: {base_lr_divisor!r}"
        )
    if verbose not in VERBOSE:
        raise ValueError(f"verbose must be one of {list(VERBOSE)}. Received: {verbose!r}")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(
            f"callbacks must be a list of keras callbacks. Received: {type(callbacks).__name__}"
        )
    if preset not in ("auto", *OPTIMIZER_PRESETS):
        raise ValueError(
            f"Unknown preset. Expected one of {['auto', *sorted(OPTIMIZER_PRESETS)]}. "
            f"Received: preset={preset!r}"
        )
    policy = parse_freeze(unfreeze)
    if isinstance(policy, FeatureExtraction):
        raise ValueError(
            "fine_tune's second stage must unfreeze something: use unfreeze='full', "
            "'top_k:K', 'regex:PATTERN', 'lora:R' or 'gradual'. "
            f"Received: unfreeze={unfreeze!r}"
        )
    find_backbone_layer(model)
    head = _task_head(model)
    family = getattr(getattr(model, "tfft_backbone", None), "info", None)
    family = family.family if family is not None else "transformer"
    train_data = _as_dataset(train, batch_size, "train", shuffle=True)
    val_data = _as_dataset(val, batch_size, "val", shuffle=False) if val is not None else None
    steps = _steps_per_epoch(train_data)
    # Apply the second-stage policy once now: it validates against this model
    # (top_k larger than the backbone, no blocks for gradual ...) before training.
    apply_freeze(model, policy)
    if lr_decay is not None:
        from tfft.adapt.discriminative import layerwise_multipliers

        layerwise_multipliers(model, lr_decay)
    callbacks = list(callbacks or [])
    histories = []

    if freeze_epochs:
        apply_freeze(model, "feature_extraction")
        overrides = {"learning_rate": float(lr)} if lr is not None else {}
        compile_model(model, preset="head", task=head.task, family=family,
                      total_steps=_total(steps, freeze_epochs), num_classes=head.num_classes,
                      **overrides)
        _say(verbose, f"fine_tune: stage 'head': {freeze_epochs} epoch(s), "
              f"{trainable_summary(model)['trainable']:,} trainable parameters")
        history = model.fit(train_data, validation_data=val_data, epochs=freeze_epochs,
                            callbacks=callbacks, verbose=verbose, shuffle=False)
        histories.append(("head", history))

    if epochs:
        apply_freeze(model, policy)
        name = resolve_preset(preset, family, backbone_trainable=True)
        overrides = {"learning_rate": float(lr) / base_lr_divisor} if lr is not None else {}
        total = _total(steps, epochs)
        resolved = compile_model(model, preset=name, task=head.task, family=family,
                                 total_steps=total, num_classes=head.num_classes, **overrides)
        stage_callbacks = list(callbacks)
        # Gradual unfreezing gets one optimizer clock per block (decay 1.0 unless set):
        # with a shared Keras Adam a block opened late starts with skewed bias correction.
        decay = lr_decay if lr_decay is not None else (
            1.0 if isinstance(policy, Gradual) else None)
        if decay is not None:
            from tfft.adapt.discriminative import (
                LayerwiseOptimizer,
                block_depths,
                layerwise_multipliers,
            )

            model.compile(
                optimizer=LayerwiseOptimizer(make_optimizer(resolved, total),
                                             layerwise_multipliers(model, decay),
                                             groups=block_depths(model)),
                loss=TASK_PRESETS[head.task]["loss"],
                metrics=task_metrics(head.task, head.num_classes),
            )
        if isinstance(policy, Gradual):
            stage_callbacks.insert(0, GradualUnfreezing(model, policy, verbose=1 if verbose else 0))
        _say(verbose, f"fine_tune: stage 'fine_tune' ({policy.name}, preset {name!r}): {epochs} "
              f"epoch(s), {trainable_summary(model)['trainable']:,} trainable parameters")
        history = model.fit(train_data, validation_data=val_data, epochs=epochs,
                            callbacks=stage_callbacks, verbose=verbose, shuffle=False)
        histories.append(("fine_tune", history))
    return histories


def _say(verbose, message):
    if verbose:
        print(message)


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}. Received: {name}={value!r}")


def _task_head(model):
    try:
        head = model.get_layer("head")
    except ValueError:
        head = None
    if head is None or not hasattr(head, "task"):
        raise ValueError(
            f"fine_tune needs a model built by tfft.build_model (with a layer named 'head'). "
            f"Received: {getattr(model, 'name', model)!r}"
        )
    return head


def _as_dataset(data, batch_size, name, shuffle):
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        size = len(y)
        if size == 0:
            raise ValueError(f"fine_tune: {name} is empty.")
        dataset = tf.data.Dataset.from_tensor_slices((x, np.asarray(y)))
        if shuffle:
            dataset = dataset.shuffle(size, seed=0, reshuffle_each_iteration=True)
        return dataset.batch(batch_size)
    raise TypeError(
        f"fine_tune: {name} must be a tf.data.Dataset of (inputs, labels) batches or an "
        f"(inputs, labels) tuple. Received: {type(data).__name__}"
    )


def _steps_per_epoch(dataset):
    cardinality = int(dataset.cardinality().numpy())
    if cardinality == 0:
        raise ValueError("fine_tune: the training dataset is empty.")
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "fine_tune: the training dataset repeats forever; remove .repeat() so an epoch "
            "is one pass."
        )
    return cardinality if cardinality > 0 else None


def _total(steps, epochs):
    return steps * epochs if steps else None

