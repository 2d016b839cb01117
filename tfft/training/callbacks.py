"""The callbacks a fine-tuning run wants, laid out under one run folder.

    run_dir/
      logs/                          TensorBoard event files
      checkpoints/best.weights.h5    best weights by `monitor`
      backup/                        BackupAndRestore state (removed after a clean finish)
"""

from __future__ import annotations

import os

import keras
import numpy as np

from tfft.utils.checks import check_int

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

    Returns:
        A list of `keras.callbacks.Callback`.

    Example:

    >>> callbacks = default_callbacks("runs/demo", monitor="val_accuracy", patience=2)
    >>> [type(c).__name__ for c in callbacks]  # doctest: +NORMALIZE_WHITESPACE
    ['MonitorCheck', 'BackupAndRestore', 'TerminateOnNaN', 'TensorBoard',
     'ModelCheckpoint', 'EarlyStopping']
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
                        ("check_monitor", check_monitor)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False. Received: {name}={value!r}")

    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    callbacks = []
    # Runs first so a missing monitor fails before the Keras callbacks only warn.
    if check_monitor and (checkpoint or early_stopping):
        callbacks.append(MonitorCheck(monitor))
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
