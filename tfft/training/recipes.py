"""One-call training recipes on a model built by `tfft.build_model`.

`fine_tune` is fastai's `fine_tune(epochs, freeze_epochs=1)` for Keras 3:
train the new head on the frozen backbone, then unfreeze and train on with a
lower learning rate, recompiling between the stages so the train step and the
optimizer see the right variables. It is the one training engine behind the
main job's unfreeze stage and model selection's fine-tune candidates: resume
after a kill (`backup_dir`), deterministic per-epoch order (`seed`) and
`tf.distribute` (`strategy`) are arguments, not separate code paths.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.adapt.discriminative import LayerwiseOptimizer, block_depths, layerwise_multipliers
from tfft.adapt.freeze import (
    FeatureExtraction,
    FreezePolicy,
    apply_freeze,
    find_backbone_layer,
    parse_freeze,
    trainable_summary,
)
from tfft.adapt.gradual import Gradual, GradualUnfreezing
from tfft.distribute import distribute_dataset, prepare_model
from tfft.training.callbacks import DivergenceGuard, EpochSeeding
from tfft.training.presets import (
    OPTIMIZER_PRESETS,
    TASK_PRESETS,
    compile_model,
    has_batch_norm,
    make_optimizer,
    record_preset,
    resolve_preset,
    task_metrics,
)
from tfft.training.tracing import build_for_training
from tfft.utils.checks import check_int, check_positive_number

logger = logging.getLogger(__name__)

VERBOSE = ("auto", 0, 1, 2)
STAGES = ("head", "fine_tune")

MakeDataset = Callable[..., tf.data.Dataset]


def fine_tune(
    model: keras.Model,
    train: tf.data.Dataset | tuple[Any, Any],
    val: tf.data.Dataset | tuple[Any, Any] | None = None,
    epochs: int = 3,
    freeze_epochs: int = 1,
    unfreeze: str | FreezePolicy = "full",
    lr: float | None = None,
    base_lr_divisor: float = 10,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    verbose: str | int = "auto",
    batch_size: int = 32,
    lr_decay: float | None = None,
    preset: str = "auto",
    fine_tune_lr: float | None = None,
    make_dataset: MakeDataset | None = None,
    seed: int = 0,
    backup_dir: str | os.PathLike | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> list[tuple[str, keras.callbacks.History]]:
    """Trains the head on the frozen backbone, then fine-tunes, in one call.

    Stage `"head"`: `freeze_epochs` epochs with the backbone frozen
    (`feature_extraction`) and the `"head"` preset (Adam). Stage
    `"fine_tune"`: the `unfreeze` policy and `epochs` epochs with the
    backbone family's preset (`"transformer"`: AdamW with linear warmup and
    decay; `"cnn"`: SGD with momentum and cosine decay for a CNN with
    BatchNormalization, `"plain_cnn"`: Adam at 1e-4 for one without) whose
    schedule spans exactly that stage's steps. A `DivergenceGuard` watches
    both stages (unless `callbacks` holds one): a loss 100x the first
    batches' median, or NaN, raises `TrainingDivergedError` naming the
    learning rate and preset. Each stage recompiles (inside
    `strategy.scope()`), so no stale train step or optimizer carries over.
    `freeze_epochs=0` runs the second stage alone (e.g. after a head trained
    on cached features with `tfft.fit_cached`); `epochs=0` the first alone.

    Array inputs are batched in an order that depends only on `(seed,
    epoch)`, and `EpochSeeding` derives the dropout masks the same way, so a
    run resumed at epoch `k` (`backup_dir`) trains on exactly the batches and
    masks an uninterrupted run sees from epoch `k` on.

    Args:
        model: keras.Model. A `tfft.Task` (or any model with a tfft
            `BackboneLayer` and a layer named `"head"`).
        train: tf.data.Dataset of `(inputs, labels)` batches (one epoch; it
            must not repeat), or an `(x, y)` tuple of arrays: raw inputs when
            `make_dataset` preprocesses them, else model inputs (a dict of
            arrays for text backbones).
        val: same forms, or None. Validation data for both stages.
        epochs: int. Epochs after unfreezing (0 skips the stage). Defaults
            to 3.
        freeze_epochs: int. Head-only epochs first (0 skips the stage).
            Defaults to 1.
        unfreeze: str or FreezePolicy. Policy of the second stage: `"full"`,
            `"top_k:K"`, `"regex:..."`, `"lora:R"` or `"gradual[:N]"` (its
            callback is added). Defaults to `"full"`.
        lr: float. Head-stage learning rate; the second stage uses
            `lr / base_lr_divisor` unless `fine_tune_lr` is set. None uses
            each preset's own rate.
        base_lr_divisor: float. See `lr`. Defaults to 10.
        callbacks: list of keras.callbacks.Callback, for both stages.
        verbose: "auto", 0, 1 or 2. Passed to `fit`.
        batch_size: int. Batch size for array inputs (the global batch under
            a multi-replica `strategy`). Defaults to 32.
        lr_decay: float in (0, 1]. Layer-wise learning-rate decay for the
            second stage (`tfft.layerwise_lr`); None for one rate. With
            `unfreeze="gradual"` the second stage always uses a
            `LayerwiseOptimizer` (decay 1.0 by default) so each block gets
            its own Adam clock when it opens.
        preset: str. Optimizer preset of the second stage; `"auto"` picks
            the backbone family's. Defaults to `"auto"`.
        fine_tune_lr: float. Learning rate of the second stage: the peak of
            the transformer preset's warmup and decay, the start of the CNN
            preset's cosine decay. Overrides `lr / base_lr_divisor`. None:
            see `lr`.
        make_dataset: callable `(x, y, batch_size=...) -> tf.data.Dataset` of
            batched `(model inputs, labels)`, applied to array inputs (e.g.
            to tokenise raw strings). Defaults to `model.make_dataset` when
            the model has one (a `tfft.Task`), else the arrays are sliced
            as they are.
        seed: int. Seeds each epoch's order of array inputs and the dropout
            masks (`EpochSeeding`). Defaults to 0.
        backup_dir: str. Folder for `keras.callbacks.BackupAndRestore`, one
            subfolder per stage (`head/`, `fine_tune/`): calling
            `fine_tune` again with the same arguments after a kill resumes
            the interrupted stage after its last finished epoch. A stage
            that finished deletes its backup, so earlier stages of the same
            call run again. None: no backups.
        strategy: tf.distribute.Strategy. Compiles inside its scope and
            shards the datasets across its replicas; build the model inside
            it too (`tfft.build_model(..., strategy=strategy)`). Defaults to
            the current strategy.

    Returns:
        list of `(stage_name, keras.callbacks.History)`; each history has a
        `resumed_from_epoch` attribute (0 unless resumed from `backup_dir`).

    Example:

    >>> task = tfft.build_model("minilm", num_classes=5)
    >>> histories = tfft.fine_tune(task, (texts, labels), (val_texts, val_labels),
    ...                            epochs=2, unfreeze="top_k:2")
    >>> # Head trained elsewhere; resumable top-2 stage at a 5e-5 peak rate:
    >>> tfft.fine_tune(task, (texts, labels), epochs=3, freeze_epochs=0,
    ...                unfreeze="top_k:2", fine_tune_lr=5e-5, backup_dir="runs/a/backup")
    """
    check_int("epochs", epochs, minimum=0)
    check_int("freeze_epochs", freeze_epochs, minimum=0)
    if epochs + freeze_epochs == 0:
        raise ValueError("fine_tune needs epochs + freeze_epochs > 0. Received: 0 and 0.")
    check_int("batch_size", batch_size)
    check_int("seed", seed, minimum=0)
    check_positive_number("lr", lr, allow_none=True)
    check_positive_number("fine_tune_lr", fine_tune_lr, allow_none=True)
    check_positive_number("base_lr_divisor", base_lr_divisor)
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
    if make_dataset is not None and not callable(make_dataset):
        raise TypeError(
            f"make_dataset must be a callable (x, y, batch_size=...) -> tf.data.Dataset. "
            f"Received: {type(make_dataset).__name__}"
        )
    if backup_dir is not None and not (isinstance(backup_dir, (str, os.PathLike))
                                       and os.fspath(backup_dir)):
        raise TypeError(f"backup_dir must be a non-empty path or None. Received: {backup_dir!r}")
    if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            f"strategy must be a tf.distribute.Strategy (see tfft.get_strategy). Received: "
            f"{type(strategy).__name__}"
        )
    policy = parse_freeze(unfreeze)
    if epochs and isinstance(policy, FeatureExtraction):
        raise ValueError(
            "fine_tune's second stage must unfreeze something: use unfreeze='full', "
            "'top_k:K', 'regex:PATTERN', 'lora:R' or 'gradual'. "
            f"Received: unfreeze={unfreeze!r}"
        )
    find_backbone_layer(model)
    head = _task_head(model)
    info = getattr(model, "backbone_info", None)
    family = getattr(info, "family", None) or "transformer"
    strategy = strategy or tf.distribute.get_strategy()
    if make_dataset is None:
        make_dataset = getattr(model, "make_dataset", None)
    train_data = EpochData(train, batch_size, make_dataset, seed, "train")
    val_data = None
    if val is not None:
        val_data = distribute_dataset(
            EpochData(val, batch_size, make_dataset, seed, "val").one_pass(), strategy)
    if epochs:
        # Apply the second-stage policy once now: it validates against this model
        # (top_k larger than the backbone, no blocks for gradual ...) before training.
        apply_freeze(model, policy)
    decay = lr_decay if lr_decay is not None else (1.0 if isinstance(policy, Gradual) else None)
    if epochs and decay is not None:
        layerwise_multipliers(model, decay)
    prepare_model(model, strategy)
    callbacks = [EpochSeeding(seed), *(callbacks or [])]
    if not any(isinstance(c, DivergenceGuard) for c in callbacks):
        # Before the caller's callbacks, so a checkpoint or backup never saves the
        # weights of a diverged batch.
        callbacks.insert(1, DivergenceGuard())
    histories = []

    if freeze_epochs:
        apply_freeze(model, "feature_extraction")
        overrides = {"learning_rate": float(lr)} if lr is not None else {}
        with strategy.scope():
            compile_model(model, preset="head", task=head.task, family=family,
                          total_steps=_total(train_data.steps, freeze_epochs),
                          num_classes=head.num_classes, **overrides)
        logger.info("fine_tune: stage 'head': %d epoch(s), %s trainable parameters",
                    freeze_epochs, f"{trainable_summary(model)['trainable']:,}")
        histories.append(("head", _fit_stage(model, "head", train_data, val_data,
                                             freeze_epochs, callbacks, backup_dir, strategy,
                                             verbose)))

    if epochs:
        apply_freeze(model, policy)
        name = resolve_preset(preset, family, backbone_trainable=True,
                              batch_norm=has_batch_norm(find_backbone_layer(model)))
        if fine_tune_lr is not None:
            overrides = {"learning_rate": float(fine_tune_lr)}
        elif lr is not None:
            overrides = {"learning_rate": float(lr) / base_lr_divisor}
        else:
            overrides = {}
        total = _total(train_data.steps, epochs)
        with strategy.scope():
            resolved = compile_model(model, preset=name, task=head.task, family=family,
                                     total_steps=total, num_classes=head.num_classes,
                                     **overrides)
            # Gradual unfreezing gets one optimizer clock per block (decay 1.0 unless
            # set): with a shared Keras Adam a block opened late starts with skewed bias
            # correction.
            if decay is not None:
                optimizer = LayerwiseOptimizer(make_optimizer(resolved, total),
                                               layerwise_multipliers(model, decay),
                                               groups=block_depths(model))
                record_preset(optimizer, resolved)
                model.compile(
                    optimizer=optimizer,
                    loss=TASK_PRESETS[head.task]["loss"],
                    metrics=task_metrics(head.task, head.num_classes),
                )
        stage_callbacks = list(callbacks)
        if isinstance(policy, Gradual):
            stage_callbacks.insert(0, GradualUnfreezing(model, policy, verbose=1 if verbose else 0))
        logger.info("fine_tune: stage 'fine_tune' (%s, preset %r): %d epoch(s), %s trainable "
                    "parameters", policy.name, name, epochs,
                    f"{trainable_summary(model)['trainable']:,}")
        histories.append(("fine_tune", _fit_stage(model, "fine_tune", train_data, val_data,
                                                  epochs, stage_callbacks, backup_dir,
                                                  strategy, verbose)))
    return histories


class EpochData:
    """Training data whose batches for epoch `e` depend only on `(seed, e)`.

    Array inputs `(x, y)` are permuted per epoch with
    `np.random.default_rng([seed, epoch])` and batched by `make_dataset` (or
    sliced as they are), so `epochs(first, last)` gives exactly the batches
    of epochs `first .. last - 1` whichever epoch a run starts at. A
    `tf.data.Dataset` is taken as one epoch of batches and repeated by
    `fit` as usual (its own shuffling decides the order).

    Args:
        data: `(x, y)` arrays or a tf.data.Dataset of `(inputs, labels)` batches.
        batch_size: int. Batch size for arrays.
        make_dataset: callable `(x, y, batch_size=...) -> tf.data.Dataset`,
            or None to slice the arrays as they are.
        seed: int. Order seed.
        name: str. Names the data in messages.
    """

    def __init__(self, data: tf.data.Dataset | tuple[Any, Any], batch_size: int = 32,
                 make_dataset: MakeDataset | None = None, seed: int = 0, name: str = "train"):
        self.batch_size = batch_size
        self.make_dataset = make_dataset
        self.seed = seed
        self.name = name
        if isinstance(data, tf.data.Dataset):
            self.dataset, self.x, self.y = data, None, None
            self.steps = _steps_per_epoch(data, name)
            return
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise TypeError(
                f"fine_tune: {name} must be a tf.data.Dataset of (inputs, labels) batches or "
                f"an (inputs, labels) tuple. Received: {type(data).__name__}"
            )
        self.dataset = None
        self.x, self.y = data[0], np.asarray(data[1])
        if len(self.y) == 0:
            raise ValueError(f"fine_tune: {name} is empty.")
        sizes = ({len(v) for v in self.x.values()} if isinstance(self.x, dict)
                 else {len(self.x)})
        if sizes != {len(self.y)}:
            raise ValueError(
                f"fine_tune: {name} has {sorted(sizes)} inputs but {len(self.y)} labels."
            )
        self.steps = math.ceil(len(self.y) / batch_size)

    @property
    def is_arrays(self) -> bool:
        return self.dataset is None

    def one_pass(self) -> tf.data.Dataset:
        """The data once, in its given order (validation)."""
        if not self.is_arrays:
            return self.dataset
        return self._batches(np.arange(len(self.y)))

    def epochs(self, first: int, last: int) -> tf.data.Dataset:
        """The batches of epochs `first .. last - 1`, one after the other."""
        if not self.is_arrays:
            return self.dataset
        parts = [
            self._batches(np.random.default_rng([self.seed, epoch]).permutation(len(self.y)))
            for epoch in range(first, last)
        ]
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _batches(self, order):
        if isinstance(self.x, dict):
            x = {key: _take(value, order) for key, value in self.x.items()}
        else:
            x = _take(self.x, order)
        y = self.y[order]
        if self.make_dataset is not None:
            return self.make_dataset(x, y, batch_size=self.batch_size)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(self.batch_size)


def epoch_datasets(x: Any, y: Any, make_dataset: MakeDataset | None, batch_size: int,
                   epochs: int, seed: int = 0, first_epoch: int = 0) -> tf.data.Dataset:
    """Batches of epochs `first_epoch .. epochs - 1` in a `(seed, epoch)` order.

    For `fit(..., steps_per_epoch=ceil(len(y) / batch_size))` on models that
    are not tfft tasks (a soft-prompt classifier); `fine_tune` does this
    itself. See `EpochData`.
    """
    return EpochData((x, y), batch_size, make_dataset, seed).epochs(first_epoch, epochs)


def _fit_stage(model, stage, data, val_data, epochs, callbacks, backup_dir, strategy, verbose):
    callbacks = list(callbacks)
    first = 0
    if backup_dir is not None:
        folder = os.path.join(os.fspath(backup_dir), stage)
        first = completed_epochs(folder)
        callbacks.append(keras.callbacks.BackupAndRestore(folder))
        if first:
            logger.info("fine_tune: stage %r resumes after epoch %d from %s", stage, first,
                        folder)
    # A backup written after the last epoch but before fit cleaned up leaves nothing to
    # train; fit still needs a non-empty dataset.
    train = distribute_dataset(data.epochs(min(first, epochs - 1), epochs), strategy)
    steps = {"steps_per_epoch": data.steps} if data.is_arrays else {}
    build_for_training(model, getattr(train, "element_spec", None), callbacks)
    history = model.fit(train, validation_data=val_data, epochs=epochs, callbacks=callbacks,
                        verbose=verbose, shuffle=False, **steps)
    history.resumed_from_epoch = first
    return history


def completed_epochs(backup_dir: str | os.PathLike) -> int:
    """Epochs a `keras.callbacks.BackupAndRestore` folder records as finished (0 if none).

    Keras writes `training_metadata.json` with the number of finished epochs
    next to its weights after each epoch.
    """
    path = os.path.join(os.fspath(backup_dir), "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


def _total(steps, epochs):
    return steps * epochs if steps else None


def _take(values, order):
    if isinstance(values, tf.Tensor):
        return tf.gather(values, order)
    return np.asarray(values)[order]


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


def _steps_per_epoch(dataset, name):
    cardinality = int(dataset.cardinality().numpy())
    if cardinality == 0:
        raise ValueError(f"fine_tune: the {name} dataset is empty.")
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"fine_tune: the {name} dataset repeats forever; remove .repeat() so an epoch "
            "is one pass."
        )
    return cardinality if cardinality > 0 else None
