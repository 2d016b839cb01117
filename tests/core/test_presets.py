import keras
import numpy as np
import pytest

import tfft
from tfft.training.presets import OPTIMIZER_PRESETS, TASK_PRESETS, make_optimizer, resolve_preset


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


def test_auto_preset_for_gradual_unfreezing_is_the_backbone_family(tiny_bert, tiny_cnn):
    text = tfft.build_model(tiny_bert, num_classes=3, freeze="gradual", total_steps=10)
    assert isinstance(text.optimizer, keras.optimizers.AdamW)
    cnn = tfft.build_model(tiny_cnn, num_classes=2, freeze="gradual")
    assert isinstance(cnn.optimizer, keras.optimizers.SGD)
