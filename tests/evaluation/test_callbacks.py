import glob
import os

import keras
import numpy as np
import pytest

import tfft
from tfft.training.callbacks import (
    DivergenceGuard,
    EpochSeeding,
    MonitorCheck,
    TrainingDivergedError,
    default_callbacks,
)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def opposed_data():
    """Validation labels are the training labels flipped: every training epoch hurts
    validation loss, so the best epoch is the first one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("float32")
    return x, y, 1.0 - y


def _names(callbacks):
    return [type(c).__name__ for c in callbacks]


def test_fit_writes_tensorboard_and_best_checkpoint(tmp_path, opposed_data):
    x, y, _ = opposed_data
    model = _model()
    history = model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=16, verbose=0,
                        callbacks=default_callbacks(tmp_path))
    assert len(history.epoch) == 2
    events = glob.glob(str(tmp_path / "logs" / "**" / "events.out.tfevents.*"), recursive=True)
    assert {os.path.basename(os.path.dirname(e)) for e in events} == {"train", "validation"}
    best = tmp_path / "checkpoints" / "best.weights.h5"
    assert best.is_file()
    fresh = _model(seed=1)
    before = fresh.evaluate(x, y, verbose=0)[0]
    fresh.load_weights(str(best))
    after = fresh.evaluate(x, y, verbose=0)[0]
    assert after == pytest.approx(min(history.history["val_loss"]), rel=1e-5)
    assert after != pytest.approx(before)
    # A finished run leaves no backup state behind.
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "logs"]


def test_early_stopping_restores_best_weights(tmp_path, opposed_data):
    x, y, y_val = opposed_data
    model = _model()
    history = model.fit(x, y, validation_data=(x, y_val), epochs=10, batch_size=16, verbose=0,
                        callbacks=default_callbacks(tmp_path, patience=1, tensorboard=False))
    val_losses = history.history["val_loss"]
    assert len(val_losses) == 2  # best at epoch 1, one epoch of patience, then stop
    assert val_losses[1] > val_losses[0]
    restored = model.evaluate(x, y_val, verbose=0)[0]
    assert restored == pytest.approx(val_losses[0], rel=1e-5)
    checkpoint = _model(seed=3)
    checkpoint.load_weights(str(tmp_path / "checkpoints" / "best.weights.h5"))
    assert checkpoint.evaluate(x, y_val, verbose=0)[0] == pytest.approx(val_losses[0], rel=1e-5)


def test_max_mode_monitor(tmp_path, opposed_data):
    x, y, _ = opposed_data
    callbacks = default_callbacks(tmp_path, monitor="val_accuracy", mode="max",
                                  tensorboard=False, backup=False)
    early = callbacks[-1]
    assert isinstance(early, keras.callbacks.EarlyStopping)
    assert early.monitor == "val_accuracy" and early.restore_best_weights
    _model().fit(x, y, validation_data=(x, y), epochs=1, verbose=0, callbacks=callbacks)
    assert (tmp_path / "checkpoints" / "best.weights.h5").is_file()


def test_backup_resumes_an_interrupted_fit(tmp_path, opposed_data):
    x, y, _ = opposed_data

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    model = _model()
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.fit(x, y, validation_data=(x, y), epochs=4, verbose=0,
                  callbacks=[*default_callbacks(tmp_path, tensorboard=False), Interrupt()])
    resumed = _model(seed=5).fit(x, y, validation_data=(x, y), epochs=4, verbose=0,
                                 callbacks=default_callbacks(tmp_path, tensorboard=False))
    # Epochs 0 and 1 finished (the backup callback runs before the crash), so the
    # second fit runs only epochs 2 and 3.
    assert resumed.epoch == [2, 3]


@pytest.mark.parametrize("switch, name", [
    ("tensorboard", "TensorBoard"), ("checkpoint", "ModelCheckpoint"),
    ("early_stopping", "EarlyStopping"), ("backup", "BackupAndRestore"),
    ("terminate_on_nan", "TerminateOnNaN"), ("check_monitor", "MonitorCheck"),
    ("divergence_guard", "DivergenceGuard"),
])
def test_each_callback_switches_off(tmp_path, switch, name):
    everything = _names(default_callbacks(tmp_path))
    assert name in everything
    without = _names(default_callbacks(tmp_path, **{switch: False}))
    assert name not in without
    assert sorted([*without, name]) == sorted(everything)


def test_everything_off_and_paths(tmp_path):
    assert default_callbacks(tmp_path, tensorboard=False, checkpoint=False, early_stopping=False,
                             backup=False, terminate_on_nan=False,
                             divergence_guard=False) == []
    by_name = {type(c).__name__: c for c in default_callbacks(tmp_path / "run")}
    assert by_name["TensorBoard"].log_dir == str(tmp_path / "run" / "logs")
    assert by_name["ModelCheckpoint"].filepath == str(
        tmp_path / "run" / "checkpoints" / "best.weights.h5")
    assert by_name["ModelCheckpoint"].save_best_only
    assert by_name["BackupAndRestore"].backup_dir == str(tmp_path / "run" / "backup")
    # Without checkpointing or early stopping nothing needs the monitor.
    names = _names(default_callbacks(tmp_path, checkpoint=False, early_stopping=False))
    assert "MonitorCheck" not in names


def test_missing_monitor_fails_fast(tmp_path, opposed_data):
    x, y, _ = opposed_data
    with pytest.raises(ValueError, match=r"'val_loss' is not in the epoch logs.*validation_data"):
        _model().fit(x, y, epochs=3, verbose=0,
                     callbacks=default_callbacks(tmp_path, tensorboard=False, backup=False))
    with pytest.raises(ValueError, match=r"'val_acc' is not in.*'val_accuracy'"):
        _model().fit(x, y, validation_data=(x, y), epochs=1, verbose=0,
                     callbacks=[MonitorCheck("val_acc")])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown monitor mode.*'auto', 'min', 'max'.*'best'"):
        default_callbacks(tmp_path, mode="best")
    with pytest.raises(ValueError, match="patience must be a non-negative integer"):
        default_callbacks(tmp_path, patience=-1)
    with pytest.raises(ValueError, match="patience"):
        default_callbacks(tmp_path, patience=2.5)
    with pytest.raises(ValueError, match="monitor must be a non-empty str"):
        default_callbacks(tmp_path, monitor="")
    with pytest.raises(TypeError, match="run_dir must be a non-empty path"):
        default_callbacks(None)
    with pytest.raises(TypeError, match="tensorboard must be True or False"):
        default_callbacks(tmp_path, tensorboard="yes")


def test_epoch_seeding_derives_dropout_state_from_seed_and_epoch():
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(inputs))
    [state] = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    x = np.ones((2, 64), "float32")

    def masks(seed, epoch):
        callback = EpochSeeding(seed)
        callback.set_model(model)
        callback.on_epoch_begin(epoch)
        value = np.array(state.numpy())
        return value, np.asarray(model(x, training=True))

    first_state, first = masks(7, 3)
    masks(7, 4)  # other epochs in between do not matter
    again_state, again = masks(7, 3)
    np.testing.assert_array_equal(first_state, again_state)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(masks(7, 4)[1], first)
    assert not np.array_equal(masks(8, 3)[1], first)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        EpochSeeding(-1)


@pytest.fixture(scope="module")
def linear_data():
    """A linear target on unnormalised inputs (std 100): SGD is stable only below ~1e-4."""
    rng = np.random.default_rng(0)
    x = rng.normal(scale=100.0, size=(512, 4)).astype("float32")
    y = x @ np.array([0.5, -1.0, 2.0, 0.25], "float32")
    return x, y


def _linear(optimizer):
    """A linear regression compiled with a tfft preset name or a hand-built optimizer."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    if isinstance(optimizer, str):
        tfft.compile_model(model, preset=optimizer, task="regression")
    else:
        model.compile(optimizer=optimizer, loss="mean_squared_error")
    return model


def test_divergence_guard_stops_an_exploding_loss_naming_rate_and_preset(tmp_path, linear_data):
    x, y = linear_data
    model = _linear("cnn")  # SGD, momentum 0.9, 1e-2: ~100x too high for these inputs
    callbacks = default_callbacks(tmp_path, monitor="loss", tensorboard=False)
    with pytest.raises(TrainingDivergedError) as info:
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks)
    error = info.value
    # Stopped inside the first epoch (32 batches), on a finite loss TerminateOnNaN lets by.
    assert error.epoch == 0 and error.batch < 32
    assert np.isfinite(error.loss) and error.loss > 100 * error.baseline
    assert error.preset == "cnn" and error.learning_rate == pytest.approx(1e-2)
    message = str(error)
    assert "learning rate 0.01" in message and "compile preset 'cnn'" in message
    assert "more than 100x the median loss" in message
    # Raised before any epoch ended: no checkpoint holds diverged weights.
    assert not os.listdir(tmp_path / "checkpoints")


def test_divergence_guard_stops_a_non_finite_loss_and_names_a_hand_built_optimizer(
        linear_data):
    x, y = linear_data
    broken = x.copy()
    broken[40, 0] = np.nan  # in the third batch of 16
    model = _linear(keras.optimizers.SGD(1e-5))
    with pytest.raises(TrainingDivergedError, match=r"batch 3: the loss became nan") as info:
        model.fit(broken, y, epochs=2, batch_size=16, verbose=0, shuffle=False,
                  callbacks=[DivergenceGuard()])
    assert info.value.epoch == 0 and info.value.batch == 2
    assert "Optimizer SGD, learning rate 1e-05, no compile preset" in str(info.value)
    assert "NaN or infinite values" in str(info.value)
    # A preset named by the caller is reported when the optimizer has none recorded.
    model = _linear(keras.optimizers.SGD(1e-2))
    with pytest.raises(TrainingDivergedError, match="compile preset 'mine'"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0,
                  callbacks=[DivergenceGuard(factor=10, preset="mine")])


def test_divergence_guard_lets_a_healthy_run_finish(linear_data):
    x, y = linear_data
    model = _linear(keras.optimizers.SGD(1e-5))
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0,
                        callbacks=[DivergenceGuard(baseline_batches=1)])
    losses = history.history["loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_divergence_guard_bad_arguments():
    with pytest.raises(ValueError, match="factor must be greater than 1"):
        DivergenceGuard(factor=1)
    with pytest.raises(ValueError, match="baseline_batches"):
        DivergenceGuard(baseline_batches=0)
    with pytest.raises(ValueError, match="min_loss"):
        DivergenceGuard(min_loss=-1)
