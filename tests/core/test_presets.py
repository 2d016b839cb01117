import keras
import numpy as np
import pytest

import tfft
from tfft.training.callbacks import TrainingDivergedError
from tfft.training.presets import (
    OPTIMIZER_PRESETS,
    TASK_PRESETS,
    make_optimizer,
    preset_of,
    resolve_preset,
)


def _tiny_vgg(batch_norm, filters=(4, 8), size=16):
    """VGG-style blocks of two 3x3 convs and a max-pool, with BatchNorm or without;
    caffe-style inputs (pixels minus a mean, not scaled)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0, offset=-120.0)(inputs)
    for block, width in enumerate(filters, start=1):
        for conv in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", name=f"block{block}_conv{conv}")(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="tiny_vgg_bn" if batch_norm else "tiny_vgg")


def test_presets_are_listable_with_descriptions():
    listing = tfft.list_presets()
    assert set(listing) == {f"optimizer:{k}" for k in OPTIMIZER_PRESETS} | {
        f"task:{k}" for k in TASK_PRESETS
    }
    assert all(isinstance(v, str) and v for v in listing.values())


def test_overrides_apply_to_a_copy():
    preset = tfft.get_preset("transformer", learning_rate=1e-4)
    assert preset["learning_rate"] == 1e-4
    assert OPTIMIZER_PRESETS["transformer"]["learning_rate"] == 5e-5
    with pytest.raises(ValueError, match="Unknown preset option"):
        tfft.get_preset("transformer", learning_rat=1e-4)
    with pytest.raises(ValueError, match="Unknown compile preset"):
        tfft.get_preset("fast")


def test_auto_picks_from_freeze_state_and_family():
    assert resolve_preset("auto", "transformer", backbone_trainable=False) == "head"
    assert resolve_preset("auto", "transformer", backbone_trainable=True) == "transformer"
    assert resolve_preset("auto", "cnn", backbone_trainable=True) == "cnn"
    assert resolve_preset("auto", "cnn", backbone_trainable=True, batch_norm=False) == "plain_cnn"
    assert resolve_preset("auto", "cnn", backbone_trainable=False, batch_norm=False) == "head"
    assert resolve_preset("cnn", "cnn", backbone_trainable=True, batch_norm=False) == "cnn"


@pytest.mark.parametrize("batch_norm, optimizer, rate, name", [
    (False, keras.optimizers.Adam, 1e-4, "plain_cnn"),
    (True, keras.optimizers.SGD, 1e-2, "cnn"),
])
def test_auto_preset_for_a_vgg_follows_its_batch_norm(batch_norm, optimizer, rate, name):
    task = tfft.build_model(_tiny_vgg(batch_norm), num_classes=2, freeze="full")
    assert type(task.optimizer) is optimizer
    assert float(task.optimizer.learning_rate) == pytest.approx(rate)
    assert preset_of(task.optimizer)["name"] == name
    assert OPTIMIZER_PRESETS[name]["learning_rate"] == rate


def test_fine_tune_stops_a_diverging_cnn_naming_rate_and_preset():
    # The run: SGD at 1e-2 on a VGG without BatchNorm; unguarded, the loss of a
    # slightly larger VGG reached 1e15 and the model collapsed to one class.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (128, 32, 32, 3)).astype("float32")
    y = np.arange(128) % 2
    task = tfft.build_model(_tiny_vgg(False, filters=(16, 32, 64), size=32), num_classes=2,
                            freeze="full", compile=False)
    with pytest.raises(TrainingDivergedError) as info:
        tfft.fine_tune(task, (x, y), epochs=2, freeze_epochs=0, preset="cnn", batch_size=16,
                       verbose=0)
    error = info.value
    assert error.epoch == 0 and error.batch < 8  # within the first of 8 batches per epoch
    assert error.preset == "cnn" and error.learning_rate == pytest.approx(1e-2, rel=0.05)
    assert "compile preset 'cnn'" in str(error) and "Optimizer SGD, learning rate 0.0" in str(
        error)


def test_auto_compiles_adamw_for_unfrozen_transformer_and_adam_for_heads(tiny_bert):
    frozen = tfft.build_model(tiny_bert, num_classes=3, freeze="feature_extraction")
    assert isinstance(frozen.optimizer, keras.optimizers.Adam)
    assert not isinstance(frozen.optimizer, keras.optimizers.AdamW)
    full = tfft.build_model(tiny_bert, num_classes=3, freeze="full", total_steps=100)
    assert isinstance(full.optimizer, keras.optimizers.AdamW)


def test_cnn_preset_uses_sgd_momentum(tiny_cnn):
    model = tfft.build_model(tiny_cnn, num_classes=2, freeze="full")
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.momentum == 0.9


def test_warmup_then_linear_decay():
    opt = make_optimizer(tfft.get_preset("transformer"), total_steps=100)
    schedule = opt.learning_rate if callable(opt.learning_rate) else opt._learning_rate
    lrs = [float(schedule(step)) for step in (0, 9, 10, 55, 99)]
    assert lrs[0] < lrs[1] <= 5e-5 + 1e-12
    assert lrs[2] == pytest.approx(5e-5, rel=1e-3)
    assert lrs[2] > lrs[3] > lrs[4] >= 0


def test_mixed_precision_policy_and_float32_outputs(text_batch):
    import keras_hub

    try:
        assert tfft.set_mixed_precision("mixed_bfloat16") == "mixed_bfloat16"
        bert = keras_hub.models.BertBackbone(
            vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=8,
            intermediate_dim=16, max_sequence_length=16,
        )
        model = tfft.build_model(bert, num_classes=3, freeze="full")
        assert model.get_layer("backbone").backbone.compute_dtype == "bfloat16"
        out = model.predict(text_batch, verbose=0)
        assert out.dtype == np.float32
        history = model.fit(text_batch, np.arange(16) % 3, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        tfft.set_mixed_precision("float32")
    with pytest.raises(ValueError, match="Unknown mixed precision mode"):
        tfft.set_mixed_precision("fp8")


def test_auto_mixed_precision_on_a_cpu_follows_its_bfloat16_support(tmp_path, monkeypatch):
    import tensorflow as tf

    from tfft.training import presets

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto picks mixed_float16 on a GPU")
    native = tmp_path / "zen4"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    plain = tmp_path / "skylake"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert presets.cpu_has_native_bfloat16(str(native))
    assert not presets.cpu_has_native_bfloat16(str(plain))
    assert not presets.cpu_has_native_bfloat16(str(tmp_path / "missing"))
    read = presets.cpu_has_native_bfloat16
    try:
        for path, expected in ((plain, "float32"), (native, "mixed_bfloat16")):
            monkeypatch.setattr(presets, "cpu_has_native_bfloat16",
                                lambda path=str(path): read(path))
            assert tfft.set_mixed_precision("auto") == expected
            assert keras.mixed_precision.global_policy().name == expected
        # A named TPU keeps bfloat16 whatever its host CPU has (before the TPU
        # system starts TensorFlow lists no TPU devices).
        monkeypatch.setattr(presets, "cpu_has_native_bfloat16", lambda: read(str(plain)))
        monkeypatch.setenv("TPU_NAME", "local")
        assert tfft.set_mixed_precision("auto") == "mixed_bfloat16"
    finally:
        tfft.set_mixed_precision("float32")


def test_auto_preset_for_gradual_unfreezing_is_the_backbone_family(tiny_bert, tiny_cnn):
    text = tfft.build_model(tiny_bert, num_classes=3, freeze="gradual", total_steps=10)
    assert isinstance(text.optimizer, keras.optimizers.AdamW)
    cnn = tfft.build_model(tiny_cnn, num_classes=2, freeze="gradual")
    assert isinstance(cnn.optimizer, keras.optimizers.SGD)
