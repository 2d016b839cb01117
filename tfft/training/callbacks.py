"""The callbacks a fine-tuning run wants, laid out under one run folder.

    run_dir/
      logs/                          TensorBoard event files
      checkpoints/best.weights.h5    best weights by `monitor`
      backup/                        BackupAndRestore state (removed after a clean finish)
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from tfft.training.presets import preset_of
from tfft.utils.checks import check_int, check_positive_number

MODES = ("auto", "min", "max")


class MonitorCheck(keras.callbacks.Callback):
    """Fails fast when the monitored quantity never appears in the logs.

    Keras' `EarlyStopping` and `ModelCheckpoint` only warn when `monitor` is
    missing (for example `val_loss` without validation data) and then
    silently neither stop nor save. This raises at the end of the first epoch
    instead, naming the keys that are available. With `fit(...,
    validation_freq=n > 1)` the first epoch has no validation logs: turn it
    off there (`default_callbacks(..., check_monitor=False)`).

    Args:
        monitor: str. The logs key that must be present.
    """

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            hint = (
                " Pass validation_data to fit() or monitor a training quantity such as 'loss'."
                if self.monitor.startswith("val_") else ""
            )
            raise ValueError(
                f"The monitored quantity {self.monitor!r} is not in the epoch logs, so "
                f"early stopping and best-checkpointing cannot work. Available: "
                f"{sorted(logs)}.{hint}"
            )


class EpochSeeding(keras.callbacks.Callback):
    """Sets every random-seed state of the model from `(seed, epoch)` at each epoch start.

    Keras keeps dropout RNG state in variables that weight checkpoints do not
    restore the way an uninterrupted run advances them; deriving the state
    from the epoch makes a run resumed at epoch `k` draw the same dropout
    masks from epoch `k` on as a run that was never stopped.

    Args:
        seed: int. Base seed; each epoch and each seed state get their own
            stream from it.

    Example:

    >>> model.fit(data, epochs=3, callbacks=[EpochSeeding(seed=0)])
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = check_int("seed", seed, minimum=0)

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for index, state in enumerate(states):
            value = np.random.default_rng([self.seed, epoch, index]).integers(0, 2**30, 2)
            value[1] = 0
            state.assign(value.astype(state.dtype))


class TrainingDivergedError(RuntimeError):
    """The training loss exploded or stopped being finite (raised by `DivergenceGuard`).

    Attributes:
        loss: float. The loss that stopped the run.
        baseline: float or None. Median loss of the first batches.
        epoch: int. Epoch (from 0) of the stop.
        batch: int. Batch (from 0) within that epoch.
        learning_rate: float or None. The optimizer's learning rate at the stop.
        preset: str or None. The compile preset the optimizer came from.
    """

    def __init__(self, message, *, loss, baseline, epoch, batch, learning_rate, preset):
        super().__init__(message)
        self.loss = loss
        self.baseline = baseline
        self.epoch = epoch
        self.batch = batch
        self.learning_rate = learning_rate
        self.preset = preset


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training as soon as the loss explodes or stops being finite.

    Keras' `TerminateOnNaN` only catches NaN and infinity; a learning rate
    too high for the model (SGD at 1e-2 on a VGG without BatchNormalization)
    can instead drive the loss to 1e15 while the model collapses to one
    class. After every batch this compares the loss Keras logs (the running
    mean over the epoch so far) with the median of the first
    `baseline_batches` batches of the run, and raises `TrainingDivergedError`
    when it is more than `factor` times that median (and above `min_loss`),
    or is NaN or infinite. Raising at once keeps the exploded weights out of
    any checkpoint or backup. The message names the optimizer, its learning
    rate and the compile preset it came from (recorded by
    `tfft.compile_model` and `tfft.fine_tune`, or given as `preset`).

    Args:
        factor: float. How many times the first batches' median loss counts
            as an explosion. Defaults to 100.
        baseline_batches: int. Batches whose median loss is the baseline;
            before that many have run, the median of those so far. Defaults
            to 5.
        min_loss: float. A loss at or below this never counts as an
            explosion, so a run that starts near zero loss (a resumed run)
            is not stopped by a small rise. Defaults to 1.0.
        monitor: str. Logs key of the loss. Defaults to `"loss"`.
        preset: str. Name of the compile preset to report when the
            optimizer has none recorded. Defaults to None.

    Example:

    >>> model.fit(x, y, epochs=3, callbacks=[DivergenceGuard(factor=100)])
    """

    def __init__(self, factor: float = 100.0, baseline_batches: int = 5,
                 min_loss: float = 1.0, monitor: str = "loss", preset: str | None = None):
        super().__init__()
        self.factor = check_positive_number("factor", factor)
        if self.factor <= 1:
            raise ValueError(f"factor must be greater than 1. Received: factor={factor!r}")
        self.baseline_batches = check_int("baseline_batches", baseline_batches)
        self.min_loss = check_positive_number("min_loss", min_loss)
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be a non-empty str. Received: monitor={monitor!r}")
        self.monitor = monitor
        if preset is not None and not isinstance(preset, str):
            raise TypeError(f"preset must be a str or None. Received: preset={preset!r}")
        self.preset = preset
        self._first = []
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._first = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        loss = float(np.asarray(value))
        baseline = float(np.median(self._first)) if self._first else None
        if not math.isfinite(loss):
            self._stop(loss, baseline, batch, f"the loss became {loss}")
        if baseline is not None and loss > max(self.factor * baseline, self.min_loss):
            self._stop(loss, baseline, batch,
                       f"the loss reached {loss:.4g}, more than {self.factor:g}x the median "
                       f"loss of the first {len(self._first)} batch(es) ({baseline:.4g})")
        if len(self._first) < self.baseline_batches:
            self._first.append(loss)

    def _stop(self, loss, baseline, batch, what):
        optimizer = getattr(self.model, "optimizer", None)
        learning_rate = _current_learning_rate(optimizer)
        recorded = preset_of(optimizer) or {}
        preset = recorded.get("name") or self.preset
        kind = type(optimizer).__name__ if optimizer is not None else "no optimizer"
        rate = "unknown" if learning_rate is None else f"{learning_rate:.3g}"
        configured = recorded.get("learning_rate")
        if configured is not None and learning_rate is not None and not math.isclose(
                configured, learning_rate, rel_tol=1e-3):
            rate += f" (the preset's {configured:g}, now in its schedule)"
        source = (f"compile preset {preset!r}" if preset else
                  "no compile preset (an optimizer built by hand)")
        message = (
            f"Training diverged at epoch {self._epoch + 1}, batch {batch + 1}: {what}. "
            f"Optimizer {kind}, learning rate {rate}, {source}. The learning rate is likely "
            "too high for this model: try one 10x lower (e.g. compile_model(..., "
            "learning_rate=...) or fine_tune(..., lr=..., fine_tune_lr=...)), an Adam "
            "preset ('plain_cnn' for a CNN without BatchNormalization), and check that the "
            "inputs are normalised the way the backbone expects."
        )
        if not math.isfinite(loss):
            message += (" A NaN or infinite loss can also come from NaN or infinite values "
                        "in the data, or from float16 overflow under mixed precision (use "
                        "mixed_bfloat16 or float32).")
        raise TrainingDivergedError(
            message, loss=loss, baseline=baseline, epoch=self._epoch, batch=batch,
            learning_rate=learning_rate, preset=preset,
        )


def _current_learning_rate(optimizer):
    """The optimizer's learning rate now (a schedule evaluated at its step), or None."""
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):
        return None


def default_callbacks(
    run_dir: str | os.PathLike,
    monitor: str = "val_loss",
    mode: str = "auto",
    tensorboard: bool = True,
    checkpoint: bool = True,
    early_stopping: bool = True,
    patience: int = 3,
    backup: bool = True,
    terminate_on_nan: bool = True,
    check_monitor: bool = True,
    divergence_guard: bool = True,
) -> list[keras.callbacks.Callback]:
    """Returns the usual fine-tuning callbacks writing under `run_dir`.

    Args:
        run_dir: str. Folder of this run; created if missing.
        monitor: str. Quantity for checkpointing and early stopping. Defaults
            to `"val_loss"`.
        mode: str. `"auto"`, `"min"` or `"max"`. Defaults to `"auto"`.
        tensorboard: bool. Add `keras.callbacks.TensorBoard(run_dir/logs)`.
            Defaults to True.
        checkpoint: bool. Add a `ModelCheckpoint` keeping the best weights in
            `run_dir/checkpoints/best.weights.h5`. Defaults to True.
        early_stopping: bool. Add `EarlyStopping(restore_best_weights=True)`.
            Defaults to True.
        patience: int. Epochs without improvement before stopping. Defaults
            to 3.
        backup: bool. Add `BackupAndRestore(run_dir/backup)` so an interrupted
            `fit` resumes where it stopped. Defaults to True.
        terminate_on_nan: bool. Add `TerminateOnNaN`. Defaults to True.
        check_monitor: bool. Add `MonitorCheck`, which raises when `monitor`
            is missing from the logs, whenever checkpointing or early stopping
            is on. Defaults to True.
        divergence_guard: bool. Add `DivergenceGuard`, which raises
            `TrainingDivergedError` naming the learning rate and preset when
            the loss becomes more than 100x the first batches' median or
            non-finite. Defaults to True.

    Returns:
        A list of `keras.callbacks.Callback`.

    Example:

    >>> callbacks = default_callbacks("runs/demo", monitor="val_accuracy", patience=2)
    >>> [type(c).__name__ for c in callbacks]  # doctest: +NORMALIZE_WHITESPACE
    ['MonitorCheck', 'DivergenceGuard', 'BackupAndRestore', 'TerminateOnNaN',
     'TensorBoard', 'ModelCheckpoint', 'EarlyStopping']
    """
    if not isinstance(run_dir, (str, os.PathLike)) or not os.fspath(run_dir):
        raise TypeError(f"run_dir must be a non-empty path. Received: run_dir={run_dir!r}")
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must be a non-empty str. Received: monitor={monitor!r}")
    if mode not in MODES:
        raise ValueError(
            f"Unknown monitor mode. Expected one of {list(MODES)}. Received: mode={mode!r}"
        )
    check_int("patience", patience, minimum=0)
    for name, value in (("tensorboard", tensorboard), ("checkpoint", checkpoint),
                        ("early_stopping", early_stopping), ("backup", backup),
                        ("terminate_on_nan", terminate_on_nan),
                        ("check_monitor", check_monitor),
                        ("divergence_guard", divergence_guard)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False. Received: {name}={value!r}")

    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    callbacks = []
    # Runs first so a missing monitor fails before the Keras callbacks only warn.
    if check_monitor and (checkpoint or early_stopping):
        callbacks.append(MonitorCheck(monitor))
    # Before BackupAndRestore and ModelCheckpoint: a diverged batch raises before
    # anything can save its weights.
    if divergence_guard:
        callbacks.append(DivergenceGuard())
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")))
    if terminate_on_nan:
        callbacks.append(keras.callbacks.TerminateOnNaN())
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "logs")))
    if checkpoint:
        folder = os.path.join(run_dir, "checkpoints")
        os.makedirs(folder, exist_ok=True)
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(folder, "best.weights.h5"), monitor=monitor, mode=mode,
            save_best_only=True, save_weights_only=True,
        ))
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=patience, restore_best_weights=True,
        ))
    return callbacks
